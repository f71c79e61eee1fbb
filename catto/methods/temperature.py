"""Temperature scaling (Guo et al. 2017): the label-fitted post-hoc baseline every calibration paper compares against.

One temperature T, fitted by minimising the NLL of the gold option on labelled items (LBFGS on log T), divides the
option log-probabilities from the scoring layer (letter or cloze, `scoring`): p' = softmax(log p / T). T > 1
softens over-confident probabilities; the argmax (hence accuracy) never changes.

`fit_temperature` is catto's one temperature fit: Confidence@k (`catto.methods.confidence_at_k.fit_calibrator`)
fits its answer-step label logits with it too, in the same search range `T_RANGE`, and a fit that ends on a bound of
the range says so in one logged line.

Example:
    >>> import torch
    >>> logits = torch.randn(400, 4, generator=torch.Generator().manual_seed(0)) * 3
    >>> labels = torch.distributions.Categorical(logits=logits / 2.0).sample()
    >>> 1.5 < fit_temperature(logits, labels) < 2.7   # recovers roughly T = 2
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from .._logging import get_logger
from ..data.items import MCQAItem
from ..eval.results import ItemResult
from .base import Evaluator, ScoringFields, register_method

logger = get_logger(__name__)

#: The search range of every temperature fit (T in [0.01, 100]).
T_RANGE = (0.01, 100.0)
#: A fitted log T this close to log of a bound counts as on the bound (the fit is clamped there).
_BOUND_TOLERANCE = 1e-3


def padded_log_probs(results: Sequence[ItemResult]) -> torch.Tensor:
    """(N, K_max) float64 option log-probabilities; missing options of shorter items are -inf."""
    k_max = max(len(r.option_probs) for r in results)
    out = torch.full((len(results), k_max), -math.inf, dtype=torch.float64)
    for i, r in enumerate(results):
        p = torch.tensor(r.option_probs, dtype=torch.float64).clamp_min(1e-300)
        out[i, : p.numel()] = (p / p.sum()).log()
    return out


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100,
                    t_range: tuple[float, float] = T_RANGE) -> float:
    """The T in `t_range` minimising mean NLL of `labels` under softmax(logits / T) (LBFGS on log T, from T = 1).

    `logits` is (N, K) and may hold -inf for absent options (items with fewer options). The result never has a
    higher NLL than T = 1. When it ends on a bound of `t_range` a one-line warning says so: at the top, the logits
    carry (almost) no information about the labels (a model near chance; the calibrated confidences are nearly
    uniform); at the bottom, the top option is right on every fit row (the confidences become nearly 0/1). Either
    way the optimum may lie beyond the bound.
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, K) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}.")
    if logits.shape[0] == 0:
        raise ValueError("fit_temperature needs at least one labelled item.")
    if not 0 < t_range[0] < 1 < t_range[1]:
        raise ValueError(f"t_range must satisfy 0 < low < 1 < high, got {t_range}.")
    lo, hi = math.log(t_range[0]), math.log(t_range[1])
    finite = torch.isfinite(logits)
    safe = torch.where(finite, logits, torch.zeros_like(logits))

    def nll(log_t: torch.Tensor) -> torch.Tensor:
        scaled = torch.where(finite, safe / log_t.clamp(lo, hi).exp(), torch.full_like(safe, -math.inf))
        return torch.nn.functional.cross_entropy(scaled, labels)

    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nll(log_t)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        fitted = log_t.clamp(lo, hi)
        # The NLL is convex in 1/T, so a bound with a lower NLL than where LBFGS stopped (it stops in the flat tail
        # of an optimum beyond the range, e.g. near T = 0.05 when every item is confidently right) is the minimiser.
        for bound in (lo, hi):
            bound = torch.tensor(bound, dtype=torch.float64)
            if nll(bound) < nll(fitted) - 1e-12:
                fitted = bound
        if not torch.isfinite(nll(fitted)) or nll(fitted) > nll(torch.zeros((), dtype=torch.float64)):
            fitted = torch.zeros((), dtype=torch.float64)
    temperature = float(fitted.exp())
    _warn_at_bound(temperature, t_range, len(labels))
    return temperature


