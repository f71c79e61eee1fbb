"""Shared fixtures of the post-hoc evaluator tests (tiny random model, toy MCQA items, a saved model folder)."""

from __future__ import annotations

import json

from catto.data import MCQAItem
from catto.data.synthetic import MCQA_VOCAB, make_model, make_tokenizer


def tiny_model_and_tokenizer(seed: int = 0):
    return make_model(vocab_size=len(MCQA_VOCAB), seed=seed).eval(), make_tokenizer(MCQA_VOCAB)


def toy_items(n: int = 16, offset: int = 0, prefix: str = "q") -> list[MCQAItem]:
    """Four-option items over the tiny vocabulary, golds spread over the options."""
    return [MCQAItem(f"{prefix}{i}", f"w{i % 30} w{(i + 1) % 30}",
                     (f"w{i % 30}", f"w{(i + 2) % 30}", f"w{(i + 3) % 30} w{(i + 5) % 30}", f"w{(i + 4) % 30}"),
                     gold=(i * 7 + offset) % 4, subject="toy") for i in range(n)]


def write_dataset(path, n: int, offset: int = 0) -> str:
    """A JSONL of toy items readable as `mmlu:<path>`; returns the spec."""
    rows = [{"question": it.question, "choices": list(it.choices), "answer": it.gold, "subject": "toy"}
            for it in toy_items(n, offset)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"mmlu:{path}"


def write_study_mcqa(path, n: int, offset: int) -> str:
    """A JSONL of `n` four-option toy items (gold shifted by `offset`) readable as `mmlu:<path>`, for study dry runs."""
    rows = [{"question": f"w{i % 30} w{(i + 1) % 30}", "choices": [f"w{(i + offset + j) % 30}" for j in (0, 2, 3, 4)],
             "answer": (i + offset) % 4, "subject": "toy"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"mmlu:{path}"


def save_tiny_model(folder) -> str:
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def load_benchmark(name: str):
    """`benchmarks/<name>.py` as a module (the scripts are not a package), for dry runs of their `main`."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_arc_mcqa(path, items) -> str:
    """MCQA items in ARC's hub layout (one JSON object per line), read back through the real `arc_easy:PATH` adapter;
    returns that spec."""
    with open(path, "w") as f:
        for it in items:
            labels = "ABCDEFGH"[: len(it.choices)]
            f.write(json.dumps({"id": it.id, "question": it.question, "answerKey": labels[it.gold],
                                "choices": {"text": list(it.choices), "label": list(labels)}}) + "\n")
    return f"arc_easy:{path}"

