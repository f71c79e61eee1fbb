"""One name and one default per thing across `catto train`, `catto eval`, `catto report` and `catto demo`: each
renamed flag works under its new name, and its old spelling still works for one release, printing one line that
names the old flag, the new one and that the old one goes in the next release. Plus the shared defaults (model dtype
"auto" for evaluation, 15 ECE bins)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from catto.cli.demo import build_parser as demo_parser
from catto.cli.eval import build_parser as eval_parser
from catto.cli.report import build_parser as report_parser

BASE = ["--model", "m", "--data", "d", "--out", "o"]


def _deprecation_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "deprecated" in line]


def _assert_one_deprecation_line(capsys, old: str, new: str) -> None:
    lines = _deprecation_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert f"{old} is deprecated" in lines[0] and f"use {new} instead" in lines[0], lines[0]
    assert "removed in the next release" in lines[0], lines[0]


# ----------------------------------------------------------------------------------------------------------------
# catto demo: --catto_alpha, --per_device_train_batch_size, --overwrite_output_dir


@pytest.mark.parametrize("new,old,value,field,expected", [
    ("--catto_alpha", "--alpha", "0.5", "catto_alpha", 0.5),
    ("--per_device_train_batch_size", "--batch_size", "4", "per_device_train_batch_size", 4),
    ("--per-device-train-batch-size", "--batch-size", "4", "per_device_train_batch_size", 4),
    ("--overwrite_output_dir", "--overwrite", None, "overwrite_output_dir", True),
])
def test_demo_renamed_flags(capsys, new, old, value, field, expected):
    extra = [value] if value is not None else []
    (args,) = demo_parser().parse([new, *extra])
    assert getattr(args, field) == expected
    assert not _deprecation_lines(capsys.readouterr().err)
    (args,) = demo_parser().parse([old, *extra])
    assert getattr(args, field) == expected
    _assert_one_deprecation_line(capsys, old, new)


def test_demo_names_match_catto_train():
    """The demo's training options are catto train's (CATTOConfig / TRL) names; its scoring batch is eval's."""
    from catto.pipeline.demo import DemoArguments
    from catto.train.config import CATTOConfig

    demo = {f.name for f in dataclasses.fields(DemoArguments)}
    train = {f.name for f in dataclasses.fields(CATTOConfig)}
    assert {"catto_alpha", "per_device_train_batch_size", "overwrite_output_dir", "eval_batch_size"} <= demo
    assert {"catto_alpha", "per_device_train_batch_size"} <= train
    assert not {"alpha", "batch_size", "overwrite"} & demo


def test_demo_alpha_errors_name_the_new_flag(capsys):
    from catto.errors import ConfigError

    for flag in ("--catto_alpha", "--alpha"):
        with pytest.raises(ConfigError, match=r"--catto_alpha must be > 0"):
            demo_parser().parse([flag, "0"])


# ----------------------------------------------------------------------------------------------------------------
# catto eval / catto report: --eval_batch_size (the scoring batch) and --overwrite_output_dir


@pytest.mark.parametrize("method", ["scoring", "temperature", "msp", "coral", "token", "confidence_at_k"])
@pytest.mark.parametrize("new,old", [("--eval_batch_size", "--batch_size"), ("--eval-batch-size", "--batch-size")])
def test_eval_batch_size_flag(capsys, method, new, old):
    _, config = eval_parser(method).parse([*BASE, new, "3"])
    assert config.batch_size == 3  # the method config's field keeps its name (catto.methods.base.EVAL_BATCH_SIZE_FLAG)
    assert not _deprecation_lines(capsys.readouterr().err)
    _, config = eval_parser(method).parse([*BASE, old, "5"])
    assert config.batch_size == 5
    _assert_one_deprecation_line(capsys, old, new)


@pytest.mark.parametrize("command", ["eval", "report"])
def test_overwrite_output_dir_flag(capsys, command):
    parser = eval_parser() if command == "eval" else report_parser()
    args = parser.parse([*BASE, "--overwrite_output_dir"])[0]
    assert args.overwrite is True and not _deprecation_lines(capsys.readouterr().err)
    assert parser.parse([*BASE, "--overwrite-output-dir", "false"])[0].overwrite is False
    args = parser.parse([*BASE, "--overwrite"])[0]
    assert args.overwrite is True
    _assert_one_deprecation_line(capsys, "--overwrite", "--overwrite_output_dir")


