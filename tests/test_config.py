import dataclasses

import pytest
from trl import DPOConfig, TrlParser

from catto import CATTOConfig

BASE = dict(output_dir="out", bf16=False, report_to=[])


def test_defaults_and_dpo_fields_are_kept():
    cfg = CATTOConfig(**BASE, beta=0.2, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    assert isinstance(cfg, DPOConfig)
    assert cfg.beta == 0.2 and cfg.loss_type == ["sigmoid", "sft"]
    assert (cfg.catto_confidence, cfg.catto_margin, cfg.catto_loss_form, cfg.catto_sequences) == (
        "max", "logit", "l1", "both")
    assert cfg.catto_enabled and not CATTOConfig(**BASE, catto_alpha=0.0).catto_enabled


def test_every_catto_field_has_help_text():
    fields = [f for f in dataclasses.fields(CATTOConfig) if f.name.startswith("catto_")]
    assert len(fields) >= 9
    for f in fields:
        assert len(f.metadata.get("help", "")) > 20, f.name
        assert f.name in CATTOConfig.__doc__, f.name


@pytest.mark.parametrize("field,value,message", [
    ("catto_alpha", -0.1, r"catto_alpha.*>= 0"),
    ("catto_alpha", float("nan"), r"catto_alpha"),
    ("catto_confidence", "mean", r"catto_confidence.*\['max', 'label'\]"),
    ("catto_margin", "ratio", r"catto_margin.*\['prob', 'logit'\]"),
    ("catto_loss_form", "l3", r"catto_loss_form.*\['l1', 'bce', 'l2'\]"),
    ("catto_sequences", "rejected", r"catto_sequences.*\['both', 'chosen'\]"),
    ("catto_target_scale", 0.0, r"catto_target_scale.*> 0"),
    ("catto_chunk_size", 0, r"catto_chunk_size.*>= 1"),
    ("catto_ece_bins", 0, r"catto_ece_bins.*>= 1"),
])
def test_invalid_values_name_the_field_and_the_allowed_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        CATTOConfig(**BASE, **{field: value})


def test_trl_parser_reads_yaml_and_cli_overrides(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("output_dir: out\nbf16: false\ncatto_alpha: 0.3\ncatto_margin: prob\nbeta: 0.05\n")
    (cfg,) = TrlParser((CATTOConfig,)).parse_args_and_config(
        ["--config", str(recipe), "--catto_alpha", "0.7", "--catto_detach_target", "false"]
    )
    assert cfg.catto_alpha == 0.7 and cfg.catto_margin == "prob" and cfg.beta == 0.05
    assert cfg.catto_detach_target is False


def test_trl_parser_rejects_unknown_choice(tmp_path):
    with pytest.raises(SystemExit):
        TrlParser((CATTOConfig,)).parse_args_and_config(["--output_dir", "out", "--catto_margin", "ratio"])


@pytest.mark.parametrize("alpha,sharing,given,expected", [
    (0.1, False, None, True), (0.0, False, None, False), (0.0, True, None, True), (0.0, False, True, True),
    (0.3, True, False, False),
])
def test_metrics_are_logged_by_default_only_where_free(tmp_path, alpha, sharing, given, expected):
    """catto_alpha=0 without prefix sharing would pay an extra LM-head pass for the catto/* metrics: opt-in there."""
    config = CATTOConfig(output_dir=str(tmp_path), catto_alpha=alpha, prefix_sharing=sharing,
                         catto_log_metrics=given, bf16=False)
    assert config.catto_log_metrics is expected
