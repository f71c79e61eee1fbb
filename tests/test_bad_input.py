"""The mistakes people make, each answered with one line that names the field or file and the fix (exit status 2, no
traceback), and, for resumes and overwrites, nothing earlier changed. `catto train` cases stop before launching."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import yaml

from catto.cli import main
from catto.errors import CattoError, ConfigError

# ----------------------------------------------------------------------------------------------------------------
# fixtures: one tiny model, small MCQA and preference files


def _mcqa_rows(n, offset=0):
    return [{"question": f"w{i % 30} w{(i + 1) % 30}", "choices": [f"w{(i + offset + j) % 30}" for j in (0, 2, 3, 4)],
             "answer": (i + offset) % 4, "subject": "toy"} for i in range(n)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory, mcqa_model_dir):
    root = tmp_path_factory.mktemp("bad")
    files = {"data": _write_jsonl(root / "data.jsonl", _mcqa_rows(12)),
             "other": _write_jsonl(root / "sub" / "data.jsonl", _mcqa_rows(12, 1)) if (root / "sub").mkdir() is None
             else None,
             "pairs": _write_jsonl(root / "pairs.jsonl", [{"prompt": f"w{i} w{i + 1}", "chosen": f" w{i}",
                                                           "rejected": f" w{i + 2}"} for i in range(8)])}
    no_tok = root / "model-no-tokenizer"
    shutil.copytree(mcqa_model_dir, no_tok)
    for name in os.listdir(no_tok):
        if name.startswith(("tokenizer", "special_tokens", "vocab")):
            os.remove(no_tok / name)
    (root / "not-a-model").mkdir()
    recipe = {"model_name_or_path": mcqa_model_dir, "dataset_name": str(files["pairs"]),
              "per_device_train_batch_size": 2, "max_steps": 2, "bf16": False, "use_cpu": True,
              "gradient_checkpointing": False, "report_to": "none", "save_strategy": "no", "catto_alpha": 0.3}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return {"root": root, "model": mcqa_model_dir, "no_tok": str(no_tok), **{k: str(v) for k, v in files.items()}}


def _refused(capsys, argv, *needles):
    """Run the console; it must exit with 2 and one line naming `needles` (and the command, once), without a
    traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"catto {argv[0]}: ") and f"catto {argv[0]}: catto {argv[0]}:" not in last, last
    for needle in needles:
        assert needle in last, last
    assert "Fix" in last or "fix" in last or "Did you mean" in last or "invalid" in last or "must be" in last, last
    return last


def _eval(ws, *extra, data=None):
    return ["eval", "--model", ws["model"], "--data", f"mmlu:{data or ws['data']}", "--out",
            str(ws["root"] / "out-eval"), "--bootstrap", "0", "--no-plots", "--no-progress", *extra]


# ----------------------------------------------------------------------------------------------------------------
# catto eval: flags checked at parse time, before any data or model


@pytest.mark.parametrize("flags,needles", [
    (["--limit", "0"], ["--limit", ">= 1"]),
    (["--limit", "-5"], ["--limit", "-5"]),
    (["--sample", "0"], ["--sample"]),
    (["--limit", "3", "--sample", "3"], ["--limit", "--sample"]),
    (["--eval-batch-size", "0"], ["--eval_batch_size", ">= 1"]),
    (["--n-bins", "0"], ["--n-bins"]),
    (["--bootstrap", "-1"], ["--bootstrap"]),
    (["--fit-first", "0"], ["--fit-first"]),
    (["--num-fewshot", "-1"], ["--num-fewshot"]),
    (["--limit", "x"], ["--limit", "invalid int value"]),
    (["--n-binz", "5"], ["--n-binz", "Did you mean --n-bins"]),
    (["--binning", "quantile"], ["--binning", "invalid choice"]),
    (["--method", "nope"], ["Unknown method 'nope'", "confidence_at_k"]),
    (["--method", "confidence_at_k", "--k", "0,2"], ["--k", ">= 1"]),
    (["--fit-first", "3", "--fit-data", "arc_easy"], ["at most one", "--fit-first", "--fit-data"]),
])
def test_eval_flags(ws, capsys, flags, needles):
    _refused(capsys, _eval(ws, *flags), *needles)


