"""The study pipeline: arms (shipped recipes one flag apart) x seeds, trained once and cached, each trained model
evaluated through the evaluation runner on named sets, all of it resumable and settings-checked.

What a calibration study, `catto demo` and the letter study share:

- an `Arm` is a shipped recipe (`recipes/<recipe>.yaml`) plus the `catto train` flags that make it differ from the
  others (`Arm("catto_a0.3", "demo/catto", ("--catto_alpha", "0.3"))`), or the base model untouched (no recipe);
- `Study.train(arm, seed)` trains it through `catto train`'s code path (`catto.train.runs.train_run`): a finished run
  is reused only when it was trained with the same arguments, an interrupted one resumes from its last checkpoint,
  a run made with other arguments is refused (or retrained with `overwrite`);
- `Study.evaluate(arm, seed)` evaluates the trained model through `catto.pipeline.runner.EvalRunner` on the study's
  sets (items in memory, the same items for every arm): by default held-out token calibration (`token`, the
  quantity the CATTO term trains) and cloze MCQA scoring (`scoring`), or any registered methods. Per-item results
  are cached per arm, seed, method and set, and a resume with other settings or other items is refused by the
  runner's settings check;
- `catto.pipeline.study_analysis` turns the records into per-run metrics, pooled out-of-distribution rows, paired
  differences on the same items, the written selection rule, tables and plots.

Example (a dry run on a tiny model; see tests/test_study.py)::

    settings = StudySettings(out="study", model="path/to/model", train_data="commonsense_qa:/data/csqa.jsonl")
    study = Study(settings, eval_sets={"csqa_dev": items, "arc_easy": other_items})
    run = study.run(Arm("dpo", "demo/dpo"), seed=0)
    run.records["token"]["csqa_dev"]  # per-pair token records
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._logging import get_logger
from ..errors import ConfigError, ResumeMismatchError
from ..io import read_json
from ..train.runs import portable_argv
from .runner import EvalArguments, EvalDataset, EvalRunner, MethodSpec

logger = get_logger(__name__)


@dataclass(frozen=True)
class Arm:
    """One arm of a study: a shipped recipe and the `catto train` flags it adds, or the base model (`recipe=None`)."""

    name: str
    recipe: str | None = None
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or os.sep in self.name:
            raise ConfigError(f"arm name {self.name!r} must be a non-empty folder-safe name. Fix: e.g. 'catto_a0.3'.")
        if self.recipe is None and self.overrides:
            raise ConfigError(f"arm {self.name!r} has overrides but no recipe: the base model is not trained. Fix: "
                              "give it a recipe, e.g. 'demo/catto'.")
        if len(self.overrides) % 2:
            raise ConfigError(f"arm {self.name!r}: overrides {list(self.overrides)} are not --flag value pairs.")

    @property
    def trained(self) -> bool:
        return self.recipe is not None


# The arms of catto's studies on the demo recipes (`recipes/demo/{dpo,catto}.yaml`): each adds only the flags that
# make it differ (the calibration study, the letter study and the demo name arms from here).
DEMO_ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("base"),
    Arm("dpo", "demo/dpo"),
    Arm("dpo_bce", "demo/catto", ("--catto_alpha", "0.3", "--catto_loss_form", "bce")),
    *(Arm(f"catto_a{a}", "demo/catto", ("--catto_alpha", a)) for a in ("0.05", "0.1", "0.3", "1.0")),
    # the loss-form study (issue 27, part 2): BCE and the squared form beside L1, at the same alphas
    *(Arm(f"bce_a{a}", "demo/catto", ("--catto_alpha", a, "--catto_loss_form", "bce")) for a in ("0.1", "1.0")),
    *(Arm(f"l2_a{a}", "demo/catto", ("--catto_alpha", a, "--catto_loss_form", "l2")) for a in ("0.1", "0.3", "1.0")),
    Arm("catto_a0.3_prob", "demo/catto", ("--catto_alpha", "0.3", "--catto_margin", "prob")),
    Arm("catto_a0.3_nodetach", "demo/catto", ("--catto_alpha", "0.3", "--catto_detach_target", "false")),
    Arm("catto_a0.3_chosen", "demo/catto", ("--catto_alpha", "0.3", "--catto_sequences", "chosen")),
    Arm("catto_a0.3_noeos", "demo/catto", ("--catto_alpha", "0.3", "--catto_exclude_eos", "true")),
    # Confidence@k on trained models (issue 27, part 1): the options listed in the prompt, answered with their text
    *(Arm(f"options_{name}", recipe, ("--mcqa_prompt_format", "options", *extra)) for name, recipe, extra in (
        ("dpo", "demo/dpo", ()), ("catto_a0.3", "demo/catto", ("--catto_alpha", "0.3")),
        ("dpo_bce", "demo/catto", ("--catto_alpha", "0.3", "--catto_loss_form", "bce")))),
)}
# The arm that matches catto's recipe defaults for the demo model (alpha 0.3, L1, logit margin, detached target, both
# sequences, the EOS included): a selection rule may confirm it but never "changes the defaults" to it.
DEFAULT_DEMO_ARM = "catto_a0.3"


@dataclass
class StudySettings:
    """Everything an arm's training and evaluation share (each run adds only its arm's overrides and its seed)."""

    out: str = field(metadata={"help": "Study folder: trained runs, per-item results, tables."})
    model: str = field(metadata={"help": "Base model: hub id or local folder."})
    train_data: str = field(metadata={"help": "MCQA spec the training pairs are built from (catto train's "
                                              "--mcqa_data)."})
    train_split: str | None = field(default="train", metadata={"help": "Split of train_data (None: its default)."})
    train_items: int = field(default=800, metadata={"help": "The first N items of train_data become pairs."})
    steps: int | None = field(default=None, metadata={"help": "Training steps (None: the recipe's)."})
    per_device_train_batch_size: int | None = field(default=None, metadata={"help": "Training batch (None: the "
                                                                                    "recipe's)."})
    learning_rate: float | None = field(default=None, metadata={"help": "Override of the recipe's learning rate."})
    checkpoint_every: int = field(default=20, metadata={"help": "Save a checkpoint every N steps (resume)."})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if available) or cpu, for training and "
                                                          "evaluation."})
    dtype: str = field(default="float32", metadata={"help": "Evaluation dtype of the models."})
    methods: tuple[str, ...] = field(default=("scoring", "token"), metadata={
        "help": "Evaluation methods; `scoring` and `token` get the study's cloze settings, others their defaults "
                "unless `method_configs` names them."})
    method_configs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Method name -> its config (an instance of the method's config class), replacing the study's "
                "settings for that method (e.g. Confidence@k's k and prompt format)."})
    eval_batch_size: int = field(default=16, metadata={"help": "Option sequences per scoring forward."})
    token_max_length: int = field(default=1024, metadata={"help": "Prompt + response tokens kept per held-out pair."})
    pair_seed: int = field(default=0, metadata={"help": "Seed of the rejected-option draw of the held-out pairs."})
    n_bins: int = field(default=15, metadata={"help": "ECE bins (equal width)."})
    seed: int = field(default=0, metadata={"help": "Seed of the runner's own summaries (bootstrap, sampling)."})
    runs_folder: str = field(default="runs", metadata={"help": "Subfolder of out for the trained runs ('' = out)."})
    key_format: str = field(default="{arm}-s{seed}", metadata={"help": "Folder name of an arm and seed."})
    overwrite: bool = field(default=False, metadata={"help": "Retrain / re-evaluate runs made with other "
                                                             "settings (default: refuse, naming what differs)."})
    no_progress: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self) -> None:
        for name, low in (("train_items", 1), ("steps", 1), ("per_device_train_batch_size", 1),
                          ("checkpoint_every", 1), ("eval_batch_size", 1), ("token_max_length", 2), ("n_bins", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"study setting {name} must be an integer >= {low}, got {value!r}.")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"study setting device must be auto, cpu or cuda[:N], got {self.device!r}.")
        if "{arm}" not in self.key_format:
            raise ConfigError(f"study setting key_format {self.key_format!r} must contain '{{arm}}'.")
        self.methods = tuple(self.methods)
        unknown = sorted(set(self.method_configs) - set(self.methods))
        if unknown:
            raise ConfigError(f"study setting method_configs names {unknown}, which are not in methods "
                              f"{list(self.methods)}. Fix: add them to methods or drop their configs.")


@dataclass
class StudyRun:
    """What one arm and seed produced."""

    arm: Arm
    seed: int
    key: str
    train: dict[str, Any] | None  # `train_run`'s summary (None for the base model)
    records: dict[str, dict[str, list]]  # method -> set -> per-item records
    eval_seconds: float
    eval_cpu_seconds: float


def _portable_settings(settings: dict) -> dict:
    """Eval settings with the model and adapter paths cut as `portable_argv` cuts them: records written by a study
    whose folder was named relatively (or from another checkout) read back from an absolute one."""
    out = dict(settings)
    for key in ("model", "adapter"):
        if isinstance(out.get(key), str):
            out[key] = portable_argv([out[key]])[0]
    return out


def restore_run_records(out: str | os.PathLike) -> list[str]:
    """Unpack `out/records/<run>.tar.gz` (a finished run's per-item records, committed with a study) where
    `out/eval/<run>` is missing: a run whose model or adapter is gone reads back from them (`Study.cached_records`)
    without being trained or scored again. Returns the runs restored."""
    import tarfile
    from pathlib import Path

    import tempfile

    from ..errors import DataError

    out = Path(out)
    restored = []
    for archive in sorted((out / "records").glob("*.tar.gz")):
        key = archive.name[: -len(".tar.gz")]
        target = out / "eval" / key
        if target.is_dir():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        # Unpacked beside its destination and renamed into place, so a damaged archive leaves no half-restored run
        # (which a later call would take for a finished one).
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{key}.") as tmp:
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, EOFError, OSError) as err:
                raise DataError(f"{archive}: not a readable records archive ({err}). Fix: restore the file from git "
                                f"(git checkout -- {archive}) or delete it to train and score {key} again.") from None
            unpacked = Path(tmp) / "eval" / key
            if not unpacked.is_dir():
                raise DataError(f"{archive}: holds no eval/{key}/ folder. Fix: restore the file from git or delete "
                                f"it to train and score {key} again.")
            os.replace(unpacked, target)
        restored.append(key)
    return restored


def archive_run_records(out: str | os.PathLike, key: str, skip: Sequence[str] = ("analysis",)) -> str:
    """`out/records/<key>.tar.gz` of a finished run's eval folder, made once (an existing archive is kept) with
    reproducible bytes (sorted, no times or owners). `skip`: top-level sub-folders left out (`analysis` holds
    metrics cached from the records, not records)."""
    import gzip
    import io
    import tarfile
    from pathlib import Path

    from ..io import atomic_write

    out = Path(out)
    target = out / "records" / f"{key}.tar.gz"
    if target.exists():
        return str(target)
    root = out / "eval" / key
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            if path.relative_to(root).parts[0] in skip:
                continue
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(out)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_file():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target, "wb") as f:
        f.write(gzip.compress(buffer.getvalue(), mtime=0))
    return str(target)


def sample_items(spec: str, split: str | None, n: int, seed: int = 0) -> list:
    """A seeded random sample of `n` valid items of a set (all of them when it has fewer): MMLU's first items would
    all be one subject."""
    from ..data import load_mcqa

    pool = list(load_mcqa(spec, split=split, on_invalid="skip"))
    return random.Random(seed).sample(pool, min(n, len(pool)))


class Study:
    """Trains and evaluates the arms of one study; see the module docstring.

    `eval_sets` maps a set's name to its items (MCQA items, in memory, the same for every arm) or an `EvalDataset`;
    the first set is the in-distribution one for `catto.pipeline.study_analysis`. A study that only trains (its
    models are evaluated elsewhere, e.g. by `catto report`) needs none.
    """

    def __init__(self, settings: StudySettings, eval_sets: Mapping[str, Sequence[Any] | EvalDataset] | None = None):
        self.settings = settings
        self.eval_sets = {name: d if isinstance(d, EvalDataset) else EvalDataset.from_items(name, d)
                          for name, d in (eval_sets or {}).items()}

    # -- layout --------------------------------------------------------------------------------------------------
    def key(self, arm: Arm, seed: int) -> str:
        return self.settings.key_format.format(arm=arm.name, seed=seed)

    def run_dir(self, arm: Arm, seed: int) -> str:
        return os.path.join(self.settings.out, self.settings.runs_folder, self.key(arm, seed))

    def eval_dir(self, arm: Arm, seed: int) -> str:
        return os.path.join(self.settings.out, "eval", self.key(arm, seed))

    # -- training ------------------------------------------------------------------------------------------------
    def train_argv(self, arm: Arm, seed: int) -> list[str]:
        """The `catto train` arguments of an arm and seed (printed, so a run can be repeated by hand)."""
        import torch

        from ..train.recipes import mcqa_recipe_argv

        s = self.settings
        extra = list(arm.overrides) + (["--learning_rate", str(s.learning_rate)] if s.learning_rate is not None
                                       else [])
        return mcqa_recipe_argv(arm.recipe, model=s.model, train_spec=s.train_data, out_dir=self.run_dir(arm, seed),
                                train_items=s.train_items, seed=seed, train_split=s.train_split, steps=s.steps,
                                batch_size=s.per_device_train_batch_size,
                                use_cpu=s.device == "cpu" or not torch.cuda.is_available(),
                                checkpoint_every=s.checkpoint_every, extra=extra)

    def train(self, arm: Arm, seed: int) -> dict[str, Any] | None:
        """Train an arm and seed once (reused when finished with the same arguments); None for the base model."""
        if not arm.trained:
            return None
        from ..train.runs import train_run

        argv = self.train_argv(arm, seed)
        logger.info(f"[study] {self.key(arm, seed)}: catto train {' '.join(argv)}")
        return train_run(argv, self.run_dir(arm, seed), overwrite=self.settings.overwrite)

    # -- evaluation ----------------------------------------------------------------------------------------------
    def method_specs(self) -> list[MethodSpec]:
        """The study's methods with its scoring settings (cloze, per-character normalised; answer-text pairs)."""
        from ..methods import get_method_class
        from ..methods.scoring import ScoringMethodConfig
        from ..methods.token import TokenMethodConfig

        s = self.settings
        configs = {"scoring": ScoringMethodConfig(scoring="cloze", cloze_normalization="char",
                                                  batch_size=s.eval_batch_size),
                   "token": TokenMethodConfig(pair_format="cloze", max_length=s.token_max_length, seed=s.pair_seed),
                   **s.method_configs}
        specs = []
        for name in s.methods:
            cls = get_method_class(name)
            specs.append(MethodSpec(name, cls, configs.get(name, cls.config_class())))
        return specs

    def model_of(self, arm: Arm, seed: int) -> tuple[str, str | None]:
        """`(model, adapter)` of a trained arm: the base model with the run's LoRA adapter, or the run's own folder
        for a full fine-tune; the base model for an untrained arm."""
        if not arm.trained:
            return self.settings.model, None
        run_dir = self.run_dir(arm, seed)
        if os.path.exists(os.path.join(run_dir, "adapter_config.json")):
            return self.settings.model, run_dir
        return run_dir, None

    def _runner(self, arm: Arm, seed: int, model_and_adapter: tuple[str, str | None] | None = None) -> EvalRunner:
        s = self.settings
        model, adapter = model_and_adapter or self.model_of(arm, seed)
        args = EvalArguments(model=model, adapter=adapter, data=list(self.eval_sets), out=self.eval_dir(arm, seed),
                             device=s.device, dtype=s.dtype, n_bins=s.n_bins, bootstrap=0, seed=s.seed, no_plots=True,
                             no_progress=s.no_progress, overwrite=s.overwrite)
        return EvalRunner(args, datasets=self.eval_sets)

    def cached_records(self, arm: Arm, seed: int) -> dict[str, dict[str, list]] | None:
        """The run's per-item records when every method and set holds all of its items under the settings the
        runner would write now (the resume check, without a model: a run restored from its records, its adapter
        gone, reads back); None otherwise."""
        from ..eval.results import ResultsFile

        if not self.eval_sets:
            return None
        folder, records = self.eval_dir(arm, seed), {}
        # the adapter folder may be gone: the records were made by the LoRA run (base + adapter) or a full one
        forms = [(self.settings.model, self.run_dir(arm, seed)), (self.run_dir(arm, seed), None)] if arm.trained \
            else [(self.settings.model, None)]
        runners = [self._runner(arm, seed, form) for form in forms]
        for spec in self.method_specs():
            records[spec.name] = {}
            for name, d in self.eval_sets.items():
                where = os.path.join(folder, spec.name, name)
                path, settings = os.path.join(where, "results.jsonl"), os.path.join(where, "settings.json")
                if not (os.path.isfile(path) and os.path.isfile(settings)):
                    return None
                wants = [_portable_settings(json.loads(json.dumps(r.settings_for(spec, d, d.items), default=str)))
                         for r in runners]
                if _portable_settings(read_json(settings)) not in wants:
                    return None
                store = ResultsFile(path, record_type=spec.cls.record_type)
                ids = [it.id for it in d.items]
                if any(i not in store for i in ids):
                    return None
                records[spec.name][name] = store.ordered(ids)
        return records

    def evaluate(self, arm: Arm, seed: int) -> dict[str, dict[str, list]]:
        """Per method and set, the per-item records of the arm's trained model (cached and resumed by the runner)."""
        if not self.eval_sets:
            raise ConfigError("this study has no evaluation sets (it only trains). Fix: pass eval_sets={'name': items} "
                              "to Study.")
        s = self.settings
        folder = self.eval_dir(arm, seed)
        runner = self._runner(arm, seed)
        runs = runner.run(self.method_specs(), folder_of=lambda m, d: os.path.join(folder, m, d or ""))
        records = {m: {name: runs[name][m].records for name in self.eval_sets} for m in s.methods}
        del runner  # the model goes with it
        gc.collect()
        return records

    def run(self, arm: Arm, seed: int) -> StudyRun:
        """Train (or reuse) and evaluate one arm and seed. The first evaluation's wall and CPU time are kept in
        `eval/<key>/timing.json` (a later call that finds the records cached reports its own, shorter, time; the
        file keeps what the run cost)."""
        from ..io import write_json_atomic

        timing_path = os.path.join(self.eval_dir(arm, seed), "timing.json")
        first = not os.path.exists(timing_path)
        kept = {} if first else read_json(timing_path)
        if kept.get("train") and portable_argv(kept["train"].get("argv") or []) != portable_argv(
                self.train_argv(arm, seed)):
            if not self.settings.overwrite:
                raise ResumeMismatchError(
                    f"{self.eval_dir(arm, seed)} holds the records of a run trained with other arguments. Fix: a new "
                    "study folder, or overwrite (--overwrite-output-dir) to train and score it again.")
            shutil.rmtree(self.eval_dir(arm, seed))
            first, kept = True, {}
        start, cpu_start = time.perf_counter(), time.process_time()
        records = self.cached_records(arm, seed) if "train" in kept and not os.path.isdir(self.run_dir(arm, seed)) \
            else None
        if records is not None:  # restored from its records (the adapter is not kept): nothing to train or score
            train = kept["train"]
        else:
            train = self.train(arm, seed)
            start, cpu_start = time.perf_counter(), time.process_time()
            records = self.evaluate(arm, seed)
        eval_seconds, eval_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if first:
            write_json_atomic(timing_path, {
                "eval_seconds": eval_seconds, "eval_cpu_seconds": eval_cpu,
                "train_seconds": (train or {}).get("train_seconds"),
                "train_cpu_seconds": (train or {}).get("train_cpu_seconds"), "train": train})
        elif "train" not in kept:  # a record written before it kept the training summary
            write_json_atomic(timing_path, {**kept, "train": train})
        return StudyRun(arm, seed, self.key(arm, seed), train, records, eval_seconds, eval_cpu)
