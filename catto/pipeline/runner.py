"""The one evaluation runner: data and model loading, where fitted state comes from, resuming, result files and the
run record. `catto eval`, `catto report`, `catto demo` and the benchmarks all go through it.

A run is `EvalArguments` (what to evaluate, on which model, with which metrics, into which folder) plus one or more
methods (`catto.methods`, each a class and its config). For every `--data` spec and every method the runner:

1. loads and validates the data (before the model: a bad spec fails in seconds), checks the output folder is
   writable, and refuses to reuse a folder whose results were made with other settings or data;
2. obtains the method's fitted state from one place: `--load-evaluator DIR` (or `catto report --load NAME=DIR`), a
   fit on `--fit-data SPEC` (once, for every data set: the transfer setting), a fit on the first `--fit-first N`
   items of each data set (evaluated on the rest), or none for methods that learn nothing;
3. evaluates (resumable methods append to `results.jsonl` batch by batch and skip what it holds), writes the
   per-item records atomically, summarises them (`catto.eval.aggregate.summarize_results` for MCQA answers, plus the
   method's own `summarize`), draws the plots, and returns everything with the settings that produced it.

Where results go is the caller's choice (`folder_of(method, dataset)`): `catto eval` writes `<out>/<dataset>/`,
`catto report` `<out>/<method>/<dataset>/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._logging import get_logger
from ..errors import ConfigError, DataError, ResumeMismatchError
from ..io import check_writable, write_json_atomic

logger = get_logger(__name__)

SETTINGS_FILE = "settings.json"


@dataclass
class EvalArguments:
    """What every `catto eval` / `catto report` run shares: model, data, metrics, output, and where fitted state
    comes from. Each field is a command-line flag (`--n_bins` or `--n-bins`) and a key of `--config eval.yaml`."""

    model: str = field(default=None, metadata={
        "help": "Hub id or local folder of a causal LM, or the output folder of a catto train run (a LoRA run loads "
                "its base model, named by its adapter_config.json or its recorded settings, with the adapter on "
                "top) (required)."})
    data: list[str] = field(default_factory=list, metadata={
        "help": "Dataset spec, repeatable: arc_easy, mmlu:/path/to/csvs, generic:file.jsonl (see "
                "catto.data.load_mcqa), or pairs:FILE for a preference dataset (the token method).",
        "action": "extend"})
    out: str = field(default=None, metadata={"help": "Output folder (re-running with the same settings resumes)."})
    split: str | None = field(default=None, metadata={"help": "Dataset split (default: each dataset's "
                                                              "evaluation split)."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N items of each dataset."})
    sample: int | None = field(default=None, metadata={
        "help": "Evaluate a seeded random sample of N items of each dataset (--seed) instead of the first N (MMLU's "
                "first items are all one subject)."})
    on_invalid: str = field(default="skip", metadata={
        "help": "Rows the validation rejects (duplicate or empty options, ...): skip them and record each with its "
                "reason in metrics.json (default), or stop at the first with the error.",
        "choices": ["skip", "raise"]})
    num_fewshot: int = field(default=0, metadata={
        "help": "k-shot demonstrations (scoring): the first k items of --fewshot_split, or of the evaluated split "
                "(then not evaluated)."})
    fewshot_split: str | None = field(default=None, metadata={"help": "Split to take demonstrations from."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside --model's folder to load the "
                                                                  "weights from."})
    adapter: str | None = field(default=None, metadata={"help": "A PEFT adapter folder (a LoRA catto train run) "
                                                                "to put on --model."})
    dtype: str = field(default="auto", metadata={
        "help": "Model dtype: auto (the checkpoint's own, as recorded in its config.json; float32 for a GGUF "
                "file), float32, bfloat16 or float16.",
        "choices": ["auto", "float32", "bfloat16", "float16"]})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    device_map: str | None = field(default=None, metadata={
        "help": "Let transformers place the model over the available devices (from_pretrained's device_map: auto, "
                "balanced, balanced_low_0, sequential, or one device): a model larger than one GPU. Not with "
                "--device."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run the modelling code shipped in the model's repository (transformers' trust_remote_code); only for "
                "models you trust."})
    n_bins: int = field(default=15, metadata={"help": "Calibration bins."})
    binning: str = field(default="equal_width", metadata={"help": "Calibration binning.",
                                                          "choices": ["equal_width", "equal_mass"]})
    bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the intervals (0: none)."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap, option shuffles and sampling."})
    fit_data: str | None = field(default=None, metadata={
        "help": "Labelled dataset spec to fit learning methods on once; every --data is then evaluated with that "
                "fit.", "aliases": ["--calibrate-on", "--calibrate_on"]})
    fit_split: str | None = field(default=None, metadata={"help": "Split of --fit_data (default: its default "
                                                                  "split).", "aliases": ["--calibrate-split"]})
    fit_limit: int | None = field(default=None, metadata={"help": "Use only the first N items of --fit_data.",
                                                          "aliases": ["--calibrate-limit"]})
    fit_first: int | None = field(default=None, metadata={"help": "Fit on the first N items of each --data and "
                                                                  "evaluate on the rest."})
    load_evaluator: str | None = field(default=None, metadata={"help": "Folder of a saved evaluator to use instead "
                                                                       "of fitting."})
    stream: bool = field(default=False, metadata={
        "help": "Evaluate the --data specs as one stream, in the order given (a distribution shift for streaming "
                "methods such as SECL), reported as one dataset named 'stream'."})
    # `--overwrite_output_dir` on the command line (catto train's name); the field keeps the name `overwrite` (the
    # Python API, and what EvalRunner reads).
    overwrite: bool = field(default=False, metadata={
        "help": "Replace results in --out made with other settings or data (default: refuse and say what "
                "differs).", "flag": "overwrite_output_dir", "deprecated_aliases": ["--overwrite"]})
    no_plots: bool = field(default=False, metadata={"help": "Do not draw reliability / risk-coverage plots."})
    no_joint_pass: bool = field(default=False, metadata={
        "help": "Run cloze scoring and token calibration as two passes (default: where both evaluate the same MCQA "
                "items, one pass serves both, catto.eval.joint; the same numbers up to float rounding)."})
    no_progress: bool = field(default=False, metadata={"help": "No progress bars."})
    report_to: list[str] = field(default_factory=list, metadata={
        "help": "Also log the metrics and reliability diagrams to these trackers (tensorboard, wandb, trackio, "
                "... as in transformers' report_to; default none)."})

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("--model is missing. Fix: pass --model HUB_ID_OR_FOLDER.")
        if not self.out:
            raise ConfigError("--out is missing. Fix: pass --out FOLDER for the results.")
        checks = {"limit": (self.limit, 1), "sample": (self.sample, 1), "num_fewshot": (self.num_fewshot, 0), "n_bins": (self.n_bins, 1),
                  "bootstrap": (self.bootstrap, 0), "fit_limit": (self.fit_limit, 1),
                  "fit_first": (self.fit_first, 1)}
        for name, (value, low) in checks.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}. Fix: pass "
                                  f"a whole number >= {low}.")
        if self.limit is not None and self.sample is not None:
            raise ConfigError("--limit and --sample are both given. Fix: keep one: --limit N (the first N items) or "
                              "--sample N (a seeded random N).")
        given = [n for n in ("fit_data", "fit_first", "load_evaluator") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"{' and '.join('--' + g.replace('_', '-') for g in given)} both say where the fit "
                              "comes from. Fix: give at most one of --fit-data, --fit-first and --load-evaluator.")
        self.report_to = [t for t in self.report_to if t not in ("none", "")]
        from ..core.modeling import check_device, check_device_map

        check_device(self.device)  # a GPU this machine lacks: one line now, not a traceback after the data loaded
        if isinstance(self.device_map, str) and self.device_map.strip().lower() in ("none", ""):
            self.device_map = None
        check_device_map(self.device_map, self.device)

    def loading(self) -> dict[str, Any]:
        """How the model is loaded, beyond `model`/`adapter`/`gguf_file`/`dtype`: the base model a LoRA run folder
        given as --model resolves to, `trust_remote_code` and `device_map` (only those that are set, so results made
        before these options existed still resume)."""
        from ..core.modeling import is_adapter_folder, resolve_model

        out: dict[str, Any] = {}
        if self.gguf_file is None and is_adapter_folder(self.model):
            out["base_model"] = resolve_model(self.model, self.adapter)[0]
        if self.trust_remote_code:
            out["trust_remote_code"] = True
        if self.device_map is not None:
            out["device_map"] = self.device_map
        return out

    def record(self) -> dict[str, Any]:
        """The run-level choices every metrics.json records, whatever the method."""
        from .. import __version__

        return {"catto_version": __version__, "model": self.model, "gguf_file": self.gguf_file,
                "adapter": self.adapter, "dtype": self.dtype, "trust_remote_code": self.trust_remote_code,
                "device_map": self.device_map, **self.loading(),
                "binning": {"n_bins": self.n_bins, "scheme": self.binning},
                "bootstrap": {"n_resamples": self.bootstrap, "seed": self.seed,
                              "interval": "percentile, 95 % (ECE also basic/bias-aware, see catto.eval.metrics)"},
                "seed": self.seed, "limit": self.limit, "sample": self.sample, "split": self.split,
                "fit": {"data": self.fit_data, "split": self.fit_split, "limit": self.fit_limit,
                        "first": self.fit_first, "loaded": self.load_evaluator}}


@dataclass
class EvalDataset:
    """One dataset to evaluate: a `--data` spec loaded and validated before the model is, or items already in memory
    (`EvalDataset.from_items`, `EvalRunner(datasets=...)`)."""

    name: str
    spec: str
    items: list
    fewshot: list = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    pairs: bool = False

    @classmethod
    def from_items(cls, name: str, items: Sequence[Any], spec: str | None = None,
                   fewshot: Sequence[Any] = ()) -> EvalDataset:
        """Items already in memory: `MCQAItem`s, or preference rows (`prompt`/`chosen`/`rejected` dicts with an
        `id`) for the token method. `spec` is what the run records name the data by (default `in-memory:<name>`);
        the settings check on resume also compares the items' fingerprint."""
        items = list(items)
        if not items:
            raise DataError(f"dataset {name!r} has no items to evaluate. Fix: pass at least one item.")
        pairs = isinstance(items[0], Mapping)
        if pairs and any("id" not in row for row in items):
            raise DataError(f"dataset {name!r}: preference rows need an 'id' (results are resumed by id). Fix: add "
                            "one per row, e.g. its index.")
        return cls(name, spec or f"in-memory:{name}", items, list(fewshot), [], pairs=pairs)