def test_eval_missing_required_flags(capsys):
    _refused(capsys, ["eval", "--data", "arc_easy", "--out", "x"], "--model is missing")
    _refused(capsys, ["eval", "--model", "m", "--out", "x"], "--data is missing")


@pytest.mark.parametrize("case", ["unknown_name", "missing_file", "bad_json", "all_invalid", "option_lists",
                                  "same_folder_name", "fit_first_too_big", "fewshot_too_many",
                                  "fewshot_wrong_method", "labelled_without_fit", "pairs_with_scoring"])
def test_eval_data_problems(ws, capsys, tmp_path, case):
    root = ws["root"]
    if case == "unknown_name":
        _refused(capsys, [*_eval(ws)[:3], "--data", "nope_dataset", "--out", str(tmp_path)],
                 "Unknown MCQA dataset 'nope_dataset'")
    elif case == "missing_file":
        _refused(capsys, _eval(ws, data=str(tmp_path / "missing.jsonl")), "missing.jsonl")
    elif case == "bad_json":
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(_mcqa_rows(1)[0]) + "\n{not json\n")
        _refused(capsys, _eval(ws, data=str(path)), str(path), "line 2 is not valid JSON")
    elif case == "all_invalid":
        rows = [{**r, "choices": ["w1", "w1", "w2", "w3"]} for r in _mcqa_rows(3)]
        path = _write_jsonl(tmp_path / "dups.jsonl", rows)
        _refused(capsys, _eval(ws, data=str(path)), "no items to evaluate", "3 invalid rows", "same text")
    elif case == "option_lists":
        rows = [{**r, "choices": [["w1"], "w2", "w3", "w4"]} for r in _mcqa_rows(2)]
        path = _write_jsonl(tmp_path / "lists.jsonl", rows)
        _refused(capsys, _eval(ws, "--on-invalid", "raise", data=str(path)), "option 0 is a list", "row 0")
    elif case == "same_folder_name":
        _refused(capsys, _eval(ws, "--data", f"mmlu:{ws['other']}"), "both write to", "data")
    elif case == "fit_first_too_big":
        _refused(capsys, _eval(ws, "--method", "temperature", "--fit-first", "12"), "--fit-first 12",
                 "leaves no items")
    elif case == "fewshot_too_many":
        _refused(capsys, _eval(ws, "--num-fewshot", "2", "--fewshot-split", "test", "--limit", "1",
                               data=str(_write_jsonl(tmp_path / "one.jsonl", _mcqa_rows(1)))), "demonstrations")
    elif case == "fewshot_wrong_method":
        _refused(capsys, _eval(ws, "--method", "temperature", "--fit-first", "3", "--num-fewshot", "1"),
                 "--num-fewshot applies to the scoring method only")
    elif case == "labelled_without_fit":
        _refused(capsys, _eval(ws, "--method", "msp"), "msp learns from labelled items", "--fit-first N")
    elif case == "pairs_with_scoring":
        _refused(capsys, [*_eval(ws)[:3], "--data", f"pairs:{ws['pairs']}", "--out", str(root / "x")],
                 "--method token")


def test_eval_model_problems(ws, capsys, tmp_path):
    base = ["eval", "--data", f"mmlu:{ws['data']}", "--out", str(tmp_path / "o"), "--no-progress"]
    _refused(capsys, [*base, "--model", str(tmp_path / "missing")], "no such model folder")
    _refused(capsys, [*base, "--model", str(ws["root"] / "not-a-model")], "no config.json")
    _refused(capsys, [*base, "--model", ws["no_tok"]], "no tokenizer files")
    _refused(capsys, [*base, "--model", ws["model"], "--gguf-file", "nope.gguf"], "no GGUF file 'nope.gguf'")
    _refused(capsys, [*base, "--model", ws["model"], "--adapter", str(tmp_path)], "no adapter_config.json")


