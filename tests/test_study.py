"""The study pipeline (`catto.pipeline.study`, `catto.pipeline.study_analysis`): the selection rule that decides
whether a study changes catto's defaults (eligibility by accuracy cost, choice by OOD token ECE, the per-seed noise
conditions), the plumbing from records to per-run rows (per set, pooled OOD, seed pairing, paired differences), the
committed study re-rendered from its study.json to the digit, and a dry run on a tiny model (train two arms,
evaluate through the runner, differences, rule, tables)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from posthoc_common import write_study_mcqa as _write_mcqa

from catto.pipeline import study_analysis

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "benchmarks" / "results" / "calibration_study"
DEFAULT_ARM = "catto_a0.3"


@pytest.fixture(scope="module")
def study():
    return study_analysis


def _row(mcqa_acc=0.45, token_acc=0.30, token_ece=0.20, mcqa_ece=0.06, *, id_mcqa_acc=None, id_token_acc=None):
    """ID and OOD values differ by default (ID accuracies 0.05 above OOD), so a rule that read one scope for the
    other would be caught."""
    return {"id_mcqa_accuracy": mcqa_acc + 0.05 if id_mcqa_acc is None else id_mcqa_acc, "ood_mcqa_accuracy": mcqa_acc,
            "id_token_accuracy": token_acc + 0.05 if id_token_acc is None else id_token_acc,
            "ood_token_accuracy": token_acc, "ood_token_ece": token_ece, "ood_mcqa_ece15": mcqa_ece,
            "id_token_ece": token_ece + 0.3}


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


@pytest.mark.parametrize("scope", ["id_mcqa_acc", "id_token_acc"])
def test_an_arm_that_loses_accuracy_in_distribution_only_is_not_eligible(study, scope):
    # OOD accuracies equal DPO's; in distribution the arm is two points below DPO on one of the two
    dpo = _row()
    arm = _row(token_ece=0.05, **{scope: (dpo["id_mcqa_accuracy"] if scope == "id_mcqa_acc"
                                          else dpo["id_token_accuracy"]) - 0.02})
    selection = study.select_default({"dpo": {0: dpo}, "catto_a1.0": {0: arm}})
    assert selection["chosen"] is None
    key = "id_mcqa_accuracy" if scope == "id_mcqa_acc" else "id_token_accuracy"
    assert selection["accuracy_cost_vs_dpo"]["catto_a1.0"][key] == pytest.approx(0.02)
    assert selection["accuracy_cost_vs_dpo"]["catto_a1.0"][key.replace("id_", "ood_")] == pytest.approx(0.0)


def test_the_choice_reads_ood_token_ece_not_id(study):
    # arm A has the lower ID token ECE, arm B the lower OOD token ECE: B is chosen
    a = {**_row(token_ece=0.15), "id_token_ece": 0.01}
    b = {**_row(token_ece=0.10), "id_token_ece": 0.50}
    selection = study.select_default({"dpo": {0: _row()}, "catto_a": {0: a}, "catto_b": {0: b}})
    assert selection["chosen"] == "catto_b"


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
    paired = _paired([[-0.2, -0.1]], [[-0.01, 0.02]], arm=DEFAULT_ARM)
    decided = study.apply_noise_rule({"chosen": DEFAULT_ARM}, paired, DEFAULT_ARM)
    assert decided["beyond_noise"] is True and decided["changes_defaults"] is False
    # other arms' seeds do not count for the chosen one
    assert study.apply_noise_rule({"chosen": "catto_a1.0"}, paired)["beyond_noise"] is False
    # a comparison with the BCE baseline is not a comparison with DPO
    vs_bce = {f"{DEFAULT_ARM}-s0 vs dpo_bce-s0": paired[f"{DEFAULT_ARM}-s0 vs dpo-s0"]}
    assert study.apply_noise_rule({"chosen": DEFAULT_ARM}, vs_bce)["beyond_noise"] is False
    assert study.apply_noise_rule({"chosen": None, "reason": "x"}, paired) == {"chosen": None, "reason": "x"}


# ----------------------------------------------------------------------------------------------------------------
# The loss-form rule (benchmarks/results/loss_form_study/RULE.md): answer tokens, every term arm, the default to beat


def _answer_row(mcqa_acc=0.45, answer_acc=0.30, answer_ece=0.20, mcqa_ece=0.06, pooled_token_acc=None):
    """A row with answer-token numbers; the pooled token accuracy (EOS included) differs, so a rule that read it
    instead of the answer tokens' would be caught."""
    return {**_row(mcqa_acc, answer_acc + 0.2 if pooled_token_acc is None else pooled_token_acc, 0.5, mcqa_ece),
            "id_answer_token_accuracy": answer_acc + 0.05, "ood_answer_token_accuracy": answer_acc,
            "ood_answer_token_ece": answer_ece, "id_answer_token_ece": answer_ece + 0.3}


