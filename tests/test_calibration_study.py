"""The selection rule of `benchmarks/calibration_study.py`, which decides whether a study changes catto's defaults:
eligibility by accuracy cost, choice by OOD token ECE, and the per-seed noise conditions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("calibration_study", REPO / "benchmarks" / "calibration_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(mcqa_acc=0.45, token_acc=0.30, token_ece=0.20, mcqa_ece=0.06):
    return {"id_mcqa_accuracy": mcqa_acc, "ood_mcqa_accuracy": mcqa_acc, "id_token_accuracy": token_acc,
            "ood_token_accuracy": token_acc, "ood_token_ece": token_ece, "ood_mcqa_ece15": mcqa_ece}


def test_eligible_arm_with_the_lowest_ood_token_ece_is_chosen(study):
    table = {"base": _row(0.40, 0.25, 0.13), "dpo": _row(),
             "catto_a1.0": _row(mcqa_acc=0.43, token_ece=0.05),  # best ECE, but 2 points of MCQA accuracy lost
             "catto_a0.3": _row(mcqa_acc=0.445, token_ece=0.08),  # half a point lost: within tolerance
             "catto_a0.1": _row(mcqa_acc=0.47, token_ece=0.12)}
    selection = study.select_default(table)
    assert selection["chosen"] == "catto_a0.3"
    assert selection["eligible"] == ["catto_a0.1", "catto_a0.3"]
    assert selection["accuracy_cost_vs_dpo"]["catto_a1.0"]["id_mcqa_accuracy"] == pytest.approx(0.02)
    assert selection["ood_token_ece_vs_dpo"] == pytest.approx(-0.12)


def test_no_arm_within_the_accuracy_tolerance_chooses_nothing(study):
    table = {"dpo": _row(), "catto_a1.0": _row(token_acc=0.25, token_ece=0.01)}
    selection = study.select_default(table)
    assert selection["chosen"] is None and "within 0.01" in selection["reason"]
    assert study.select_default({"catto_a0.3": _row()})["chosen"] is None  # nothing to compare with


def _paired(token_cis, mcqa_cis, arm="catto_a1.0"):
    return {f"{arm}-s{seed} vs dpo-s{seed}": {"ood": {"token_ece": {"ci": t}, "mcqa_ece15": {"ci": m}}}
            for seed, (t, m) in enumerate(zip(token_cis, mcqa_cis))}


@pytest.mark.parametrize("token_cis, mcqa_cis, token_ok, mcqa_ok", [
    ([[-0.2, -0.1], [-0.15, -0.05], [-0.3, -0.01]], [[-0.01, 0.02]] * 3, True, True),
    ([[-0.2, -0.1], [-0.15, 0.01], [-0.3, -0.01]], [[-0.01, 0.02]] * 3, False, True),  # one seed within noise
    ([[-0.2, -0.1]] * 3, [[-0.01, 0.02], [0.01, 0.05], [-0.01, 0.02]], True, False),  # MCQA worse on one seed
])
def test_defaults_change_only_beyond_noise_on_every_seed(study, token_cis, mcqa_cis, token_ok, mcqa_ok):
    decided = study.apply_noise_rule({"chosen": "catto_a1.0"}, _paired(token_cis, mcqa_cis))
    assert decided["token_ece_below_dpo_every_seed"] is token_ok
    assert decided["mcqa_ece_not_above_dpo_every_seed"] is mcqa_ok
    assert decided["beyond_noise"] is (token_ok and mcqa_ok) and decided["changes_defaults"] is (token_ok and mcqa_ok)
    assert len(decided["per_seed_ood_token_ece_ci_vs_dpo"]) == 3


def test_the_current_default_arm_confirms_but_never_changes_the_defaults(study):
    paired = _paired([[-0.2, -0.1]], [[-0.01, 0.02]], arm=study.DEFAULT_ARM)
    decided = study.apply_noise_rule({"chosen": study.DEFAULT_ARM}, paired)
    assert decided["beyond_noise"] is True and decided["changes_defaults"] is False
    # other arms' seeds do not count for the chosen one
    assert study.apply_noise_rule({"chosen": "catto_a1.0"}, paired)["beyond_noise"] is False
    assert study.apply_noise_rule({"chosen": None, "reason": "x"}, paired) == {"chosen": None, "reason": "x"}
