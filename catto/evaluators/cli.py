"""`catto eval --method NAME` for every registered post-hoc evaluator.

The evaluator's config dataclass becomes command-line options (`--field-name`, typed from the annotations, help from
the field's `metadata["help"]`); a field whose name is one of `catto eval`'s shared options (`scoring`,
`batch_size`, `seed`, ...) takes that option's value instead of getting a second flag. Where the fitted state comes
from is one of:

- `--fit-data SPEC [--fit-split S] [--fit-limit N]`: fit once on another labelled dataset, evaluate every `--data`
  (the transfer setting: a CORAL probe or a temperature fitted on one dataset, applied to others);
- `--fit-first N`: per `--data` spec, fit on its first N items and evaluate on the rest (the MSP paper's protocol:
  a threshold chosen on 20 labelled questions);
- `--load-evaluator DIR`: a saved evaluator (`Evaluator.save`), no fitting;
- nothing, for label-free methods (`needs_labels = False`), which are evaluated as they are.

`--stream` joins the `--data` specs, in order, into one dataset "stream" (a shift for streaming methods like SECL).

A fitted evaluator is saved next to the results (`<out>/evaluator/` or `<out>/<dataset>/evaluator/`). A config field
named `checkpoint_dir` left unset is pointed at `<out>/<dataset>/state`, so streaming methods resume there.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from typing import Any

from ..results import write_json_atomic, write_results_jsonl
from . import get_evaluator_class, load_evaluator


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return tp, False


def _add_field(group, field: dataclasses.Field, tp: Any) -> None:
    tp, optional = _unwrap_optional(tp)
    help_text = field.metadata.get("help", "")
    default = field.default if field.default is not dataclasses.MISSING else (
        field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
    kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": f"{help_text} (default: {default})"}
    origin = typing.get_origin(tp)
    if tp is bool:
        group.add_argument(_option(field.name), action=argparse.BooleanOptionalAction, **kwargs)
        return
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        kwargs.update(nargs="+", type=inner if inner in (int, float, str) else str)
    elif tp in (int, float, str):
        kwargs["type"] = tp
    else:
        kwargs["type"] = str
    if optional:  # `--x none` unsets an optional field
        base = kwargs.get("type", str)
        kwargs["type"] = lambda v, base=base: None if v.lower() == "none" else base(v)
    if "choices" in field.metadata:
        kwargs["choices"] = field.metadata["choices"]
    group.add_argument(_option(field.name), **kwargs)


def add_eval_arguments(group, method: str) -> None:
    """The evaluator's config fields plus where its fitted state comes from."""
    cls = get_evaluator_class(method)
    hints = typing.get_type_hints(cls.config_class)
    shared = {action.dest for action in group._actions}
    for field in dataclasses.fields(cls.config_class):
        if field.init and field.name not in shared:
            _add_field(group, field, hints[field.name])
    group.add_argument("--fit-data", default=None,
                       help="Labelled dataset spec to fit on once; every --data is then evaluated with that fit.")
    group.add_argument("--fit-split", default=None, help="Split of --fit-data (default: its training split).")
    group.add_argument("--fit-limit", type=int, default=None, help="Use only the first N items of --fit-data.")
    group.add_argument("--fit-first", type=int, default=None,
                       help="Fit on the first N items of each --data spec and evaluate on the rest.")
    group.add_argument("--load-evaluator", default=None, help="Folder of a saved evaluator to use instead of fitting.")
    group.add_argument("--stream", action="store_true",
                       help="Evaluate the --data specs as one stream, in the order given (a distribution shift for "
                            "streaming methods such as SECL), reported as one dataset named 'stream'.")


def _config(cls, args: argparse.Namespace):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls.config_class)
              if f.init and hasattr(args, f.name)}
    return cls.config_class(**values)


def _fit_source_error(method: str) -> SystemExit:
    return SystemExit(f"catto eval --method {method} learns from labelled items: pass --fit-data SPEC (fit on another "
                      "dataset), --fit-first N (fit on the first N items of each --data) or --load-evaluator DIR.")