def test_eval_names_itself_once(ws, capsys):
    """Parser errors used to read 'catto eval: catto eval: ...'."""
    last = _refused(capsys, _eval(ws, "--limit", "x"), "--limit", "invalid int value")
    assert last == "catto eval: argument --limit: invalid int value: 'x'"
    last = _refused(capsys, _eval(ws, "--n-binz", "5"), "Did you mean --n-bins")
    assert last.startswith("catto eval: '--n-binz' is not an option.")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_eval_device_this_machine_lacks(ws, capsys, monkeypatch):
    import catto.core.modeling as modeling

    monkeypatch.setattr(modeling, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    last = _refused(capsys, _eval(ws, "--device", "cuda"), "--device cuda", "no CUDA device", "Fix: --device cpu")
    assert last.startswith("catto eval: --device cuda: this machine has no CUDA device")
    _refused(capsys, _eval(ws, "--device", "cuda:1"), "--device cuda:1", "no CUDA device")
    _refused(capsys, _eval(ws, "--device_map", "cuda:0"), "--device_map cuda:0", "Fix: --device_map cpu")


@pytest.mark.parametrize("flags,needles", [
    (["--device", "gpu7"], ["--device 'gpu7' is not a device", "Fix: auto, cpu, cuda or cuda:N"]),
    (["--device", "cpu", "--device_map", "auto"], ["--device cpu and --device_map auto", "Fix: keep one"]),
    (["--device_map", '{"": 0}'], ["--device_map", "give a strategy", "Fix: --device_map auto"]),
])
def test_eval_device_flags(ws, capsys, flags, needles):
    _refused(capsys, _eval(ws, *flags), *needles)


def _lora_folder(root, base):
    """A LoRA run folder as catto train writes it (adapter_config.json naming `base`, no config.json)."""
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": base}))
    return str(root)


def test_eval_lora_run_folder_problems(ws, capsys, tmp_path):
    base = ["eval", "--data", f"mmlu:{ws['data']}", "--out", str(tmp_path / "o"), "--no-progress"]
    gone = _lora_folder(tmp_path / "moved-run", str(tmp_path / "deleted-base-model"))
    _refused(capsys, [*base, "--model", gone], f"{gone}: a LoRA adapter whose base model is not here",
             "deleted-base-model", f"Fix: pass --model BASE --adapter {gone}")
    run = _lora_folder(tmp_path / "run", ws["model"])
    _refused(capsys, [*base, "--model", run, "--adapter", run], "is itself a LoRA adapter", "drop --adapter")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "adapter_config.json").write_text("{}")
    _refused(capsys, [*base, "--model", str(tmp_path / "bare")], "names no base model",
             f"--adapter {tmp_path / 'bare'}")


