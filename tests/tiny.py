"""Test-side name for `catto.synthetic` (tiny models, tokenizer and tasks built in code)."""

from catto.synthetic import VOCAB, WORDS, make_model, make_tokenizer, preference_dataset  # noqa: F401