def _warn_at_bound(temperature: float, t_range: tuple[float, float], n: int) -> None:
    low, high = t_range
    if abs(math.log(temperature) - math.log(high)) <= _BOUND_TOLERANCE:
        logger.warning(f"fit_temperature: T = {temperature:.4g} is at the upper bound {high:g} of the search range "
                       f"[{low:g}, {high:g}] ({n} labelled rows): the logits carry almost no information about the "
                       "labels (the model is near chance on them), so the calibrated confidences are "
                       "nearly uniform; or the bound is too tight.")
    elif abs(math.log(temperature) - math.log(low)) <= _BOUND_TOLERANCE:
        logger.warning(f"fit_temperature: T = {temperature:.4g} is at the lower bound {low:g} of the search range "
                       f"[{low:g}, {high:g}] ({n} labelled rows): the top option is right on every fit row, so "
                       "the calibrated confidences are nearly 0 or 1 (fit on more, or harder, items); or the bound "
                       "is too tight.")


def apply_temperature(result: ItemResult, temperature: float, method: str = "temperature") -> ItemResult:
    """`result` with option probabilities softmax(log p / T); prediction kept, uncalibrated ones in `extra`."""
    log_p = padded_log_probs([result])[0]
    p = (log_p / temperature).softmax(-1).tolist()
    pred = result.prediction
    return dataclasses.replace(result, option_probs=p, confidence=p[pred] if pred is not None else 0.0,
                               extra={**result.extra, "uncalibrated_probs": result.option_probs, "method": method})


@dataclasses.dataclass
class TemperatureConfig(ScoringFields):
    max_iter: int = dataclasses.field(default=100, metadata={"help": "LBFGS iterations when fitting T."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"`max_iter` must be an integer >= 1, got {self.max_iter!r}.")


@register_method
class TemperatureScaling(Evaluator):
    """One temperature over the scoring layer's option log-probabilities, fitted by NLL on labelled items.

    Example:
        >>> from catto.data.synthetic import make_model, make_tokenizer, MCQA_VOCAB
        >>> from catto.data import MCQAItem
        >>> items = [MCQAItem(f"q{i}", "w1 w2", ("w3", "w4"), gold=i % 2) for i in range(6)]
        >>> model, tok = make_model(vocab_size=len(MCQA_VOCAB)), make_tokenizer(MCQA_VOCAB)
        >>> ts = TemperatureScaling(scoring="cloze").fit(model, tok, items)
        >>> ts.temperature > 0 and len(ts.evaluate(model, tok, items)) == 6
        True
    """

    name = "temperature"
    config_class = TemperatureConfig
    needs_labels = True

    def __init__(self, config: TemperatureConfig | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.temperature = 1.0
        self.fit_nll: dict[str, float] = {}

    def fit(self, model, tokenizer, items: Sequence[MCQAItem]) -> TemperatureScaling:
        super().fit(model, tokenizer, items)
        results = self.config.score(model, tokenizer, items, progress=self.progress)
        logits = padded_log_probs(results)
        labels = torch.tensor([it.gold for it in items])
        self.temperature = fit_temperature(logits, labels, self.config.max_iter)
        ce = torch.nn.functional.cross_entropy
        self.fit_nll = {"t1": float(ce(logits.clamp_min(-1e300), labels)),
                        "fitted": float(ce((logits / self.temperature).clamp_min(-1e300), labels)), "n": len(items)}
        return self

    def evaluate(self, model, tokenizer, items: Sequence[MCQAItem]) -> list[ItemResult]:
        return [apply_temperature(r, self.temperature) for r in self.config.score(model, tokenizer, items, progress=self.progress)]

    def state_json(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "fit_nll": self.fit_nll}

    def load_state(self, tensors, state) -> None:
        super().load_state(tensors, {})
        self.temperature = float(state["temperature"])
        self.fit_nll = dict(state.get("fit_nll", {}))