def test_eval_damaged_results_file_on_resume(ws, capsys, tmp_path, monkeypatch):
    """The file and line are named, before the model loads, and the file is left as it is."""
    out = tmp_path / "run"
    argv = [*_eval(ws)[:-6], "--out", str(out), "--bootstrap", "0", "--no-plots", "--no-progress"]
    assert main(argv) == 0
    results = out / "mmlu-data" / "results.jsonl"
    lines = results.read_text().splitlines()
    lines[1] = '{"id": "mmlu/test/toy/1", "option_probs": [0.25, '  # a line cut in the middle, not the last one
    results.write_text("\n".join(lines) + "\n")
    damaged = results.read_text()
    import catto.core.modeling as modeling

    monkeypatch.setattr(modeling, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    last = _refused(capsys, argv, f"{results}: line 2 is not a result record", "refusing to resume",
                    "Fix: delete the file")
    assert results.read_text() == damaged
    assert last.startswith("catto eval: ")


def test_results_file_damage_is_a_catto_error(tmp_path):
    """Met by a method itself (the Python API), the damaged line is a DataError too, not a plain ValueError."""
    from catto.errors import DataError
    from catto.eval.results import ResultsFile

    path = tmp_path / "results.jsonl"
    path.write_text('{"id": 1\n{"id": "b", "option_probs": [1.0], "prediction": 0, "confidence": 1.0, "gold": 0, '
                    '"correct": true}\n')
    with pytest.raises(DataError, match=r"line 1 is not a result record .*Fix: delete the file"):
        ResultsFile(path)


def test_eval_unwritable_out_fails_before_the_model(ws, capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    import catto.core.modeling as modeling

    monkeypatch.setattr(modeling, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    _refused(capsys, [*_eval(ws)[:-6], "--out", str(blocker / "sub"), "--no-progress"], "is not writable",
             str(blocker / "sub"))


def test_eval_config_file_problems(ws, capsys, tmp_path):
    _refused(capsys, ["eval", "--config", str(tmp_path / "none.yaml")], "no such file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    _refused(capsys, ["eval", "--config", str(bad)], "not valid YAML")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    _refused(capsys, ["eval", "--config", str(listy)], "a YAML mapping")


def test_eval_saved_evaluator_problems(ws, capsys, tmp_path):
    _refused(capsys, _eval(ws, "--method", "temperature", "--load-evaluator", str(tmp_path)),
             "not a saved catto evaluator")
    out = tmp_path / "temp"
    assert main([*_eval(ws)[:-6], "--out", str(out), "--method", "temperature", "--fit-first", "4",
                 "--no-progress", "--no-plots", "--bootstrap", "0"]) == 0
    saved = out / "mmlu-data" / "evaluator"
    _refused(capsys, _eval(ws, "--method", "msp", "--load-evaluator", str(saved)), "holds a 'temperature'",
             "--method temperature")


def test_token_method_pair_problems(ws, capsys, tmp_path):
    base = ["eval", "--method", "token", "--model", ws["model"], "--out", str(tmp_path / "o"), "--bootstrap", "0",
            "--no-progress", "--no-plots"]
    no_rejected = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "w1", "chosen": " w2", "loser": " w3"}])
    _refused(capsys, [*base, "--data", f"pairs:{no_rejected}"], "no 'rejected' column", "loser")
    empty = _write_jsonl(tmp_path / "b.jsonl", [{"prompt": "w1", "chosen": " ", "rejected": " w3"},
                                                {"prompt": "w1", "chosen": " w2", "rejected": " w3"}])
    _refused(capsys, [*base, "--data", f"pairs:{empty}", "--on-invalid", "raise"], "row 0", "'chosen' is empty")
    no_prompt = _write_jsonl(tmp_path / "c.jsonl", [{"chosen": "w1 w2", "rejected": "w3 w4"}])
    _refused(capsys, [*base, "--data", f"pairs:{no_prompt}"], "no valid pair", "share no beginning")
    broken = tmp_path / "d.jsonl"
    broken.write_text('{"prompt": "w1", "chosen": " w2", "rejected": " w3"}\n{"prompt": \n')
    _refused(capsys, [*base, "--data", f"pairs:{broken}"], str(broken), "could not read it")


# ----------------------------------------------------------------------------------------------------------------
# catto eval: resuming never mixes settings, and nothing is overwritten without --overwrite_output_dir


def test_eval_resume_refuses_other_settings_and_keeps_the_results(ws, capsys, tmp_path):
    out = tmp_path / "run"
    argv = [*_eval(ws)[:-6], "--out", str(out), "--bootstrap", "0", "--no-plots", "--no-progress", "--scoring",
            "letter"]
    assert main(argv) == 0
    results = out / "mmlu-data" / "results.jsonl"
    before = results.read_text()
    last = _refused(capsys, [*argv[:-1], "cloze"], "other config", '"cloze"', "--overwrite_output_dir")
    assert results.read_text() == before
    _refused(capsys, [*argv, "--dtype", "bfloat16"], "dtype")
    assert results.read_text() == before
    changed = _write_jsonl(tmp_path / "relabelled.jsonl", [{**r, "answer": (r["answer"] + 1) % 4}
                                                           for r in _mcqa_rows(12)])
    moved = [a if a != f"mmlu:{ws['data']}" else f"mmlu:{changed}" for a in argv]
    assert main(moved) == 0  # another file name: another folder, no conflict
    os.replace(ws["data"], str(ws["data"]) + ".orig")
    shutil.copy(changed, ws["data"])
    try:
        _refused(capsys, argv, "data_fingerprint")  # the same file name, other gold labels
        assert results.read_text() == before
    finally:
        os.replace(str(ws["data"]) + ".orig", ws["data"])
    # asked to, it starts over
    assert main([*argv[:-1], "cloze", "--overwrite_output_dir"]) == 0
    assert results.read_text() != before and "cloze" in (results.parent / "settings.json").read_text()
    assert "letter" in last
    # the old spelling still does, for one release, with one line naming the new one
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 0
    assert results.read_text() == before and "letter" in (results.parent / "settings.json").read_text()
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "deprecated" in x]
    assert "--overwrite is deprecated" in line and "--overwrite_output_dir" in line


