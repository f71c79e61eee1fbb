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
    table = {"base": {0: _row(0.40, 0.25, 0.13)}, "dpo": {0: _row()},
             "catto_a1.0": {0: _row(mcqa_acc=0.43, token_ece=0.05)},  # best ECE, but 2 points of MCQA accuracy lost
             "catto_a0.3": {0: _row(mcqa_acc=0.445, token_ece=0.08)},  # half a point lost: within tolerance
             "catto_a0.1": {0: _row(mcqa_acc=0.47, token_ece=0.12)}}
    selection = study.select_default(table)
    assert selection["chosen"] == "catto_a0.3"
    assert selection["eligible"] == ["catto_a0.1", "catto_a0.3"]
    assert selection["accuracy_cost_vs_dpo"]["catto_a1.0"]["id_mcqa_accuracy"] == pytest.approx(0.02)
    assert selection["ood_token_ece_vs_dpo"] == pytest.approx(-0.12)


def test_no_arm_within_the_accuracy_tolerance_chooses_nothing(study):
    table = {"dpo": {0: _row()}, "catto_a1.0": {0: _row(token_acc=0.25, token_ece=0.01)}}
    selection = study.select_default(table)
    assert selection["chosen"] is None and "within 0.01" in selection["reason"]
    assert study.select_default({"catto_a0.3": {0: _row()}})["chosen"] is None  # nothing to compare with


def test_a_screened_arm_is_compared_with_dpo_of_its_own_seed(study):
    # DPO's seed 0 is weaker than its mean over three seeds: a one-seed arm is judged against seed 0 only, and
    # the choice between arms is made on the seed they share
    dpo = {0: _row(mcqa_acc=0.41, token_ece=0.25), 1: _row(mcqa_acc=0.48, token_ece=0.24),
           2: _row(mcqa_acc=0.42, token_ece=0.22)}
    finalist = {0: _row(mcqa_acc=0.41, token_ece=0.08), 1: _row(mcqa_acc=0.48, token_ece=0.14),
                2: _row(mcqa_acc=0.42, token_ece=0.23)}
    screened = {0: _row(mcqa_acc=0.414, token_ece=0.12)}  # 2.3 points below DPO's three-seed mean
    selection = study.select_default({"dpo": dpo, "catto_a0.3": finalist, "catto_a0.1": screened})
    assert selection["eligible"] == ["catto_a0.1", "catto_a0.3"]
    assert selection["compared_on_seeds"] == {"catto_a0.3": [0, 1, 2], "catto_a0.1": [0]}
    assert selection["choice_seeds"] == [0]
    # on seed 0 the finalist is 0.17 below DPO, the screened arm 0.13: the finalist is chosen, although its mean
    # over three seeds (0.15) is above the screened arm's single value (0.12)
    assert selection["chosen"] == "catto_a0.3"
    assert selection["ood_token_ece_vs_dpo"] == pytest.approx((0.08 + 0.14 + 0.23 - 0.25 - 0.24 - 0.22) / 3)


def test_comparisons_pair_each_run_with_its_seeds_references(study):
    keys = ["base-s0", "dpo-s0", "dpo-s1", "catto_a0.3-s0", "catto_a0.3-s1", "dpo_bce-s0"]
    assert study.comparisons(keys) == [
        ("dpo-s0", "base-s0"), ("dpo-s1", "base-s0"), ("catto_a0.3-s0", "dpo-s0"), ("catto_a0.3-s0", "dpo_bce-s0"),
        ("catto_a0.3-s1", "dpo-s1"), ("dpo_bce-s0", "dpo-s0")]


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
    # a comparison with the BCE baseline is not a comparison with DPO
    vs_bce = {f"{study.DEFAULT_ARM}-s0 vs dpo_bce-s0": paired[f"{study.DEFAULT_ARM}-s0 vs dpo-s0"]}
    assert study.apply_noise_rule({"chosen": study.DEFAULT_ARM}, vs_bce)["beyond_noise"] is False
    assert study.apply_noise_rule({"chosen": None, "reason": "x"}, paired) == {"chosen": None, "reason": "x"}