@dataclass
class MethodRun:
    """What one method produced on one dataset."""

    records: list
    item_results: list | None
    metrics: dict[str, Any] | None
    method_metrics: dict[str, Any]
    evaluator: dict[str, Any]
    fit_ids: list[str]
    results_path: str
    plots: dict[str, Any]
    n_items: int


@dataclass
class MethodSpec:
    """A method to run: its class and config, or a saved evaluator / finished `catto eval` folder to load."""

    name: str
    cls: type | None = None
    config: Any = None
    evaluator: Any = None  # a loaded Evaluator, used as it is
    results_dir: str | None = None  # a `catto eval` output folder whose per-item results are read back


# ----------------------------------------------------------------------------------------------------------------
# Small public helpers


def dataset_name(spec: str) -> str:
    """A folder-safe name for a data spec (`arc_easy`; `mmlu:/data/csvs` -> `mmlu-csvs`; `race:/data/race` -> `race`).

    >>> dataset_name("mmlu:/data/csvs"), dataset_name("race:/data/race"), dataset_name("arc_easy")
    ('mmlu-csvs', 'race', 'arc_easy')
    """
    name, _, path = spec.partition(":")
    tail = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] if path else ""
    raw = f"{name}-{tail}" if tail and tail != name else name
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)
    return safe.strip("-") or "data"