# ----------------------------------------------------------------------------------------------------------------
# catto report


@pytest.mark.parametrize("flags,needles", [
    (["--methods", ","], ["--methods is empty"]),
    (["--methods", "scoring,scoring"], ["twice"]),
    (["--methods", "scoring", "--set", "x=1"], ["METHOD.FIELD=VALUE"]),
    (["--methods", "temperature", "--fit-first", "3", "--set", "temperature.nope=1"], ["no config field", "nope"]),
    (["--methods", "scoring", "--set", "coral.epochs=2"], ["'coral'", "not among --methods"]),
    (["--methods", "scoring", "--load", "a=/no/such/folder"], ["--load a=/no/such/folder", "no such folder"]),
    (["--methods", "scoring", "--load", "noequals"], ["NAME=DIR"]),
    (["--methods", "temperature"], ["temperature learns from labelled items", "--load NAME=DIR"]),
    (["--methods", "scoring", "--load-evaluator", "x"], ["--load NAME=DIR"]),
    (["--methods", "nope"], ["Unknown method 'nope'"]),
    (["--methods", "scoring", "--eval-batch-size", "0"], ["--eval_batch_size"]),
])
def test_report_flags(ws, capsys, tmp_path, flags, needles):
    _refused(capsys, ["report", "--model", ws["model"], "--data", f"mmlu:{ws['data']}", "--out", str(tmp_path),
                      "--no-progress", "--bootstrap", "0", *flags], *needles)


# ----------------------------------------------------------------------------------------------------------------
# catto train: everything checked before accelerate launch starts


def _train(ws, out, *extra):
    return ["train", "--config", str(ws["root"] / "recipe.yaml"), "--output_dir", str(out), *extra]


@pytest.fixture()
def no_launch(monkeypatch):
    """A launch that got past the checks would start accelerate: fail the test instead."""
    import catto.train.launcher as launcher

    monkeypatch.setattr(launcher, "run_holding_back_tracebacks", lambda *a, **k: pytest.fail("launched"))


@pytest.mark.parametrize("flags,needles", [
    (["--catto_alpah", "0.1"], ["'catto_alpah'", "Did you mean 'catto_alpha'"]),
    (["--catto_alpha", "-1"], ["catto_alpha", ">= 0"]),
    (["--accelerate_config", "zero9"], ["zero9", "neither a file nor one of catto's configs"]),
    (["--model_name_or_path", "/no/such/model"], ["model_name_or_path", "/no/such/model"]),
    (["--dataset_name", "/no/such/pairs.jsonl"], ["/no/such/pairs.jsonl", "no such file"]),
    (["--on_invalid", "ignore"], ["on_invalid", "'skip', 'raise'"]),
    (["--dataset_streaming", "true"], ["dataset_streaming"]),
    (["--resume_from_checkpoint", "/no/such/checkpoint-3"], ["/no/such/checkpoint-3", "no such folder"]),
    (["--resume_from_checkpoint", "true"], ["resume_from_checkpoint: true", "no checkpoint-N"]),
    (["--use_peft", "true", "--lora_target_modules", "q_proj", "lm_head"],
     ["lora_target_modules", "'lm_head'", "never train", "lora_modules_to_save"]),
    # a GPU recipe's bf16 on a machine without one: transformers' own check, as one line with the CPU fix
    (["--use_cpu", "false", "--bf16", "true"], ["training arguments were refused", "bf16",
                                                "--use_cpu true --bf16 false"]),
])
def test_train_flags(ws, capsys, tmp_path, no_launch, flags, needles):
    _refused(capsys, _train(ws, tmp_path / "run", *flags), *needles)


