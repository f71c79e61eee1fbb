"""Distribution-shift gate for test-time training: EMA-smoothed signal, two-sided Page-Hinkley test, update bursts.

SECL (arXiv 2604.09624) trains only when the input distribution shifts. The signal is one number per question (the
frozen model's next-token entropy after the question); this module turns a stream of such numbers into "may this
question update the model?". Everything here is plain Python over floats, with its whole state in a JSON-able dict,
so a stream can be checkpointed and resumed exactly.

The test (Page 1954; Hinkley 1971), on the smoothed signal ``s_t`` with ``m_t`` the running mean of ``s`` since the
last reset:

- upward:   ``U_t = sum_{i<=t} (s_i - m_i - epsilon)``; fires when ``U_t - min_{i<=t} U_i > lambda``;
- downward: ``D_t = sum_{i<=t} (s_i - m_i + epsilon)``; fires when ``max_{i<=t} D_i - D_t > lambda``.

``epsilon`` is the magnitude of change tolerated, ``lambda`` (``threshold``) the alarm level. After an alarm the
statistics are reset, and no alarm can be raised before ``min_samples`` observations since the last reset.

Example:
    >>> import random
    >>> rng = random.Random(0)
    >>> xs = [rng.gauss(1.0, 0.1) for _ in range(100)] + [rng.gauss(3.0, 0.1) for _ in range(100)]
    >>> page_hinkley_detections(xs, epsilon=0.05, threshold=3.0, min_samples=30)[0] - 100 < 10
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any


def _check(name: str, value: float, *, low: float, high: float | None = None, low_open: bool = False) -> None:
    too_low = value <= low if low_open else value < low
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        left = "(" if low_open else "["
        right = f"{high}]" if high is not None else "inf)"
        raise ValueError(f"`{name}` must lie in {left}{low}, {right}, got {value!r}.")


@dataclasses.dataclass
class PageHinkley:
    """Two-sided Page-Hinkley change detector (see the module docstring for the statistics).

    Args:
        epsilon: tolerated change per observation (``delta`` in the literature); larger = fewer alarms.
        threshold: alarm level ``lambda`` on the cumulative deviation; larger = fewer, later alarms.
        min_samples: observations since the last reset before an alarm may be raised (the warm-up).
    """

    epsilon: float = 0.05
    threshold: float = 3.0
    min_samples: int = 30
    n: int = 0
    mean: float = 0.0
    up: float = 0.0
    up_min: float = 0.0
    down: float = 0.0
    down_max: float = 0.0

    def __post_init__(self) -> None:
        _check("epsilon", self.epsilon, low=0.0)
        _check("threshold", self.threshold, low=0.0, low_open=True)
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 1:
            raise ValueError(f"`min_samples` must be an integer >= 1, got {self.min_samples!r}.")

    def reset(self) -> None:
        """Forget everything observed (called after each alarm)."""
        self.n, self.mean, self.up, self.up_min, self.down, self.down_max = 0, 0.0, 0.0, 0.0, 0.0, 0.0

    def update(self, x: float) -> str | None:
        """Observe `x`; returns ``"up"`` or ``"down"`` when the test fires (the statistics are then reset), else
        None."""
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"PageHinkley.update got a non-finite value {x!r}.")
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.up += x - self.mean - self.epsilon
        self.up_min = min(self.up_min, self.up)
        self.down += x - self.mean + self.epsilon
        self.down_max = max(self.down_max, self.down)
        if self.n < self.min_samples:
            return None
        direction = None
        if self.up - self.up_min > self.threshold:
            direction = "up"
        elif self.down_max - self.down > self.threshold:
            direction = "down"
        if direction is not None:
            self.reset()
        return direction

    @property
    def statistics(self) -> tuple[float, float]:
        """Current (upward, downward) test statistics; the test fires when either exceeds `threshold`."""
        return self.up - self.up_min, self.down_max - self.down

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PageHinkley:
        return cls(**state)


def page_hinkley_detections(values: Iterable[float], *, epsilon: float = 0.05, threshold: float = 3.0,
                            min_samples: int = 30) -> list[int]:
    """Indices at which a fresh two-sided Page-Hinkley test over `values` fires."""
    test = PageHinkley(epsilon=epsilon, threshold=threshold, min_samples=min_samples)
    return [i for i, x in enumerate(values) if test.update(x) is not None]


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """What the gate said about one observation."""

    may_update: bool  # inside a burst (the observation that fires opens the burst and counts as its first)
    detected: str | None  # "up" / "down" when the Page-Hinkley test fired on this observation
    warmup: bool  # the test could not fire yet (fewer than `min_samples` observations since its last reset)
    smoothed: float  # EMA of the signal after this observation
    burst_left: int  # burst questions left after this one
    statistics: tuple[float, float]  # Page-Hinkley (upward, downward) statistics after this observation

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "statistics": list(self.statistics)}


@dataclasses.dataclass
class ShiftGate:
    """EMA smoothing + two-sided Page-Hinkley + update bursts, SECL's gate.

    Each observation ``x_t`` (e.g. a question's next-token entropy) is smoothed, ``s_t = (1 - alpha) s_{t-1} +
    alpha x_t`` (``s_1 = x_1``), and fed to the `PageHinkley` test. When the test fires, that question and the next
    ``burst - 1`` questions may update the model (a new alarm inside a burst restarts it at full length). Warm-up: the
    test cannot fire during its first ``min_samples`` observations (and again after each alarm, while its new
    reference mean is estimated), so the first ``min_samples`` questions of a stream never update.

    Example:
        >>> gate = ShiftGate(ema_alpha=1.0, burst=2, test=PageHinkley(threshold=1.0, min_samples=3))
        >>> [gate.observe(x).may_update for x in [0, 0, 0, 0, 5, 5, 5, 5]]
        [False, False, False, False, True, True, False, False]
    """

    ema_alpha: float = 0.05
    burst: int = 50
    test: PageHinkley = dataclasses.field(default_factory=PageHinkley)
    smoothed: float | None = None
    burst_left: int = 0
    n_seen: int = 0
    n_detections: int = 0

    def __post_init__(self) -> None:
        _check("ema_alpha", self.ema_alpha, low=0.0, high=1.0, low_open=True)
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"`burst` must be an integer >= 1, got {self.burst!r}.")

    def observe(self, x: float) -> GateDecision:
        """Feed one observation; says whether this question may update."""
        x = float(x)
        self.smoothed = x if self.smoothed is None else (1.0 - self.ema_alpha) * self.smoothed + self.ema_alpha * x
        warmup = self.test.n + 1 < self.test.min_samples
        detected = self.test.update(self.smoothed)
        self.n_seen += 1
        if detected is not None:
            self.n_detections += 1
            self.burst_left = self.burst
        may_update = self.burst_left > 0
        if may_update:
            self.burst_left -= 1
        return GateDecision(may_update=may_update, detected=detected, warmup=warmup, smoothed=self.smoothed,
                            burst_left=self.burst_left, statistics=self.test.statistics)

    def state_dict(self) -> dict[str, Any]:
        return {"ema_alpha": self.ema_alpha, "burst": self.burst, "test": self.test.state_dict(),
                "smoothed": self.smoothed, "burst_left": self.burst_left, "n_seen": self.n_seen,
                "n_detections": self.n_detections}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ShiftGate:
        return cls(**{**state, "test": PageHinkley.from_state_dict(state["test"])})