def items_fingerprint(items: Sequence[Any]) -> str:
    """A hash of the evaluated items' content (ids, questions, options, gold labels; or preference rows): results
    made on other data, or on data whose labels changed, never get reused."""
    digest = hashlib.sha256()
    for item in items:
        row = dataclasses.asdict(item) if dataclasses.is_dataclass(item) else dict(item)
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def ensure_writable(folder: str) -> None:
    """Create `folder` and check a file can be written there (before any model is loaded)."""
    try:
        check_writable(folder)
    except OSError as err:
        raise ConfigError(f"--out {folder!r} is not writable ({err.strerror or err}). Fix: pass a folder you can "
                          "write to.") from err


def check_settings(folder: str, settings: Mapping[str, Any], *, overwrite: bool) -> None:
    """Refuse to reuse `folder` when its `settings.json` differs from `settings` (or results exist without one);
    with `overwrite`, clear the old results instead. Writes `settings` for the next run to compare with."""
    path = os.path.join(folder, SETTINGS_FILE)
    results = os.path.join(folder, "results.jsonl")
    old = None
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    settings = json.loads(json.dumps(settings, default=str))  # the form it is stored in
    if old is not None and old != settings or old is None and os.path.exists(results):
        if not overwrite:
            if old is None:
                what = "results with no record of the settings that made them"
            else:
                keys = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                what = "results made with other " + ", ".join(
                    f"{k} ({_short(old.get(k))} there, {_short(settings.get(k))} now)" for k in keys)
            raise ResumeMismatchError(f"{folder} holds {what}. Fix: pass a new --out, or --overwrite_output_dir "
                                      "to replace them.")
        for name in ("results.jsonl", SETTINGS_FILE):
            if os.path.exists(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
    write_json_atomic(path, settings)


def check_results_file(path: str) -> None:
    """Every line of a results file a resume will read is JSON (a torn last line is an interrupted append, which the
    resume drops): a damaged file is one line naming it before the model loads, not after."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip() or i >= len(lines) - 2:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            row = err
        if not isinstance(row, dict):
            reason = row.msg if isinstance(row, json.JSONDecodeError) else f"a {type(row).__name__}, not an object"
            raise DataError(f"{path}: line {i + 1} is not a result record ({reason}); refusing to resume. Fix: delete "
                            "the file; its items are then scored again.")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def curves_of(results: Sequence[Any]) -> tuple[list[float], list[bool]]:
    """(confidences, correct) of labelled item results: an unanswered item is wrong at its confidence."""
    labelled = [r for r in results if r.gold is not None]
    return [r.confidence for r in labelled], [r.prediction is not None and bool(r.correct) for r in labelled]


# ----------------------------------------------------------------------------------------------------------------
# The runner


class EvalRunner:
    """Runs methods over datasets for one `EvalArguments`; see the module docstring.

    Example (prose, needs a model folder)::

        runner = EvalRunner(EvalArguments(model="M", data=["arc_easy"], out="runs/x"))
        runs = runner.run([MethodSpec("scoring", ScoringMethod, ScoringMethodConfig())],
                          folder_of=lambda method, dataset: os.path.join("runs/x", dataset))
    """

    def __init__(self, args: EvalArguments, model_and_tokenizer: tuple | None = None,
                 load_hint: str = "--load-evaluator DIR", *,
                 datasets: Mapping[str, Sequence[Any] | EvalDataset] | None = None,
                 fit_items: Sequence[Any] | None = None):
        """`datasets` (like lm-eval's `simple_evaluate(tasks=...)` taking task objects): `{name: items}` or
        `{name: EvalDataset}` already in memory, evaluated as given instead of loading `args.data` (`--limit`,
        `--sample` and few-shot loading apply to specs only); `fit_items`: labelled items to fit learning methods on
        once, instead of `args.fit_data`."""
        self.args = args
        self.load_hint = load_hint  # how this command takes a saved evaluator (for error messages)
        self._model = model_and_tokenizer
        self.datasets: dict[str, EvalDataset] = {
            name: d if isinstance(d, EvalDataset) else EvalDataset.from_items(name, d)
            for name, d in (datasets or {}).items()}
        self.fit_items: list | None = list(fit_items) if fit_items is not None else None
        if self.fit_items is not None and args.fit_data:
            raise ConfigError("fit_items and --fit-data both say what to fit on. Fix: give one of them.")

    # -- loading -----------------------------------------------------------------------------------------------
    def load_datasets(self, *, pairs_ok: bool = False) -> dict[str, EvalDataset]:
        """Load and validate every `--data` spec (and `--fit-data`) with its few-shot demonstrations."""
        from ..data import load_mcqa

        a = self.args
        if not a.data:
            raise ConfigError("--data is missing. Fix: pass at least one dataset spec, e.g. --data arc_easy.")
        datasets: dict[str, EvalDataset] = {}
        for spec in a.data:
            name = dataset_name(spec)
            if name in datasets:
                raise ConfigError(f"--data {datasets[name].spec!r} and --data {spec!r} both write to "
                                  f"{os.path.join(a.out, name)}. Fix: give each dataset a file or folder of its own "
                                  "name, or evaluate them in separate --out folders.")
            if spec.startswith("pairs:"):
                if not pairs_ok:
                    raise ConfigError(f"--data {spec!r}: preference pairs are evaluated by --method token only. "
                                      "Fix: use an MCQA spec, or --method token.")
                datasets[name] = EvalDataset(name, spec, self._load_pairs(spec), [], [], pairs=True)
                continue
            if a.fewshot_split:
                fewshot = list(load_mcqa(spec, split=a.fewshot_split, seed=a.seed, on_invalid=a.on_invalid,
                                         limit=a.num_fewshot or None))[: a.num_fewshot]
                items = load_mcqa(spec, split=a.split, limit=a.limit, seed=a.seed, on_invalid=a.on_invalid)
                eval_items = list(items)
            else:  # demonstrations from the start of the evaluated split, which are then not evaluated
                n = a.limit + a.num_fewshot if a.limit else None
                items = load_mcqa(spec, split=a.split, limit=n, seed=a.seed, on_invalid=a.on_invalid)
                fewshot, eval_items = list(items[: a.num_fewshot]), list(items[a.num_fewshot:])
            if a.sample is not None and len(eval_items) > a.sample:
                import random

                eval_items = random.Random(a.seed).sample(eval_items, a.sample)
            skipped = [{"row": s.row, "id": s.id, "reason": s.reason} for s in getattr(items, "skipped", [])]
            if not eval_items:
                reason = f" ({len(skipped)} invalid rows skipped, e.g. {skipped[0]['reason']})" if skipped else ""
                raise DataError(f"--data {spec!r} has no items to evaluate{reason}.")
            if skipped:
                logger.warning(f"{spec}: skipped {len(skipped)} invalid row(s), e.g. {skipped[0]['reason']}")
            if len(fewshot) < a.num_fewshot:
                raise DataError(f"--data {spec!r} has only {len(fewshot)} items for {a.num_fewshot} "
                                "demonstrations. Fix: lower --num-fewshot or pass --fewshot-split.")
            datasets[name] = EvalDataset(name, spec, eval_items, fewshot, skipped)
        if a.stream:
            parts = list(datasets.values())
            # ids are only unique within a dataset: prefix each with its dataset's name
            joined = [dataclasses.replace(it, id=f"{d.name}:{it.id}") if not d.pairs else {**it, "id": f"{d.name}:"
                                                                                            f"{it['id']}"}
                      for d in parts for it in d.items]
            datasets = {"stream": EvalDataset("stream", " -> ".join(d.spec for d in parts), joined, [],
                                              [s for d in parts for s in d.skipped], pairs=any(d.pairs for d in parts))}
        if a.fit_data:
            self.fit_items = list(load_mcqa(a.fit_data, split=a.fit_split, limit=a.fit_limit, seed=a.seed,
                                            on_invalid=a.on_invalid))
            if not self.fit_items:
                raise DataError(f"--fit-data {a.fit_data!r} has no valid items to fit on.")
        self.datasets = datasets
        return datasets

    def _load_pairs(self, spec: str) -> list[dict]:
        from ..data.preference import check_preference_columns, load_preference_dataset, validate_preference_rows

        source = spec.removeprefix("pairs:")
        dataset = load_preference_dataset(source, self.args.split or "train")
        check_preference_columns(dataset, f"--data {spec!r}")
        dataset, skipped = validate_preference_rows(dataset, f"--data {spec!r}", self.args.on_invalid)
        if skipped:
            logger.warning(f"{spec}: skipped {len(skipped)} invalid pair(s); row {skipped[0]['row']}: "
                           f"{skipped[0]['reason']}")
        rows = [{**row, "id": str(row.get("id") if row.get("id") is not None else i)} for i, row in
                enumerate(dataset)]
        if self.args.sample is not None and len(rows) > self.args.sample:
            import random

            rows = random.Random(self.args.seed).sample(rows, self.args.sample)
        return rows[: self.args.limit] if self.args.limit else rows

    def model(self):
        """(model, tokenizer), loaded once."""
        if self._model is None:
            from ..core.modeling import load_model_and_tokenizer

            a = self.args
            self._model = load_model_and_tokenizer(a.model, dtype=a.dtype, device=a.device, gguf_file=a.gguf_file,
                                                   adapter=a.adapter, trust_remote_code=a.trust_remote_code,
                                                   device_map=a.device_map)
        return self._model

    # -- running -----------------------------------------------------------------------------------------------
    def _new(self, spec: MethodSpec):
        evaluator = spec.cls(spec.config)
        evaluator.progress = not self.args.no_progress
        evaluator.metric_options = {"n_bins": self.args.n_bins, "binning": self.args.binning,
                                    "n_resamples": self.args.bootstrap, "seed": self.args.seed}
        return evaluator

    def _check_method(self, spec: MethodSpec) -> None:
        a = self.args
        if spec.cls is None:
            return
        if spec.cls.needs_labels and spec.evaluator is None and self.fit_items is None and not (
                a.fit_data or a.fit_first or a.load_evaluator):
            raise ConfigError(f"{spec.name} learns from labelled items. Fix: pass --fit-data SPEC (fit on another "
                              "dataset), --fit-first N (fit on the first N items of each --data) or "
                              f"{self.load_hint}.")
        if a.num_fewshot and not spec.cls.uses_fewshot:
            raise ConfigError(f"--num-fewshot applies to the scoring method only, not {spec.name}. Fix: drop it.")
        if any(d.pairs for d in self.datasets.values()) and not spec.cls.accepts_pairs:
            raise ConfigError(f"{spec.name} evaluates MCQA items, not preference pairs (pairs: specs). Fix: use "
                              "--method token for pairs.")
        if a.fit_first is not None:
            for d in self.datasets.values():
                if a.fit_first >= len(d.items):
                    raise ConfigError(f"--fit-first {a.fit_first} leaves no items of {d.spec} ({len(d.items)}) to "
                                      "evaluate. Fix: lower it.")

    def settings_for(self, spec: MethodSpec, dataset: EvalDataset, items: Sequence[Any]) -> dict[str, Any]:
        """Everything that changes the per-item records of `spec` on `dataset` (compared on resume)."""
        a = self.args
        config = spec.config.to_dict() if spec.config is not None and hasattr(spec.config, "to_dict") else None
        return {"method": spec.name, "config": config, "model": a.model, "gguf_file": a.gguf_file,
                "adapter": a.adapter, "dtype": a.dtype, **a.loading(), "data": dataset.spec, "split": a.split,
                "items": len(items), "data_fingerprint": items_fingerprint(items),
                "fewshot": [f.id for f in dataset.fewshot], "fit": self._fit_record()}

    def _fit_record(self) -> dict[str, Any]:
        fit = self.args.record()["fit"]
        if self.fit_items is not None and not self.args.fit_data:  # fit items given in memory: name them
            fit = {**fit, "items": len(self.fit_items), "items_fingerprint": items_fingerprint(self.fit_items)}
        return fit

    def run(self, methods: Sequence[MethodSpec], folder_of: Callable[[str, str | None], str]) -> \
            dict[str, dict[str, MethodRun]]:
        """Run `methods` on every loaded dataset (`load_datasets` first, or it is called here) and write each
        method's per-item records to `folder_of(method, dataset)/results.jsonl`; fitted evaluators are saved to
        `folder_of(method, None)/evaluator` (`--fit-data`) or `folder_of(method, dataset)/evaluator`
        (`--fit-first`). Returns `{dataset: {method: MethodRun}}`."""
        a = self.args
        if not self.datasets:
            self.load_datasets(pairs_ok=any(s.cls is not None and s.cls.accepts_pairs for s in methods))
        for spec in methods:
            self._check_method(spec)
        ensure_writable(a.out)
        from ..core.modeling import check_model_folder, resolve_model

        if a.gguf_file is None:
            resolve_model(a.model, a.adapter)  # a LoRA run folder as --model and --adapter too: refused here
        check_model_folder(a.model, a.gguf_file)  # before anything else names the model
        if a.adapter is not None and not os.path.isfile(os.path.join(a.adapter, "adapter_config.json")):
            raise ConfigError(f"--adapter {a.adapter}: no adapter_config.json; it is not a PEFT adapter folder. Fix: "
                              "pass the output_dir of a LoRA catto train run.")
        loaded = None
        if a.load_evaluator and any(s.cls is not None and s.evaluator is None for s in methods):
            from ..methods import load_evaluator

            loaded = load_evaluator(a.load_evaluator)
            for spec in methods:
                if spec.cls is not None and spec.evaluator is None and loaded.name != spec.name:
                    raise ConfigError(f"--load-evaluator {a.load_evaluator} holds a {loaded.name!r} evaluator, not "
                                      f"{spec.name!r}. Fix: pass --method {loaded.name}.")
        for spec in methods:  # refuse a mismatched resume, or a damaged results file, before the model is loaded
            for d in self.datasets.values():
                if spec.cls is not None and spec.evaluator is None and spec.results_dir is None:
                    items = d.items[a.fit_first:] if a.fit_first else d.items
                    check_settings(folder_of(spec.name, d.name), self.settings_for(spec, d, items),
                                   overwrite=a.overwrite)
                    if spec.cls.resumable:
                        check_results_file(os.path.join(folder_of(spec.name, d.name), "results.jsonl"))
        model, tokenizer = self.model()
        shared: dict[str, Any] = {}
        for spec in methods:
            if spec.evaluator is not None:
                shared[spec.name] = spec.evaluator
                spec.evaluator.progress = not a.no_progress
            elif spec.cls is not None and loaded is not None:
                loaded.progress, loaded.metric_options = not a.no_progress, self._new(spec).metric_options
                shared[spec.name] = loaded
            elif spec.cls is not None and self.fit_items is not None:
                ev = self._new(spec).fit(model, tokenizer, self.fit_items)
                ev.save(os.path.join(folder_of(spec.name, None), "evaluator"))
                shared[spec.name] = ev
        out: dict[str, dict[str, MethodRun]] = {}
        for d in self.datasets.values():
            items, fit_part = d.items, []
            if a.fit_first:
                fit_part, items = d.items[: a.fit_first], d.items[a.fit_first:]
            out[d.name] = {}
            self._joint_cloze_token_pass(methods, shared, d, items, fit_part, folder_of)
            for spec in methods:
                folder = folder_of(spec.name, d.name)
                if spec.results_dir is not None:
                    out[d.name][spec.name] = self._read_back(spec, d, items, folder)
                    continue
                ev = shared.get(spec.name)
                if ev is None:
                    ev = self._new(spec)
                    if fit_part:
                        ev.fit(model, tokenizer, fit_part)
                        ev.save(os.path.join(folder, "evaluator"))
                ev.fewshot = d.fewshot if getattr(ev, "uses_fewshot", False) else ()
                ev.bind_output(folder)
                out[d.name][spec.name] = self._evaluate(ev, d, items, [it.id for it in fit_part], folder)
        return out

    def _joint_cloze_token_pass(self, methods: Sequence[MethodSpec], shared: Mapping[str, Any], d: EvalDataset,
                                items: list, fit_part: list, folder_of: Callable[[str, str | None], str]) -> int:
        """Where `scoring` (cloze) and `token` (cloze answer-text pairs) both evaluate these MCQA items, run their
        model work as one pass (`catto.eval.joint`) and append the records to both methods' results files: each
        method then finds those items done, as on a resume. Items the pass cannot take are left to the methods.
        Returns the number of items done here."""
        from ..data.items import MCQAItem
        from ..eval.joint import score_cloze_and_tokens
        from ..eval.results import ResultsFile
        from ..eval.token import TokenPairResult
        from ..methods.scoring import ScoringMethod
        from ..methods.token import TokenCalibration

        if self.args.no_joint_pass or fit_part or not items or not all(isinstance(it, MCQAItem) for it in items):
            return 0
        own = [s for s in methods if s.results_dir is None and s.evaluator is None and s.name not in shared]
        scoring = next((s for s in own if s.cls is ScoringMethod), None)
        token = next((s for s in own if s.cls is TokenCalibration), None)
        if scoring is None or token is None:
            return 0
        scoring_ev, token_ev = self._new(scoring), self._new(token)
        if (scoring_ev.config.scoring != "cloze" or d.fewshot or token_ev.config.pair_format != "cloze"
                or token_ev.config.conversational):
            return 0
        stores = (ResultsFile(os.path.join(folder_of(scoring.name, d.name), "results.jsonl")),
                  ResultsFile(os.path.join(folder_of(token.name, d.name), "results.jsonl"),
                              record_type=TokenPairResult))
        pairs = token_ev.pairs(items)
        todo = [k for k, it in enumerate(items) if it.id not in stores[0] and str(pairs[k]["id"]) not in stores[1]]
        if not todo:
            return 0
        model, tokenizer = self.model()
        done, _ = score_cloze_and_tokens(
            model, tokenizer, [items[k] for k in todo], [pairs[k] for k in todo],
            scoring=scoring_ev.config.scoring_config(), token=token_ev.config.token_eval_config(),
            batch_size=scoring_ev.config.batch_size, progress=not self.args.no_progress,
            on_batch=lambda cloze, tokens: (stores[0].append(cloze), stores[1].append(tokens)))
        return len(done)

    def _evaluate(self, ev, d: EvalDataset, items: list, fit_ids: list[str], folder: str) -> MethodRun:
        from ..eval.results import write_results_jsonl

        model, tokenizer = self.model()
        path = os.path.join(folder, "results.jsonl")
        if ev.resumable:
            records = ev.evaluate(model, tokenizer, items, results_path=path)
        else:
            records = ev.evaluate(model, tokenizer, items)
        if len(records) != len(items):
            raise RuntimeError(f"{ev.name}.evaluate returned {len(records)} records for {len(items)} items.")
        write_results_jsonl(path, records)
        return self._summarize(ev, ev.name, records, fit_ids, folder, path, len(items))

    def _read_back(self, spec: MethodSpec, d: EvalDataset, items: list, folder: str) -> MethodRun:
        """A finished `catto eval` folder's per-item results for exactly these items."""
        from ..eval.results import ItemResult, write_results_jsonl

        path = os.path.join(spec.results_dir, d.name, "results.jsonl")
        if not os.path.exists(path):
            raise ConfigError(f"--load {spec.name}={spec.results_dir} is neither a saved evaluator (evaluator.json) "
                              f"nor a catto eval folder with results for {d.name} (expected {path}).")
        by_id = {}
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = ItemResult.from_dict(json.loads(line))
                except (ValueError, TypeError, KeyError) as err:
                    raise DataError(f"--load {spec.name}: {path} line {number} is not a result record "
                                    f"({str(err).splitlines()[0] if str(err) else type(err).__name__}). Fix: run "
                                    f"that evaluation again (catto eval --out {spec.results_dir}).") from None
                by_id[record.id] = record
        missing = [it.id for it in items if it.id not in by_id]
        if missing:
            raise ConfigError(f"--load {spec.name} has no results for {len(missing)} item(s) of {d.name}, e.g. "
                              f"{missing[:3]}; it was run on other items.")
        records = [by_id[it.id] for it in items]
        write_results_jsonl(os.path.join(folder, "results.jsonl"), records)

        class _Loaded:  # item results read back: the shared metrics only
            name = spec.name

            def item_results(self, recs):
                return list(recs)

            def summarize(self, recs):
                return {}

            def write_plots(self, *args):
                return {}

            def describe(self):
                return {"method": spec.name, "loaded_from": spec.results_dir}

        return self._summarize(_Loaded(), spec.name, records, [], folder, path, len(items))

    def _summarize(self, ev, name: str, records: list, fit_ids: list[str], folder: str, path: str,
                   n_items: int) -> MethodRun:
        from ..eval.aggregate import summarize_results

        a = self.args
        item_results = ev.item_results(records)
        metrics, plots = None, {}
        labelled = [r for r in records if getattr(r, "gold", True) is not None]
        if item_results is not None:
            answered = [r for r in item_results if r.gold is not None]
            metrics = summarize_results(answered, n_bins=a.n_bins, binning=a.binning, n_resamples=a.bootstrap,
                                        seed=a.seed) if answered else {"n": 0}
            if answered and not a.no_plots:
                plots.update(write_eval_plots({name: curves_of(answered)}, folder, os.path.basename(folder),
                                              n_bins=a.n_bins, binning=a.binning))
        method_metrics = ev.summarize(labelled) if labelled else {}
        if not a.no_plots and labelled:
            try:
                plots.update(ev.write_plots(labelled, folder, os.path.basename(folder)))
            except ImportError as err:
                logger.warning(f"{err}: no {name} plots written.")
        return MethodRun(records, item_results, metrics, method_metrics, ev.describe(), fit_ids, path, plots, n_items)


def write_eval_plots(curves: Mapping[str, tuple[list, list]], folder: str, title: str, *, n_bins: int,
                     binning: str) -> dict:
    """Reliability diagram(s) and a risk-coverage plot of `{label: (confidences, correct)}` into `folder`; a record
    of what was written (or why nothing was)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        logger.warning("matplotlib is not installed (pip install matplotlib): no plots written.")
        return {"skipped": "matplotlib not installed"}
    from ..eval.plots import reliability_diagram, risk_coverage_plot

    plots = {}
    for label, (conf, correct) in curves.items():
        key = "reliability" if len(curves) == 1 else f"reliability_{label}"
        plots[key] = reliability_diagram(conf, correct, os.path.join(folder, f"{key}.png"), n_bins=n_bins,
                                         binning=binning, title=f"{title} · {label}")
    plots["risk_coverage"] = risk_coverage_plot(curves, os.path.join(folder, "risk_coverage.png"), title=title)
    return plots


# ----------------------------------------------------------------------------------------------------------------
# `catto eval`: one method, metrics.json


def run_eval(args: EvalArguments, method: str, config: Any, *, model_and_tokenizer: tuple | None = None) -> dict:
    """`catto eval --method METHOD`: evaluate every `--data` spec, write `<out>/<dataset>/results.jsonl` (resumable),
    plots, and `<out>/metrics.json` with every choice; returns that payload."""
    from ..eval.aggregate import format_table
    from ..methods import get_method_class
    from .trackers import log_to_trackers

    cls = get_method_class(method)
    runner = EvalRunner(args, model_and_tokenizer)
    runs = runner.run([MethodSpec(method, cls, config)],
                      folder_of=lambda m, d: os.path.join(args.out, d) if d is not None else args.out)
    report = {}
    for name, per_method in runs.items():
        r, d = per_method[method], runner.datasets[name]
        report[name] = {"spec": d.spec, "n_items": r.n_items, "fewshot_ids": [f.id for f in d.fewshot],
                        "fit_ids": r.fit_ids, "skipped_rows": d.skipped, "results": r.results_path,
                        "plots": r.plots, "metrics": r.metrics, "method_metrics": r.method_metrics,
                        "evaluator": r.evaluator}
    payload = {**args.record(), "method": method, "method_config": _config_dict(config), "datasets": report}
    if hasattr(config, "scoring_config"):
        payload["scoring"] = config.scoring_config(args.num_fewshot).to_dict()
    write_json_atomic(os.path.join(args.out, "metrics.json"), payload)
    tables = {k: v["metrics"] for k, v in report.items() if v["metrics"] and v["metrics"].get("n")}
    if tables:
        print(format_table(tables))
    for name, entry in report.items():
        text = cls.format_summary(entry["method_metrics"]) if entry["method_metrics"] else ""
        if text:
            print(f"\n{name}:\n{text}")
    log_to_trackers(args.report_to, args.out, f"eval-{method}", {name: {"metrics": e["metrics"], "method_metrics": e["method_metrics"]}
                                             for name, e in report.items()},
                    {f"{name}/{k}": v for name, e in report.items() for k, v in e["plots"].items()
                     if isinstance(v, str) and v.endswith(".png")}, payload)
    print(f"\nWrote {os.path.join(args.out, 'metrics.json')}")
    return payload


def _config_dict(config: Any) -> dict | None:
    return config.to_dict() if hasattr(config, "to_dict") else None