def test_train_recipe_with_a_yaml_syntax_error(ws, capsys, tmp_path, no_launch):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(f"model_name_or_path: {ws['model']}\nlora_target_modules: [q_proj, v_proj\nmax_steps: 2\n")
    last = _refused(capsys, ["train", "--config", str(recipe)], f"recipe {recipe}: line 3, column 10: not valid YAML",
                    "Fix: one `key: value` per line")
    assert last.startswith("catto train: recipe ")


def test_train_output_dir_that_cannot_be_written(ws, capsys, tmp_path, no_launch):
    """Refused in the launching process: the job would fail with a traceback, then the launcher with its
    CalledProcessError."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "run"
    _refused(capsys, _train(ws, out), f"output_dir '{out}' cannot be written", "Fix: pass an --output_dir you can "
             "write to")
    from catto.train import script  # the training script itself (python -m catto.train) says the same

    assert script.run(["--config", str(ws["root"] / "recipe.yaml"), "--output_dir", str(out)]) == 2
    assert "cannot be written" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("flags,needles", [
    (["--num_processes", "0"], ["--num_processes '0'", "a whole number of processes >= 1", "Fix: e.g. "
                                                                                            "--num_processes 1"]),
    (["--num_processes", "two"], ["--num_processes 'two'"]),
    (["--num_processes=-2"], ["--num_processes '-2'"]),
    (["--main_process_port", "70000"], ["--main_process_port '70000'", "1 to 65535"]),
])
def test_train_launch_flags(ws, capsys, tmp_path, no_launch, flags, needles):
    _refused(capsys, _train(ws, tmp_path / "run", *flags), *needles)


@pytest.mark.parametrize("rows,needles", [
    # one text starts the other: TRL would take 'w1 w' as the prompt and train on '2'
    ([{"chosen": "w1 w2", "rejected": "w1 w2 w3"}] * 2, ["no valid pair", "which TRL takes as the prompt ('w1 w')",
                                                         "ends inside a word"]),
    # only rejected goes on inside the word ('.' after it in chosen)
    ([{"chosen": "w1 w.", "rejected": "w1 w2"}] * 2, ["ends inside a word", "rejected '2'"]),
])
def test_train_promptless_pairs_sharing_part_of_a_word(ws, capsys, tmp_path, no_launch, rows, needles):
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    last = _refused(capsys, _train(ws, tmp_path / "run", "--dataset_name", str(path)), str(path), *needles)
    assert "Fix: add a 'prompt' column" in last


def test_promptless_pairs_that_end_between_words_still_train(ws, tmp_path):
    from catto.data.preference import row_problem

    assert row_problem({"chosen": "w1 w2 w3", "rejected": "w1 w2 v3"}, has_prompt=False) is None
    assert row_problem({"chosen": "2 + 2 = 4", "rejected": "2 + 2 = 5"}, has_prompt=False) is None


def test_train_model_without_tokenizer(ws, capsys, tmp_path, no_launch):
    _refused(capsys, _train(ws, tmp_path / "run", "--model_name_or_path", ws["no_tok"]), "no tokenizer files",
             ws["no_tok"])


@pytest.mark.parametrize("rows,flags,needles", [
    ([{"prompt": "w1", "chosen": "", "rejected": " w3"}], ["--on_invalid", "raise"], ["row 0", "'chosen' is empty"]),
    ([{"chosen": "w1 w2", "rejected": "w3 w4"}] * 2, [], ["no valid pair", "share no beginning"]),
    ([{"prompt": "w1", "chosen": 3, "rejected": " w3"}], ["--on_invalid", "raise"], ["'chosen' is a int"]),
    ([{"prompt": "w1", "chosen": " w2", "rejected": " w2"}], ["--on_invalid", "raise"], ["equals chosen"]),
])
def test_train_invalid_pairs(ws, capsys, tmp_path, no_launch, rows, flags, needles):
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    _refused(capsys, _train(ws, tmp_path / "run", "--dataset_name", str(path), *flags), str(path), *needles)


def test_train_bad_jsonl_names_the_file(ws, capsys, tmp_path, no_launch):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "w1", "chosen": " w2", "rejected": " w3"}\n{"prompt": "w1", \n')
    _refused(capsys, _train(ws, tmp_path / "run", "--dataset_name", str(path)), str(path), "could not read")


def _finished_run(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "trainer_state.json").write_text('{"log_history": []}')
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_train_refuses_to_overwrite_a_finished_run(ws, capsys, tmp_path, no_launch):
    out = tmp_path / "done"
    before = _finished_run(out)
    _refused(capsys, _train(ws, out), "holds a finished run", "--overwrite_output_dir true")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    from catto.train.launcher import build_launch_command

    assert "catto.train" in build_launch_command(_train(ws, out, "--overwrite_output_dir", "true")[1:])


def _checkpoint(folder, settings=None):
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": []}))
    save_file({"w": torch.ones(64)}, str(folder / "adapter_model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.zeros(64)}}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"last_epoch": 2}, folder / "scheduler.pt")
    if settings is not None:
        (folder.parent / "catto_train_settings.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize("damage,needles", [
    ("trainer_state.json", ["trainer_state.json is damaged"]),
    ("adapter_model.safetensors", ["adapter_model.safetensors"]),
    ("optimizer.pt", ["optimizer.pt is damaged"]),
    ("scheduler.pt-missing", ["scheduler.pt: missing"]),
])
def test_train_names_the_damaged_checkpoint_file(ws, capsys, tmp_path, no_launch, damage, needles):
    checkpoint = _checkpoint(tmp_path / "run" / "checkpoint-2")
    if damage.endswith("-missing"):
        os.remove(checkpoint / damage.removesuffix("-missing"))
    else:
        data = (checkpoint / damage).read_bytes()
        (checkpoint / damage).write_bytes(data[: len(data) // 2])
    _refused(capsys, _train(ws, tmp_path / "run", "--resume_from_checkpoint", str(checkpoint)), *needles)


def test_train_resume_with_other_settings_is_refused(ws, capsys, tmp_path, no_launch):
    from catto.train.checks import trained_settings
    from catto.train.script import parse_args

    out = tmp_path / "run"
    settings = trained_settings(*parse_args(_train(ws, out)[1:]))
    checkpoint = _checkpoint(out / "checkpoint-2", settings)
    _refused(capsys, _train(ws, out, "--resume_from_checkpoint", str(checkpoint), "--catto_alpha", "0.5"),
             "catto_alpha (0.3 there, 0.5 now)", "new --output_dir")
    from catto.train.launcher import build_launch_command  # the same settings resume

    assert "catto.train" in build_launch_command(_train(ws, out, "--resume_from_checkpoint", str(checkpoint))[1:])
    # and a folder with checkpoints is not trained over without resuming them
    _refused(capsys, _train(ws, out), "checkpoints", f"--resume_from_checkpoint {checkpoint}")


def test_train_resume_from_a_checkpoint_copied_away_from_its_run(ws, capsys, tmp_path, no_launch):
    """The settings travel in the checkpoint folder itself (catto train writes them into every checkpoint), so a
    checkpoint copied away from its run, where no run folder holds them, is still compared."""
    from catto.train.checks import trained_settings
    from catto.train.launcher import build_launch_command
    from catto.train.script import parse_args

    settings = trained_settings(*parse_args(_train(ws, tmp_path / "run")[1:]))
    copied = _checkpoint(tmp_path / "elsewhere" / "checkpoint-2")
    (copied / "catto_train_settings.json").write_text(json.dumps(settings))
    assert not (copied.parent / "catto_train_settings.json").exists()
    argv = _train(ws, tmp_path / "new", "--resume_from_checkpoint", str(copied), "--catto_alpha", "0.5")
    last = _refused(capsys, argv, "catto_alpha (0.3 there, 0.5 now)", str(copied / "catto_train_settings.json"),
                    "new --output_dir")
    assert last.startswith(f"catto train: resume_from_checkpoint '{copied}' was trained with other settings")
    assert "catto.train" in build_launch_command(_train(ws, tmp_path / "new", "--resume_from_checkpoint",
                                                        str(copied))[1:])


def test_train_resume_from_a_checkpoint_without_settings_warns_in_one_line(ws, capsys, tmp_path, no_launch):
    """A checkpoint of an older catto (or of TRL) copied away: nothing to compare; said in one line, not refused."""
    from catto.train.launcher import build_launch_command

    bare = _checkpoint(tmp_path / "elsewhere" / "checkpoint-2")
    assert "catto.train" in build_launch_command(_train(ws, tmp_path / "new", "--resume_from_checkpoint",
                                                        str(bare))[1:])
    lines = [x for x in capsys.readouterr().err.splitlines() if "catto_train_settings.json" in x]
    assert len(lines) == 1 and "cannot check that this resume keeps the run's settings" in lines[0]


def test_a_job_error_is_the_commands_last_line(capsys, tmp_path):
    """After a failure inside the launched job, its catto message ends the output, not the launcher's traceback."""
    from catto.train.launcher import run_holding_back_tracebacks

    error_file = tmp_path / "error.txt"
    code = ("import os, sys; open(os.environ['CATTO_ERROR_FILE'], 'w').write('catto train: data changed. Fix: x'); "
            "print('step 1', file=sys.stderr); print('Traceback (most recent call last):', file=sys.stderr); "
            "print('  launcher noise', file=sys.stderr); sys.exit(1)")
    status = run_holding_back_tracebacks([sys.executable, "-c", code], {**os.environ,
                                                                        "CATTO_ERROR_FILE": str(error_file)},
                                         str(error_file))
    err = capsys.readouterr().err
    assert status == 1 and "step 1" in err and "Traceback" not in err and "launcher noise" not in err
    # without a catto message the traceback is the only explanation: it is shown
    code = "import sys; print('Traceback (most recent call last):', file=sys.stderr); sys.exit(1)"
    run_holding_back_tracebacks([sys.executable, "-c", code], dict(os.environ), str(tmp_path / "none.txt"))
    assert "Traceback" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# catto demo and the Python API


