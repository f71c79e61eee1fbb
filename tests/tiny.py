"""Test-side name for `catto.data.synthetic` (tiny models, tokenizer and tasks built in code)."""

from catto.data.synthetic import VOCAB, WORDS, make_model, make_tokenizer, preference_dataset  # noqa: F401