def run_eval_method(args: argparse.Namespace) -> dict:
    """Fit (or load) the evaluator, evaluate each `--data` spec, write results.jsonl, metrics.json and plots."""
    from ..cli import eval_run_record, load_eval_datasets, load_eval_model, write_eval_plots
    from ..data import load_mcqa
    from ..evaluation import format_table, summarize_results

    cls = get_evaluator_class(args.method)
    config = _config(cls, args)
    sources = [x for x in (args.fit_data, args.fit_first, args.load_evaluator) if x is not None]
    if len(sources) > 1:
        raise SystemExit("catto eval: give at most one of --fit-data, --fit-first and --load-evaluator.")
    if not sources and cls.needs_labels:
        raise _fit_source_error(args.method)
    if args.fit_first is not None and args.fit_first < 1:
        raise SystemExit(f"catto eval: --fit-first must be >= 1, got {args.fit_first}.")
    datasets = load_eval_datasets(args)
    if args.stream:
        from ..cli import EvalDataset

        parts = list(datasets.values())
        # ids are only unique within a dataset: prefix each with its dataset's name
        joined = [dataclasses.replace(it, id=f"{d.name}:{it.id}") for d in parts for it in d.items]
        datasets = {"stream": EvalDataset("stream", " -> ".join(d.spec for d in parts), joined, [],
                                          [s for d in parts for s in d.skipped])}
    fit_items = None
    if args.fit_data:
        fit_items = list(load_mcqa(args.fit_data, split=args.fit_split, limit=args.fit_limit, seed=args.seed,
                                   on_invalid=args.on_invalid))
    model, tokenizer = load_eval_model(args)

    shared = None
    if args.load_evaluator:
        shared = load_evaluator(args.load_evaluator)
        if shared.name != args.method:
            raise SystemExit(f"catto eval: {args.load_evaluator} holds a {shared.name!r} evaluator, not "
                             f"{args.method!r}; pass --method {shared.name}.")
    elif fit_items is not None:
        shared = cls(config).fit(model, tokenizer, fit_items)
        shared.save(os.path.join(args.out, "evaluator"))

    summaries, report = {}, {}
    for name, ds in datasets.items():
        folder = os.path.join(args.out, name)
        items, fit_ids = ds.items, []
        if shared is not None:
            evaluator = shared
        else:
            ds_config = config
            if "checkpoint_dir" in {f.name for f in dataclasses.fields(config)} and config.checkpoint_dir is None:
                ds_config = dataclasses.replace(config, checkpoint_dir=os.path.join(folder, "state"))
            evaluator = cls(ds_config)
            if args.fit_first is not None:
                if args.fit_first >= len(items):
                    raise SystemExit(f"catto eval: --fit-first {args.fit_first} leaves no items of {ds.spec} "
                                     f"({len(items)}) to evaluate.")
                fit_part, items = items[: args.fit_first], items[args.fit_first:]
                fit_ids = [it.id for it in fit_part]
                evaluator.fit(model, tokenizer, fit_part)
                evaluator.save(os.path.join(folder, "evaluator"))
        results = evaluator.evaluate(model, tokenizer, items)
        if len(results) != len(items):
            raise RuntimeError(f"{args.method}.evaluate returned {len(results)} results for {len(items)} items.")
        write_results_jsonl(os.path.join(folder, "results.jsonl"), results)
        labelled = [r for r in results if r.gold is not None]
        summary = summarize_results(results, n_bins=args.n_bins, binning=args.binning,
                                    n_resamples=args.bootstrap, seed=args.seed) if labelled else {"n": 0}
        curves = {args.method: ([r.confidence for r in labelled], [r.prediction is not None and bool(r.correct)
                                                                   for r in labelled])}
        plots = write_eval_plots(args, folder, curves, name) if labelled else {}
        summaries[name] = summary
        report[name] = {"spec": ds.spec, "n_items": len(items), "fit_ids": fit_ids, "skipped_rows": ds.skipped,
                        "results": os.path.join(folder, "results.jsonl"), "plots": plots, "metrics": summary,
                        "method_metrics": evaluator.summarize(labelled) if labelled else {},
                        "evaluator": evaluator.describe()}
    payload = {**eval_run_record(args), "fit": {"data": args.fit_data, "split": args.fit_split,
                                                "limit": args.fit_limit, "first": args.fit_first,
                                                "loaded": args.load_evaluator},
               "datasets": report}
    write_json_atomic(os.path.join(args.out, "metrics.json"), payload)
    if any(s.get("n") for s in summaries.values()):
        print(format_table({k: v for k, v in summaries.items() if v.get("n")}))
    print(f"\nWrote {os.path.join(args.out, 'metrics.json')}", file=sys.stdout)
    return payload
