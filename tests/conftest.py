import os
import sys

import pytest

# `tiny` (models, tokenizer and data built in code) is imported by the tests and by the torchrun scripts.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny import make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def mcqa_model_dir(tmp_path_factory):
    """A tiny random Llama + word-level tokenizer over `catto.data.synthetic.MCQA_VOCAB`, saved as a model folder (for the
    code paths that load a model by path: catto eval, catto demo, catto train)."""
    from catto.data.synthetic import MCQA_VOCAB, make_model
    from catto.data.synthetic import make_tokenizer as make_mcqa_tokenizer

    path = tmp_path_factory.mktemp("tiny-mcqa-model")
    make_model(vocab_size=len(MCQA_VOCAB)).save_pretrained(path)
    make_mcqa_tokenizer(MCQA_VOCAB).save_pretrained(path)
    return str(path)