def test_loss_form_rule_reads_answer_tokens_and_takes_every_term_arm(study):
    table = {"base": {0: _answer_row(0.40, 0.25, 0.01)}, "dpo": {0: _answer_row()},
             "bce_a1.0": {0: _answer_row(answer_acc=0.28, answer_ece=0.02)},  # 2 answer-token points lost
             # its pooled token accuracy (EOS) is far above DPO's, which must not make it eligible ...
             "l2_a1.0": {0: _answer_row(answer_acc=0.27, answer_ece=0.03, pooled_token_acc=0.9)},
             "l2_a0.3": {0: _answer_row(answer_acc=0.296, answer_ece=0.09)},  # not a `catto*` name: still a candidate
             # ... and a pooled token accuracy far below DPO's must not make an arm ineligible
             "dpo_bce": {0: _answer_row(answer_acc=0.30, answer_ece=0.12, pooled_token_acc=0.01)}}
    selection = study.select_loss_form(table)
    assert selection["eligible"] == ["dpo_bce", "l2_a0.3"] and selection["chosen"] == "l2_a0.3"
    assert selection["ood_answer_token_ece_vs_dpo"] == pytest.approx(-0.11)
    assert selection["accuracy_cost_vs_dpo"]["bce_a1.0"]["ood_answer_token_accuracy"] == pytest.approx(0.02)
    assert "base" not in selection["accuracy_cost_vs_dpo"]
    # records made before the EOS was named have no answer-token numbers: such an arm is reported, not chosen
    old = {0: _row(token_ece=0.01)}
    assert "no answer-token numbers" in study.select_loss_form({**table, "catto_old": old})[
        "accuracy_cost_vs_dpo"]["catto_old"]["reason"]


def _paired_vs_default(token_cis, mcqa_cis, arm="l2_a0.3"):
    return {f"{arm}-s{seed} vs {DEFAULT_ARM}-s{seed}": {"ood": {"answer_token_ece": {"ci": t}, "mcqa_ece15": {"ci": m}}}
            for seed, (t, m) in enumerate(zip(token_cis, mcqa_cis))}


@pytest.mark.parametrize("token_cis, mcqa_cis, changes", [
    ([[-0.2, -0.1], [-0.15, -0.05], [-0.3, -0.01]], [[-0.01, 0.02]] * 3, True),
    ([[-0.2, -0.1], [-0.15, 0.01], [-0.3, -0.01]], [[-0.01, 0.02]] * 3, False),  # one seed within noise
    ([[-0.2, -0.1]] * 3, [[-0.01, 0.02], [0.01, 0.05], [-0.01, 0.02]], False),  # MCQA worse than default on one seed
])
def test_loss_form_defaults_change_only_beyond_the_default_arm_on_every_seed(study, token_cis, mcqa_cis, changes):
    decided = study.apply_loss_form_noise_rule({"chosen": "l2_a0.3"}, _paired_vs_default(token_cis, mcqa_cis))
    assert decided["changes_defaults"] is changes and len(decided["per_seed_ood_answer_token_ece_ci_vs_default"]) == 3
    # fewer seeds than the rule's three: provisional, the defaults stay whatever the intervals say
    one_seed = study.apply_loss_form_noise_rule({"chosen": "l2_a0.3"}, _paired_vs_default(token_cis[:1], mcqa_cis[:1]))
    assert one_seed["provisional"] is True and one_seed["changes_defaults"] is False
    # beating DPO is not beating the default arm
    vs_dpo = {k.replace(f"vs {DEFAULT_ARM}", "vs dpo"): v for k, v in _paired_vs_default(token_cis, mcqa_cis).items()}
    assert study.apply_loss_form_noise_rule({"chosen": "l2_a0.3"}, vs_dpo)["changes_defaults"] is False
    same = study.apply_loss_form_noise_rule({"chosen": DEFAULT_ARM}, _paired_vs_default(token_cis, mcqa_cis))
    assert same["changes_defaults"] is False and same["beyond_noise"] is None
    words = " ".join(study.selection_lines({
        **decided, "rule": "loss_form", "eligible": ["l2_a0.3"], "tolerance": 0.01, "choice_seeds": [0, 1, 2],
        "ood_answer_token_ece_vs_dpo": -0.1}))
    assert ("Defaults: change to l2_a0.3" in words) is changes and ("Defaults: unchanged" in words) is not changes


