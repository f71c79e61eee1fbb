"""Confidence@k on trained models (`benchmarks/confidence_at_k_study.py`, issue 27 part 1) on a tiny model: an arm
trained in the options format through the study pipeline, sampled by Confidence@k with the study's own method
config, and the analysis (selectors vs the vote, arm vs arm) checked against hand counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from posthoc_common import load_benchmark
from posthoc_common import write_study_mcqa as _write_mcqa

from catto.errors import ConfigError
from catto.methods.confidence_at_k import Candidate, QuestionResult, select_all


@pytest.fixture(scope="module")
def script():
    return load_benchmark("confidence_at_k_study")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mcqa_model_dir, script):
    from catto.data import load_mcqa
    from catto.pipeline.study import DEMO_ARMS, Study, StudySettings

    root = tmp_path_factory.mktemp("cak_study")
    train = _write_mcqa(root / "train.jsonl", 24, 0)
    sets = {name: list(load_mcqa(_write_mcqa(root / f"{name}.jsonl", 8, k), on_invalid="skip"))
            for k, name in enumerate(("id", "ood"), start=1)}
    config = script.method_config(k=4, max_new_tokens=3, batch_size=4)
    settings = StudySettings(out=str(root / "out"), model=mcqa_model_dir, train_data=train, train_split=None,
                             train_items=16, steps=2, per_device_train_batch_size=4, device="cpu", no_progress=True,
                             methods=("confidence_at_k",), method_configs={"confidence_at_k": config})
    study = Study(settings, sets)
    runs = {arm: study.run(DEMO_ARMS[arm], 0) for arm in ("base", "options_dpo")}
    return study, sets, runs, config


def test_the_arm_trains_on_options_pairs_and_is_sampled_with_the_study_config(trained):
    from catto.pipeline.study import DEMO_ARMS

    study, sets, runs, config = trained
    record = json.loads(Path(study.run_dir(DEMO_ARMS["options_dpo"], 0), "catto_run.json").read_text())
    assert record["argv"][record["argv"].index("--mcqa_prompt_format") + 1] == "options"
    for arm in runs:
        settings = json.loads(Path(study.eval_dir(DEMO_ARMS[arm], 0), "confidence_at_k", "id",
                                   "settings.json").read_text())
        assert settings["config"]["prompt_format"] == "options" and settings["config"]["k"] == 4
        assert settings["config"]["calibrate"] is False
        records = runs[arm].records["confidence_at_k"]["id"]
        assert [r.id for r in records] == [it.id for it in sets["id"]]
        assert all(len(r.extra["candidates"]) == 4 for r in records)
    # the adapter changed the samples
    texts = {arm: [c["text"] for r in runs[arm].records["confidence_at_k"]["id"] for c in r.extra["candidates"]]
             for arm in runs}
    assert texts["base"] != texts["options_dpo"]


def test_method_configs_must_name_a_method_of_the_study(mcqa_model_dir, script):
    from catto.pipeline.study import StudySettings

    with pytest.raises(ConfigError, match="method_configs names \\['confidence_at_k'\\]"):
        StudySettings(out="x", model=mcqa_model_dir, train_data="mmlu:x",
                      method_configs={"confidence_at_k": script.method_config()})


def test_render_reads_the_complete_arms_and_writes_the_tables(trained, script, tmp_path):
    study, sets, runs, config = trained
    args = script.parse_args(["--out", study.settings.out, "--k", "4", "--max-new-tokens", "3", "--batch-size", "4",
                              "--bootstrap", "200"])
    message = script.render(study, args, sets)
    assert "base" in message and "options_dpo" in message
    payload = json.loads(Path(study.settings.out, "study.json").read_text())
    assert set(payload["results"]) == {"base", "options_dpo"} and payload["sets"] == {"id": 8, "ood": 8}
    for arm, per_set in payload["results"].items():
        for name, r in per_set.items():
            records = runs[arm].records["confidence_at_k"][name]
            gold = [rec.gold for rec in records]
            # the vote at k = 4, counted by hand from the stored samples
            votes = []
            for rec in records:
                answers = [c["answer"] for c in rec.extra["candidates"]]
                counted = [a for a in answers if a is not None]
                best = max(counted, key=lambda a: (counted.count(a), -answers.index(a))) if counted else None
                votes.append(best)
            assert r["accuracy"]["majority"]["4"] == pytest.approx(np.mean([v == g for v, g in zip(votes, gold)]))
            oracle = np.mean([any(c["answer"] == g for c in rec.extra["candidates"]) for rec, g in zip(records, gold)])
            assert r["oracle"]["4"] == pytest.approx(oracle)
            # every pick is at most the oracle; k = 1 picks are the first sample for every sample-based selector
            for s in script.SELECTORS:
                if s != "greedy":
                    assert r["accuracy"][s]["4"] <= r["oracle"]["4"] + 1e-12
                    assert r["accuracy"][s]["1"] == r["accuracy"]["majority"]["1"]
            assert r["vs_majority"]["confidence/option"]["4"]["diff"] == pytest.approx(
                r["accuracy"]["confidence/option"]["4"] - r["accuracy"]["majority"]["4"])
    summary = Path(study.settings.out, "summary.md").read_text()
    assert "## id" in summary and "## ood" in summary and "| options_dpo |" in summary


def _question(qid, gold, answers, conf, logprobs):
    cands = [Candidate(str(a), a, "option_text" if a is not None else None, 0 if a is not None else None, c,
                       "letter", c, [np.log(c), np.log(1 - c)] if a is not None else None, lp, 1)
             for a, c, lp in zip(answers, conf, logprobs)]
    return QuestionResult(qid, gold, cands, None, select_all(cands, None, (1, 2, 3)))


def test_confidence_pick_and_the_vote_on_hand_made_samples(script):
    # q0: the vote says 1 (two votes), the confident sample says 0 (gold); q1: the vote is right, confidence wrong
    results = [_question("q0", 0, [1, 0, 1], [0.4, 0.9, 0.3], [-1.0, -2.0, -3.0]),
               _question("q1", 1, [1, 1, 0], [0.2, 0.3, 0.8], [-0.5, -1.0, -0.1])]
    views = {"option": results, "full_vocab": results, "option_T": results}
    conf = script.correct_matrix(views, "confidence/option", 3)
    vote = script.correct_matrix(views, "majority", 3)
    best = script.correct_matrix(views, "best_logprob", 3)
    assert conf.tolist() == [1.0, 0.0] and vote.tolist() == [0.0, 1.0] and best.tolist() == [0.0, 0.0]
    d = script.paired_interval(conf, vote, n_boot=500)
    assert d["diff"] == 0.0 and d["lo"] <= 0.0 <= d["hi"] and d["n"] == 2
    same = script.paired_interval(vote, vote, n_boot=50)
    assert (same["diff"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        script.paired_interval(conf, vote[:1])


def test_records_archive_restores_a_run_without_its_adapter(trained, tmp_path):
    """The committed archive of a run's samples brings it back on a machine without its adapter: read back, not
    retrained or sampled again."""
    import shutil

    from catto.pipeline.study import DEMO_ARMS, Study, archive_run_records, restore_run_records

    study, sets, runs, config = trained
    out = Path(study.settings.out)
    (out / "eval" / "options_dpo-s0" / "analysis").mkdir()
    (out / "eval" / "options_dpo-s0" / "analysis" / "metrics.json").write_text("{}")  # a cache, not a record
    archive = Path(archive_run_records(out, "options_dpo-s0"))
    first = archive.read_bytes()
    archive.write_bytes(b"kept")
    assert archive_run_records(out, "options_dpo-s0") == str(archive) and archive.read_bytes() == b"kept"  # made once
    archive.unlink()
    assert Path(archive_run_records(out, "options_dpo-s0")).read_bytes() == first  # reproducible bytes
    shutil.rmtree(out / "eval" / "options_dpo-s0" / "analysis")
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(out / "eval" / "options_dpo-s0", moved / "eval")
    shutil.move(out / "runs" / "options_dpo-s0", moved / "runs")
    try:
        assert restore_run_records(out) == ["options_dpo-s0"] and restore_run_records(out) == []
        assert not (out / "eval" / "options_dpo-s0" / "analysis").exists()
        again = Study(study.settings, sets).run(DEMO_ARMS["options_dpo"], 0)
        assert not (out / "runs" / "options_dpo-s0").exists()  # nothing trained
        assert [r.to_json() for r in again.records["confidence_at_k"]["id"]] == [
            r.to_json() for r in runs["options_dpo"].records["confidence_at_k"]["id"]]
    finally:
        shutil.rmtree(out / "eval" / "options_dpo-s0", ignore_errors=True)
        shutil.move(moved / "eval", out / "eval" / "options_dpo-s0")
        shutil.move(moved / "runs", out / "runs" / "options_dpo-s0")
