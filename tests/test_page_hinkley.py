"""The Page-Hinkley shift test and SECL's gate (EMA + warm-up + bursts)."""

from __future__ import annotations

import json
import random

import pytest

from catto.methods.page_hinkley import PageHinkley, ShiftGate, page_hinkley_detections


def _noise(n: int, mean: float, sd: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("direction", [+1, -1])
def test_fires_on_mean_shift_within_bounded_delay(seed, direction):
    xs = _noise(200, 2.0, 0.1, seed) + _noise(200, 2.0 + direction * 1.0, 0.1, seed + 100)
    hits = page_hinkley_detections(xs, epsilon=0.05, threshold=3.0, min_samples=30)
    assert hits, "no alarm after a 10-sigma mean shift"
    assert 200 <= hits[0] <= 210, hits  # nothing before the shift, then within 10 observations


@pytest.mark.parametrize("seed", range(5))
def test_silent_on_stationary_noise(seed):
    # The false-alarm rate depends on the noise scale against epsilon: with sd 0.2 a few of these seeds already fire
    # once in 2000 observations, with sd 0.1 none does.
    xs = _noise(2000, 2.0, 0.1, seed)
    assert page_hinkley_detections(xs, epsilon=0.05, threshold=3.0, min_samples=30) == []


def test_direction_is_reported_and_statistics_reset_after_alarm():
    test = PageHinkley(epsilon=0.0, threshold=1.0, min_samples=2)
    out = [test.update(x) for x in [0.0, 0.0, 0.0, 5.0]]
    assert out == [None, None, None, "up"]
    assert test.n == 0 and test.statistics == (0.0, 0.0)
    test = PageHinkley(epsilon=0.0, threshold=1.0, min_samples=2)
    assert [test.update(x) for x in [0.0, 0.0, 0.0, -5.0]][-1] == "down"


def test_no_alarm_before_min_samples():
    test = PageHinkley(epsilon=0.0, threshold=0.5, min_samples=5)
    # a huge jump at observation 2 (index 1) cannot fire until the 5th observation, where it still shows
    out = [test.update(x) for x in [0.0, 10.0, 10.0, 10.0, 10.0]]
    assert out[:4] == [None] * 4 and out[4] == "up"


def test_gate_warmup_then_burst_of_exact_length():
    gate = ShiftGate(ema_alpha=1.0, burst=5, test=PageHinkley(epsilon=0.0, threshold=1.0, min_samples=4))
    decisions = [gate.observe(x) for x in [0.0, 9.0, 9.0, 9.0]]  # a jump inside the warm-up: no alarm, no update
    assert [d.warmup for d in decisions] == [True, True, True, False]
    assert not any(d.may_update for d in decisions[:3])
    # the 4th observation ends the warm-up and the accumulated deviation fires at once: a burst starts there
    assert decisions[3].detected == "up" and decisions[3].may_update
    rest = [gate.observe(9.0) for _ in range(8)]
    assert [d.may_update for d in rest] == [True] * 4 + [False] * 4  # 5 questions in all, the firing one included
    assert gate.n_detections == 1 and gate.n_seen == 12


def test_gate_never_updates_on_stationary_stream():
    gate = ShiftGate()  # the authors' defaults: alpha 0.05, burst 50, epsilon 0.05, lambda 3.0, warm-up 30
    assert not any(gate.observe(x).may_update for x in _noise(1000, 3.0, 0.1, seed=7))


def test_gate_fires_on_entropy_like_shift_with_defaults():
    gate = ShiftGate()
    decisions = [gate.observe(x) for x in _noise(100, 3.0, 0.1, seed=3) + _noise(100, 1.5, 0.1, seed=4)]
    fired = [i for i, d in enumerate(decisions) if d.detected]
    assert fired and 100 <= fired[0] <= 130 and decisions[fired[0]].detected == "down"
    updates = [i for i, d in enumerate(decisions) if d.may_update]
    assert updates[:50] == list(range(fired[0], fired[0] + 50))


def test_gate_state_round_trips_through_json():
    xs = _noise(60, 1.0, 0.3, seed=1) + _noise(60, 3.0, 0.3, seed=2)
    full = ShiftGate(burst=7)
    expected = [full.observe(x) for x in xs]
    part = ShiftGate(burst=7)
    got = [part.observe(x) for x in xs[:70]]
    resumed = ShiftGate.from_state_dict(json.loads(json.dumps(part.state_dict())))
    got += [resumed.observe(x) for x in xs[70:]]
    assert got == expected and any(d.may_update for d in expected)


@pytest.mark.parametrize("kwargs, field", [
    ({"ema_alpha": 0.0}, "ema_alpha"), ({"ema_alpha": 1.5}, "ema_alpha"), ({"burst": 0}, "burst"),
])
def test_gate_rejects_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ShiftGate(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"epsilon": -1.0}, "epsilon"), ({"threshold": 0.0}, "threshold"), ({"min_samples": 0}, "min_samples"),
])
def test_page_hinkley_rejects_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PageHinkley(**kwargs)
