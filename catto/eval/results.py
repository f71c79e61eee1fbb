"""The per-item result every scorer and evaluator produces, and its crash-safe JSONL file.

One `ItemResult` per question: option probabilities, prediction, confidence, correctness and an optional abstain
flag, plus free-form extras (raw log-likelihoods, full-vocabulary probabilities, ...). `metrics.py` and `plots.py`
read only these fields, so they never care which method produced them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import DataError
from ..io import atomic_write


@dataclass
class ItemResult:
    """Result of one method on one MCQA item.

    Args:
        id: the item id.
        option_probs: probability of each option (sums to 1 over the options).
        prediction: index of the predicted option, or `None` when the method gave no answer.
        confidence: the method's confidence in `prediction` (definition recorded in the run's metadata).
        gold: gold index (`None` for unlabelled items).
        correct: `prediction == gold` (`None` when unlabelled).
        abstain: whether the method abstained (selective prediction); `None` when it never abstains.
        source, subject: copied from the item, for per-dataset / per-subject breakdowns.
        extra: method-specific per-item values (e.g. raw option log-likelihoods).
    """

    id: str
    option_probs: list[float]
    prediction: int | None
    confidence: float
    gold: int | None
    correct: bool | None
    abstain: bool | None = None
    source: str | None = None
    subject: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.confidence):
            raise ValueError(f"Item {self.id!r}: confidence is {self.confidence}; the scorer produced NaN/inf.")
        if any(not math.isfinite(p) for p in self.option_probs):
            raise ValueError(f"Item {self.id!r}: option_probs contain NaN/inf: {self.option_probs}.")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ItemResult:
        return cls(**row)


def write_results_jsonl(path: str | os.PathLike, results: Iterable[Any]) -> None:
    """Write per-item records (anything with `to_json()`) as one JSON line each, atomically: a reader never sees
    half."""
    with atomic_write(path) as f:
        f.writelines(r.to_json() + "\n" for r in results)


class ResultsFile:
    """Append-only JSONL of per-item records (`ItemResult` by default) that a re-run resumes.

    Each batch is appended with one `write` and fsynced. A crash can only leave a torn *last* line; opening the
    file again drops it (rewriting the file atomically) so the items it held are simply scored again.
    `record_type` is any class with an `id`, `to_json()` and `from_dict(dict)` (e.g.
    `catto.eval.token.TokenPairResult`).
    """

    def __init__(self, path: str | os.PathLike, record_type: type = ItemResult):
        self.path = os.fspath(path)
        self.record_type = record_type
        self.results: dict[str, Any] = {}
        if os.path.exists(self.path):
            self._load()

    def _load(self) -> None:
        with open(self.path) as f:
            lines = f.read().split("\n")
        good, torn = [], False
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                result = self.record_type.from_dict(json.loads(line))
            except (ValueError, TypeError, KeyError) as err:  # ValueError: bad JSON, or a NaN the record refuses
                if i >= len(lines) - 2:  # the last non-empty line: an interrupted append
                    torn = True
                    break
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise DataError(f"{self.path}: line {i + 1} is not a result record ({reason}); refusing to resume. "
                                "Fix: delete the file; its items are then scored again.") from None
            self.results[result.id] = result
            good.append(line)
        if torn:
            with atomic_write(self.path) as f:
                f.write("".join(line + "\n" for line in good))

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.results

    def append(self, results: Sequence[ItemResult]) -> None:
        if not results:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write("".join(r.to_json() + "\n" for r in results))
            f.flush()
            os.fsync(f.fileno())
        for r in results:
            self.results[r.id] = r

    def ordered(self, ids: Iterable[str]) -> list[ItemResult]:
        """The stored results for `ids`, in that order (missing ids raise)."""
        missing = [i for i in ids if i not in self.results]
        if missing:
            raise KeyError(f"{self.path}: no result for {len(missing)} item(s), e.g. {missing[:3]}.")
        return [self.results[i] for i in ids]