def test_comparisons_add_the_default_arm_of_the_same_seed_when_asked(study):
    keys = ["dpo-s0", "catto_a0.3-s0", "l2_a0.3-s0", "l2_a0.3-s1", "catto_a0.3-s1", "dpo-s1"]
    pairs = study.comparisons(keys, also_vs=(DEFAULT_ARM,))
    assert ("l2_a0.3-s0", "catto_a0.3-s0") in pairs and ("l2_a0.3-s1", "catto_a0.3-s1") in pairs
    assert ("l2_a0.3-s0", "catto_a0.3-s1") not in pairs and ("catto_a0.3-s0", "catto_a0.3-s0") not in pairs
    assert ("dpo-s0", "catto_a0.3-s0") not in pairs
    assert study.comparisons(keys) == [p for p in pairs if p[1].split("-s")[0] != DEFAULT_ARM]


# ----------------------------------------------------------------------------------------------------------------
# Plumbing: records -> per-run metrics -> rows -> paired differences


def _mcqa(prefix: str, n: int, acc: float, conf: float, seed: int):
    from catto.eval.results import ItemResult

    rng = np.random.default_rng(seed)
    correct = rng.random(n) < acc
    return [ItemResult(f"{prefix}{i}", [conf, 1 - conf], 0, conf, 0 if c else 1, bool(c)) for i, c in
            enumerate(correct)]


def _tokens(prefix: str, n: int, acc: float, conf: float, seed: int):
    from catto.eval.token import TokenPairResult, TokenSequence

    rng = np.random.default_rng(seed)

    def seq():
        c = [bool(x) for x in rng.random(2) < acc]
        return TokenSequence([5, 1], [conf, conf], c, [0.5, 0.5])

    return [TokenPairResult(f"{prefix}{i}", seq(), seq()) for i in range(n)]


def _records(acc_shift: float, seed: int):
    """Three sets with different accuracies: 'id' (the first), 'a' and 'b' (OOD, of sizes 40 and 20)."""
    mcqa = {"id": _mcqa("i", 30, 0.3 + acc_shift, 0.6, seed), "a": _mcqa("a", 40, 0.5 + acc_shift, 0.6, seed + 1),
            "b": _mcqa("b", 20, 0.8 + acc_shift, 0.6, seed + 2)}
    tokens = {"id": _tokens("i", 30, 0.2 + acc_shift, 0.7, seed), "a": _tokens("a", 40, 0.4 + acc_shift, 0.7, seed + 1),
              "b": _tokens("b", 20, 0.6 + acc_shift, 0.7, seed + 2)}
    return mcqa, tokens