@pytest.mark.parametrize("new,old", [("--eval_batch_size", "--batch_size"), ("--eval-batch-size", "--batch-size")])
def test_report_eval_batch_size_reaches_every_method(capsys, new, old):
    from catto.methods import get_method_class
    from catto.pipeline.report import method_config

    _, report = report_parser().parse([*BASE, new, "3"])
    assert report.batch_size == 3 and not _deprecation_lines(capsys.readouterr().err)
    _, report = report_parser().parse([*BASE, old, "5"])
    assert report.batch_size == 5
    _assert_one_deprecation_line(capsys, old, new)
    for name in ("scoring", "temperature", "coral", "token", "confidence_at_k"):
        assert method_config(get_method_class(name), report, 0, {}).batch_size == 5


def _listed(text: str, flag: str) -> bool:
    """Whether `--help` lists `flag` as an option (in the usage line or at the start of an option's entry)."""
    return f"[{flag} " in text or f"[{flag}]" in text or re.search(rf"^  {re.escape(flag)}[ ,\n]", text, re.M) \
        is not None


def test_help_lists_the_new_names_only():
    text = eval_parser("scoring").format_help()
    assert _listed(text, "--eval_batch_size") and _listed(text, "--overwrite_output_dir")
    assert not any(_listed(text, old) for old in ("--batch_size", "--batch-size", "--overwrite"))
    assert "Formerly --batch_size / --batch-size, deprecated" in " ".join(text.split())
    demo = demo_parser().format_help()
    assert _listed(demo, "--catto_alpha") and _listed(demo, "--per_device_train_batch_size")
    assert not any(_listed(demo, old) for old in ("--alpha", "--batch_size", "--overwrite"))


def test_unknown_flag_suggests_the_new_name():
    from catto.errors import ConfigError

    with pytest.raises(ConfigError, match="Did you mean --eval-batch-size"):
        eval_parser().parse([*BASE, "--eval_batch_sise", "3"])


def test_config_file_keys_new_and_deprecated(tmp_path, capsys):
    new = tmp_path / "new.yaml"
    new.write_text("model: m\ndata: [d]\nout: o\neval_batch_size: 3\noverwrite_output_dir: true\n")
    args, config = eval_parser().parse(["--config", str(new)])
    assert config.batch_size == 3 and args.overwrite is True
    assert not _deprecation_lines(capsys.readouterr().err)
    old = tmp_path / "old.yaml"
    old.write_text("model: m\ndata: [d]\nout: o\nbatch_size: 3\noverwrite: true\n")
    args, config = eval_parser().parse(["--config", str(old)])
    assert config.batch_size == 3 and args.overwrite is True
    lines = _deprecation_lines(capsys.readouterr().err)
    assert len(lines) == 2 and "batch_size is deprecated" in lines[0] and "use eval_batch_size" in lines[0]
    assert "overwrite is deprecated" in lines[1] and "use overwrite_output_dir" in lines[1]
    assert all(str(old) in line and "removed in the next release" in line for line in lines)