@pytest.mark.parametrize("flags,needles", [
    (["--catto_alpha", "0"], ["--catto_alpha must be > 0"]),
    (["--alpha", "0"], ["--catto_alpha must be > 0"]),  # the deprecated spelling: the same check, the new name
    (["--eval-items", "0"], ["--eval-items"]),
    (["--noise", "1.5", "--synthetic"], ["--noise"]),
    (["--device", "tpu"], ["--device", "invalid choice"]),
])
def test_demo_flags(capsys, tmp_path, flags, needles):
    _refused(capsys, ["demo", "--out", str(tmp_path), "--no-download", *flags], *needles)


def test_python_api_errors_are_catto_errors_and_builtin_ones():
    from catto import CATTOConfig
    from catto.data import load_mcqa
    from catto.pipeline.runner import EvalArguments
    from catto.eval.token import TokenEvalConfig
    from catto.methods import load_evaluator

    with pytest.raises(ConfigError, match="catto_alpha"):
        CATTOConfig("out", catto_alpha=-1.0, bf16=False)
    with pytest.raises(ValueError, match="catto_alpha"):  # also a ValueError, for code that catches those
        CATTOConfig("out", catto_alpha=-1.0, bf16=False)
    with pytest.raises(CattoError, match="Data spec must be a non-empty string"):
        load_mcqa("")
    with pytest.raises(ConfigError, match="--limit"):
        EvalArguments(model="m", data=["d"], out="o", limit=0)
    with pytest.raises(ValueError, match="max_length"):
        TokenEvalConfig(max_length=1)
    with pytest.raises(ConfigError, match="not a saved catto evaluator"):
        load_evaluator("/no/such/folder")
    with pytest.raises(FileNotFoundError):  # a missing data file is a FileNotFoundError too
        load_mcqa("mmlu:/no/such/file.jsonl")