def test_run_metrics_pool_every_ood_set_and_leave_id_apart(study):
    mcqa, tokens = _records(0.0, seed=0)
    metrics = study.run_metrics(mcqa, tokens, "id", n_resamples=10)
    assert set(metrics["per_set"]) == {"id", "a", "b"}
    ood = mcqa["a"] + mcqa["b"]
    assert metrics["pooled_ood"]["mcqa"]["n"] == 60
    assert metrics["pooled_ood"]["mcqa"]["accuracy"]["value"] == pytest.approx(np.mean([r.correct for r in ood]))
    # ECE with one bin of confidence 0.6: |accuracy - 0.6| (an independent computation)
    assert metrics["pooled_ood"]["mcqa"]["ece15"]["value"] == pytest.approx(abs(np.mean([r.correct for r in ood]) - 0.6))
    ood_tokens = [c for r in tokens["a"] + tokens["b"] for c in r.chosen.correct]
    assert metrics["pooled_ood"]["token"]["chosen"]["accuracy"]["value"] == pytest.approx(np.mean(ood_tokens))
    assert metrics["per_set"]["id"]["mcqa"]["accuracy"]["value"] == pytest.approx(
        np.mean([r.correct for r in mcqa["id"]]))
    # ids repeat across sets ("a0" is not "b0" but "i0" could be "a0" in another study): pooling prefixes them
    assert metrics["pooled_ood"]["token"]["chosen"]["n_sequences"] == 60


def test_rows_pair_runs_by_arm_and_seed_and_read_each_scope(study):
    runs = {}
    for arm, shift in (("dpo", 0.0), ("catto_a0.3", 0.1)):
        for seed in (0, 1):
            mcqa, tokens = _records(shift, seed=10 * seed)
            runs[f"{arm}-s{seed}"] = {"arm": arm, "seed": seed,
                                      "metrics": study.run_metrics(mcqa, tokens, "id", n_resamples=10)}
    rows = study.rows_by_seed(runs, ["dpo", "catto_a0.3"], "id")
    assert sorted(rows) == ["catto_a0.3", "dpo"] and sorted(rows["dpo"]) == [0, 1]
    block = runs["catto_a0.3-s1"]["metrics"]
    row = rows["catto_a0.3"][1]
    assert row["id_mcqa_accuracy"] == block["per_set"]["id"]["mcqa"]["accuracy"]["value"]
    assert row["ood_mcqa_accuracy"] == block["pooled_ood"]["mcqa"]["accuracy"]["value"]
    assert row["id_mcqa_accuracy"] != row["ood_mcqa_accuracy"]
    assert row["ood_token_ece"] == block["pooled_ood"]["token"]["chosen"]["ece"]["value"]
    table = study.table_over_seeds(runs, ["dpo", "catto_a0.3"], "id")
    values = [rows["dpo"][s]["ood_token_accuracy"] for s in (0, 1)]
    assert table["dpo"]["seeds"] == [0, 1]
    assert table["dpo"]["ood_token_accuracy"] == pytest.approx(np.mean(values))
    assert table["dpo"]["ood_token_accuracy_sd"] == pytest.approx(np.std(values))


def test_paired_differences_compare_each_run_with_its_own_seeds_reference(study):
    mcqa, tokens = {}, {}
    for key, shift, seed in (("dpo-s0", 0.0, 0), ("dpo-s1", 0.0, 7), ("catto_a0.3-s0", 0.2, 0),
                             ("catto_a0.3-s1", 0.2, 7)):
        mcqa[key], tokens[key] = _records(shift, seed)
    paired = study.paired_differences(mcqa, tokens, "id", n_resamples=50)
    assert list(paired) == ["catto_a0.3-s0 vs dpo-s0", "catto_a0.3-s1 vs dpo-s1"]
    for key, ref in (("catto_a0.3-s0", "dpo-s0"), ("catto_a0.3-s1", "dpo-s1")):
        entry = paired[f"{key} vs {ref}"]
        ood = lambda k: [r.correct for n in ("a", "b") for r in mcqa[k][n]]  # noqa: E731
        expected = np.mean(ood(key)) - np.mean(ood(ref))
        assert entry["ood"]["mcqa_accuracy"]["value"] == pytest.approx(expected)
        assert entry["ood"]["n_items"] == 60 and entry["id"]["n_items"] == 30
        tok = lambda k, n: [c for r in tokens[k][n] for c in r.chosen.correct]  # noqa: E731
        assert entry["id"]["token_accuracy"]["value"] == pytest.approx(np.mean(tok(key, "id")) - np.mean(tok(ref, "id")))
        lo, hi = entry["ood"]["mcqa_accuracy"]["ci"]
        assert lo <= entry["ood"]["mcqa_accuracy"]["value"] <= hi