def test_deprecated_flag_through_the_console(capsys, tmp_path):
    """`catto demo --alpha 0` (old name, refused value): the deprecation line, then the error naming --catto_alpha."""
    from catto.cli import main

    assert main(["demo", "--out", str(tmp_path), "--no-download", "--alpha", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--alpha is deprecated" in err[0] and "--catto_alpha" in err[0]
    assert "--catto_alpha must be > 0" in err[-1]


# ----------------------------------------------------------------------------------------------------------------
# defaults


def test_eval_dtype_defaults_to_auto():
    from catto.pipeline.runner import EvalArguments

    assert EvalArguments(model="m", data=["d"], out="o").dtype == "auto"
    assert eval_parser().parse(BASE)[0].dtype == "auto"
    assert report_parser().parse(BASE)[0].dtype == "auto"
    assert eval_parser().parse([*BASE, "--dtype", "float32"])[0].dtype == "float32"


def test_train_dtype_defaults_to_auto_too():
    """`catto train` loads the model as `catto eval` does: the checkpoint's own dtype unless a dtype is given (TRL's
    ModelConfig defaults to float32)."""
    from catto.train.script import parse_args

    argv = ["--model_name_or_path", "m", "--output_dir", "o", "--mcqa_data", "arc_easy", "--use_cpu", "true",
            "--bf16", "false"]
    assert parse_args(argv)[2].dtype == "auto"
    assert parse_args([*argv, "--dtype", "float32"])[2].dtype == "float32"


@pytest.mark.parametrize("saved", [torch.float32, torch.bfloat16])
def test_load_model_auto_is_the_checkpoints_dtype(tmp_path, saved):
    from catto.core.modeling import load_model_and_tokenizer
    from catto.data.synthetic import MCQA_VOCAB, make_model, make_tokenizer

    make_model(vocab_size=len(MCQA_VOCAB)).to(saved).save_pretrained(tmp_path)
    make_tokenizer(MCQA_VOCAB).save_pretrained(tmp_path)
    model, _ = load_model_and_tokenizer(str(tmp_path), device="cpu")  # the default: "auto"
    assert next(model.parameters()).dtype == saved
    model, _ = load_model_and_tokenizer(str(tmp_path), dtype="float32", device="cpu")
    assert next(model.parameters()).dtype == torch.float32


def test_gguf_conversion_records_float32(tmp_path, monkeypatch):
    """The demo's model folder (SmolLM2 converted from GGUF) loads in float32 under dtype "auto": the folder's
    config.json records float32 even if the loaded GGUF model's config says otherwise."""
    import transformers

    from catto.core.modeling import gguf_to_hf_folder, load_model_and_tokenizer
    from catto.data.synthetic import MCQA_VOCAB, make_model, make_tokenizer

    def fake_model(*args, **kwargs):
        assert kwargs.get("gguf_file") == "m.gguf"
        model = make_model(vocab_size=len(MCQA_VOCAB))
        model.config.dtype = torch.bfloat16  # a GGUF loader recording another dtype
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: make_tokenizer(MCQA_VOCAB))
    out = gguf_to_hf_folder(str(tmp_path / "gguf"), "m.gguf", str(tmp_path / "hf"))
    monkeypatch.undo()
    import json

    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "float32"
    model, _ = load_model_and_tokenizer(out, device="cpu")
    assert next(model.parameters()).dtype == torch.float32


def test_fifteen_ece_bins_everywhere():
    import inspect

    from catto.core.calibration import binned_calibration_counts
    from catto.pipeline.demo import DemoArguments
    from catto.pipeline.runner import EvalArguments
    from catto.train.callbacks import CalibrationEvalCallback
    from catto.train.config import CATTOConfig
    from catto.train.script import CATTOScriptArguments

    def default(cls, name):
        return {f.name: f.default for f in dataclasses.fields(cls)}[name]

    assert default(CATTOConfig, "catto_ece_bins") == 15
    assert default(EvalArguments, "n_bins") == default(DemoArguments, "n_bins") == 15
    assert default(CATTOScriptArguments, "calibration_eval_n_bins") == 15
    assert inspect.signature(binned_calibration_counts).parameters["n_bins"].default == 15
    assert inspect.signature(CalibrationEvalCallback).parameters["n_bins"].default == 15
    counts = binned_calibration_counts(torch.tensor([0.05, 0.5, 1.0]), torch.tensor([1.0, 0.0, 1.0]),
                                       torch.ones(3, dtype=torch.bool))
    assert counts.shape == (3, 15)


def test_scoring_batch_defaults_agree():
    """The scoring batch (items or option sequences per forward) is 16 in eval/report, the demo and catto train's
    calibration eval."""
    from catto.methods.base import ScoringFields
    from catto.pipeline.demo import DemoArguments
    from catto.pipeline.report import ReportArguments
    from catto.train.script import CATTOScriptArguments

    values = [{f.name: f.default for f in dataclasses.fields(cls)}[name] for cls, name in (
        (ScoringFields, "batch_size"), (ReportArguments, "batch_size"), (DemoArguments, "eval_batch_size"),
        (CATTOScriptArguments, "calibration_eval_batch_size"))]
    assert values == [16] * 4