# ----------------------------------------------------------------------------------------------------------------
# The committed study, re-rendered from its study.json


@pytest.fixture(scope="module")
def committed():
    return json.loads((COMMITTED / "study.json").read_text())


def test_committed_summary_reproduces_to_the_digit(study, committed):
    assert study.summary_markdown(committed) == (COMMITTED / "summary.md").read_text()


def test_committed_table_and_selection_recompute_from_the_per_run_metrics(study, committed):
    """The means over seeds, the seed pairing of the comparisons and the rule's verdict are recomputed from the
    per-run metrics alone and equal what the study wrote (the per-item files behind those metrics are not in git)."""
    arms = list(committed["table"])
    assert study.table_over_seeds(committed["runs"], arms, committed["id"]) == committed["table"]
    assert [" vs ".join(p) for p in study.comparisons(list(committed["runs"]))] == list(
        committed["paired_differences"])
    selection = study.select_default(study.rows_by_seed(committed["runs"], arms, committed["id"]))
    assert study.apply_noise_rule(selection, committed["paired_differences"], committed["default_arm"]) == \
        committed["selection"]


def test_render_only_rewrites_the_summary_from_study_json(tmp_path, committed):
    import subprocess
    import sys

    (tmp_path / "study.json").write_text(json.dumps(committed))
    cmd = [sys.executable, str(REPO / "benchmarks" / "calibration_study.py"), "--render-only", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "summary.md").read_text() == (COMMITTED / "summary.md").read_text()
    missing = subprocess.run(cmd[:-1] + [str(tmp_path / "nothing")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "does not exist" in missing.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------------------------
# A dry run on a tiny model: two arms trained, evaluated through the runner, compared, the rule, the tables


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, mcqa_model_dir):
    from catto.data import load_mcqa
    from catto.pipeline.study import Arm, Study, StudySettings

    root = tmp_path_factory.mktemp("study")
    train = _write_mcqa(root / "train.jsonl", 24, 0)
    sets = {name: list(load_mcqa(_write_mcqa(root / f"{name}.jsonl", 8, k), on_invalid="skip"))
            for k, name in enumerate(("id", "a", "b"), start=1)}
    settings = StudySettings(out=str(root / "out"), model=mcqa_model_dir, train_data=train, train_split=None,
                             train_items=16, steps=2, per_device_train_batch_size=4, device="cpu", no_progress=True)
    arms = {"base": Arm("base"), "dpo": Arm("dpo", "demo/dpo"),
            "catto_a1.0": Arm("catto_a1.0", "demo/catto", ("--catto_alpha", "1.0"))}
    study = Study(settings, sets)
    runs = {(name, 0): study.run(arm, 0) for name, arm in arms.items()}
    return study, arms, sets, runs


def test_dry_run_trains_each_arm_once_with_its_flags(dry_run):
    study, arms, _, runs = dry_run
    assert runs[("base", 0)].train is None
    for name in ("dpo", "catto_a1.0"):
        run_dir = study.run_dir(arms[name], 0)
        record = json.loads(Path(run_dir, "catto_run.json").read_text())
        assert record["argv"] == study.train_argv(arms[name], 0)
        assert runs[(name, 0)].train["steps"] == 2
    argv = study.train_argv(arms["catto_a1.0"], 0)
    assert argv[-2:] == ["--catto_alpha", "1.0"] and "--catto_alpha" not in study.train_argv(arms["dpo"], 0)
    # a second run reuses the training and the per-item results, and keeps the first evaluation's cost
    mtime = os.path.getmtime(Path(study.run_dir(arms["dpo"], 0), "adapter_model.safetensors"))
    timing = json.loads(Path(study.eval_dir(arms["dpo"], 0), "timing.json").read_text())
    assert timing["eval_cpu_seconds"] == runs[("dpo", 0)].eval_cpu_seconds and timing["train_cpu_seconds"] > 0
    again = study.run(arms["dpo"], 0)
    assert os.path.getmtime(Path(study.run_dir(arms["dpo"], 0), "adapter_model.safetensors")) == mtime
    assert [r.confidence for r in again.records["scoring"]["id"]] == \
        [r.confidence for r in runs[("dpo", 0)].records["scoring"]["id"]]
    assert json.loads(Path(study.eval_dir(arms["dpo"], 0), "timing.json").read_text()) == timing
    assert timing["train"]["argv"] == study.train_argv(arms["dpo"], 0)


def test_a_run_restored_from_its_records_reads_back_without_its_adapter(dry_run, tmp_path):
    """What a later session gets from the committed records archive: eval/<run>/ without runs/<run>/ (the adapter is
    not kept) reads back as it was, with no training and no model; a study whose training differs is refused."""
    import shutil

    from catto.errors import ResumeMismatchError
    from catto.pipeline.study import Study

    study, arms, sets, runs = dry_run
    arm = arms["catto_a1.0"]
    run_dir = study.run_dir(arm, 0)
    shutil.move(run_dir, tmp_path / "adapter")
    try:
        again = study.run(arm, 0)
        assert not os.path.exists(run_dir)  # nothing trained
        assert again.train == runs[("catto_a1.0", 0)].train
        for method in ("scoring", "token"):
            assert [r.to_json() for r in again.records[method]["a"]] == [
                r.to_json() for r in runs[("catto_a1.0", 0)].records[method]["a"]]
        # the same study named by a relative folder (records written from an absolute one) reads back too
        relative = Study(dataclasses.replace(study.settings, out=os.path.relpath(study.settings.out)), sets)
        assert relative.cached_records(arm, 0) is not None
        assert [r.to_json() for r in relative.run(arm, 0).records["token"]["a"]] == [
            r.to_json() for r in runs[("catto_a1.0", 0)].records["token"]["a"]]
        assert not os.path.exists(run_dir)
        other = Study(dataclasses.replace(study.settings, steps=3), sets)  # other training: not these records
        with pytest.raises(ResumeMismatchError, match="trained with other arguments"):
            other.run(arm, 0)
    finally:
        shutil.move(tmp_path / "adapter", run_dir)


def test_dry_run_evaluates_every_arm_on_the_same_items_through_the_runner(dry_run):
    study, arms, sets, runs = dry_run
    for (name, _), run in runs.items():
        for set_name, items in sets.items():
            assert [r.id for r in run.records["scoring"][set_name]] == [it.id for it in items]
            assert [r.id for r in run.records["token"][set_name]] == [it.id for it in items]
            settings = json.loads(Path(study.eval_dir(arms[name], 0), "scoring", set_name, "settings.json").read_text())
            assert settings["model"] == study.model_of(arms[name], 0)[0]
            assert settings["adapter"] == (None if name == "base" else study.run_dir(arms[name], 0))
    # the trained arms' answers differ from the base model's (the adapter was loaded)
    base = [r.option_probs for r in runs[("base", 0)].records["scoring"]["id"]]
    dpo = [r.option_probs for r in runs[("dpo", 0)].records["scoring"]["id"]]
    assert not np.allclose(base, dpo)


def test_dry_run_resume_with_other_settings_is_refused(dry_run):
    from catto.errors import ResumeMismatchError
    from catto.pipeline.study import Study

    study, arms, sets, _ = dry_run
    other = Study(dataclasses.replace(study.settings, steps=3), sets)
    with pytest.raises(ResumeMismatchError, match="other arguments"):
        other.train(arms["dpo"], 0)
    fewer = Study(study.settings, {name: items[:-1] for name, items in sets.items()})
    with pytest.raises(ResumeMismatchError):
        fewer.evaluate(arms["base"], 0)


def test_dry_run_differences_rule_and_tables(dry_run, tmp_path, study):
    _, _, _, runs = dry_run
    metrics = {f"{n}-s{s}": {"arm": n, "seed": s, "metrics": study.run_metrics(
        r.records["scoring"], r.records["token"], "id", n_resamples=20)} for (n, s), r in runs.items()}
    mcqa = {k: runs[(k.split("-s")[0], 0)].records["scoring"] for k in metrics}
    tokens = {k: runs[(k.split("-s")[0], 0)].records["token"] for k in metrics}
    paired = study.paired_differences(mcqa, tokens, "id", n_resamples=20)
    assert list(paired) == ["dpo-s0 vs base-s0", "catto_a1.0-s0 vs dpo-s0"]
    arms = ["base", "dpo", "catto_a1.0"]
    selection = study.apply_noise_rule(study.select_default(study.rows_by_seed(metrics, arms, "id")), paired)
    assert "chosen" in selection
    payload = {"command": "dry run", "model": "tiny", "train_items": 16, "steps": 2, "batch_size": 4,
               "eval_items": 8, "eval_data": {n: {"n": 8} for n in ("id", "a", "b")}, "id": "id",
               "runs": metrics, "table": study.table_over_seeds(metrics, arms, "id"), "selection": selection,
               "paired_differences": paired}
    summary = study.write_study_outputs(payload, tmp_path)
    assert (tmp_path / "summary.md").read_text() == summary
    assert json.loads((tmp_path / "study.json").read_text())["table"].keys() == {"base", "dpo", "catto_a1.0"}
    assert "| catto_a1.0-s0 vs dpo-s0 |" in summary and "| dpo | [0] |" in summary
    # the answer's own tokens and the EOS apart: in the rows, the differences and the summary
    row = study.rows_by_seed(metrics, arms, "id")["dpo"][0]
    parts = metrics["dpo-s0"]["metrics"]["pooled_ood"]["token"]["chosen"]["parts"]
    assert row["ood_answer_token_ece"] == parts["answer"]["ece"]["value"]
    assert row["ood_eos_token_accuracy"] == parts["eos"]["accuracy"]["value"]
    assert {"answer_token_ece", "answer_token_accuracy"} <= set(paired["catto_a1.0-s0 vs dpo-s0"]["ood"])
    assert "## Answer tokens and the EOS apart" in summary


def test_dry_run_pairs_go_through_the_cache_and_fingerprints_follow_the_records(dry_run, study):
    _, _, _, runs = dry_run
    mcqa = {f"{n}-s{s}": r.records["scoring"] for (n, s), r in runs.items()}
    tokens = {f"{n}-s{s}": r.records["token"] for (n, s), r in runs.items()}
    asked = []

    def cache(key, ref, compute):
        asked.append((key, ref))
        return compute()

    cached = study.paired_differences(mcqa, tokens, "id", n_resamples=20, cache=cache)
    assert asked == study.comparisons(list(mcqa))
    assert cached == study.paired_differences(mcqa, tokens, "id", n_resamples=20)
    fingerprint = study.records_fingerprint(mcqa["dpo-s0"], tokens["dpo-s0"])
    assert fingerprint == study.records_fingerprint(mcqa["dpo-s0"], tokens["dpo-s0"])
    assert fingerprint != study.records_fingerprint(mcqa["catto_a1.0-s0"], tokens["catto_a1.0-s0"])
    changed = {**mcqa["dpo-s0"], "id": [dataclasses.replace(mcqa["dpo-s0"]["id"][0], confidence=0.123456)]
               + list(mcqa["dpo-s0"]["id"][1:])}
    assert study.records_fingerprint(changed, tokens["dpo-s0"]) != fingerprint


def test_a_study_without_sets_trains_but_refuses_to_evaluate(dry_run):
    from catto.errors import ConfigError
    from catto.pipeline.study import Study

    study, arms, _, _ = dry_run
    trainer_only = Study(study.settings)
    assert trainer_only.train(arms["dpo"], 0)["steps"] == 2  # the finished run, reused
    with pytest.raises(ConfigError, match="no evaluation sets"):
        trainer_only.evaluate(arms["base"], 0)


def test_screened_arms_take_the_first_seed_or_the_seeds_named_for_them():
    from posthoc_common import load_benchmark

    script = load_benchmark("calibration_study")
    args = script.parse_args(["--arms", "base,dpo,catto_a0.3", "--seeds", "0,1,2",
                              "--screen-arms", "dpo_bce@0+1,l2_a0.3"])
    assert args.screened == ["dpo_bce", "l2_a0.3"] and args.screened_seeds == {"dpo_bce": [0, 1]}
    assert script.plan(args.finalists, args.screened, args.seed_list, args.screened_seeds) == [
        ("base", 0), ("dpo", 0), ("dpo", 1), ("dpo", 2), ("catto_a0.3", 0), ("catto_a0.3", 1), ("catto_a0.3", 2),
        ("dpo_bce", 0), ("dpo_bce", 1), ("l2_a0.3", 0)]
    with pytest.raises(SystemExit):
        script.parse_args(["--screen-arms", "dpo_bce@zero"])


def test_runs_only_scores_a_run_and_leaves_the_rendered_study_alone(tmp_path, mcqa_model_dir, monkeypatch):
    import shutil
    import tarfile

    """A one-arm worker (`--runs-only`, what loss_form_study.sh runs) caches its run and does not replace the
    study's summary with a render over that arm alone."""
    from posthoc_common import load_benchmark

    script = load_benchmark("calibration_study")
    specs = {name: (_write_mcqa(tmp_path / f"{name}.jsonl", 6, k), "test") for k, name in enumerate(("id", "ood"))}
    monkeypatch.setattr(script, "eval_specs", lambda olmo_root: specs)
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.md").write_text("the full study\n")
    argv = ["--arms", "base", "--model", mcqa_model_dir, "--olmo-root", str(tmp_path), "--eval-items", "4",
            "--out", str(out), "--runs-only"]
    assert script.main(argv + ["--archive-records"]) == 0
    with tarfile.open(out / "records" / "base-s0.tar.gz") as tar:
        names = tar.getnames()
    assert "eval/base-s0/token/ood/results.jsonl" in names and not any("/analysis" in n for n in names)
    assert (out / "summary.md").read_text() == "the full study\n" and not (out / "study.json").exists()
    records = out / "eval" / "base-s0" / "token" / "ood" / "results.jsonl"
    assert len(records.read_text().splitlines()) == 4
    cached = json.loads((out / "eval" / "base-s0" / "analysis" / "metrics.json").read_text())
    assert cached["key"]["n_resamples"] == 1000 and cached["value"]["per_set"]["ood"]["mcqa"]["n"] == 4

    # The render reuses the worker's metrics (computing them again would fail here) and writes the study.
    def no_recompute(*args, **kwargs):
        raise AssertionError("metrics recomputed although cached for the same records and settings")

    run_metrics = script.analysis.run_metrics
    monkeypatch.setattr(script.analysis, "run_metrics", no_recompute)
    assert script.main(argv[:-1]) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["runs"]["base-s0"]["metrics"] == cached["value"]
    # other settings (resamples) are not served from the cache
    with pytest.raises(AssertionError, match="recomputed"):
        script.main(argv[:-1] + ["--bootstrap", "50"])
    # a checkout without the eval folder restores the run from its archive and renders it without scoring again
    monkeypatch.setattr(script.analysis, "run_metrics", run_metrics)
    shutil.rmtree(out / "eval")
    assert script.main(argv[:-1] + ["--bootstrap", "50"]) == 0
    assert os.path.getmtime(records) == 0  # the archive's file, not a new scoring
    assert json.loads((out / "study.json").read_text())["bootstrap"]["n_resamples"] == 50


def test_a_damaged_records_archive_is_named_and_leaves_no_half_restored_run(tmp_path):
    from catto.errors import DataError
    from catto.pipeline.study import archive_run_records, restore_run_records

    run = tmp_path / "eval" / "dpo-s0" / "token" / "id"
    run.mkdir(parents=True)
    (run / "results.jsonl").write_text('{"id": "1"}\n')
    archive = Path(archive_run_records(tmp_path, "dpo-s0"))
    intact = archive.read_bytes()
    shutil.rmtree(tmp_path / "eval")
    archive.write_bytes(intact[: len(intact) // 2])  # truncated
    with pytest.raises(DataError, match=r"dpo-s0\.tar\.gz: not a readable records archive.*Fix: restore"):
        restore_run_records(tmp_path)
    assert not (tmp_path / "eval" / "dpo-s0").exists() and list((tmp_path / "eval").iterdir()) == []
    archive.write_bytes(intact)
    assert restore_run_records(tmp_path) == ["dpo-s0"]
    assert (tmp_path / "eval" / "dpo-s0" / "token" / "id" / "results.jsonl").read_text() == '{"id": "1"}\n'
