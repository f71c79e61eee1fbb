"""One argument parser for catto's commands: `transformers.HfArgumentParser` over config dataclasses.

Every field of every dataclass is a flag, spelled with underscores or dashes (`--n_bins` / `--n-bins`), with
the field's `metadata["help"]`; `--config FILE.yaml` sets defaults from a YAML mapping (flags still override it),
like `catto train` and TRL's scripts. On top of HfArgumentParser:

- a field whose name an earlier dataclass already has is not a second flag: the one flag fills both (so `--seed`
  seeds the run and the method, `--eval_batch_size` sizes every method's batches);
- `metadata["parse"]`: a function from the flag's text to the value (e.g. `--k 1,2,4,8,16`);
- `metadata["cli"] = False`: the field is Python-API only (an object, not a flag);
- `metadata["flag"]`: the flag's name when it differs from the field's (`ScoringFields.batch_size` is
  `--eval_batch_size`); the value still goes to the field;
- `metadata["deprecated_aliases"]`: old spellings (`["--batch_size", "--batch-size"]`) that still work for one release,
  hidden from `--help`; using one (or its key in `--config FILE.yaml`) logs one line naming the new flag;
- errors are a `ConfigError` with argparse's one-line message, not usage text and `SystemExit` (without the command's
  name: the console puts `catto COMMAND:` in front of every error, once);
- values are validated when the dataclasses are built (`__post_init__`), i.e. at parse time, before any work.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import types
from collections.abc import Sequence
from typing import Any, get_type_hints

from transformers import HfArgumentParser

from .._logging import get_logger
from ..errors import ConfigError

logger = get_logger(__name__)

_OWN_METADATA = ("parse", "cli", "flag", "deprecated_aliases")


def deprecation_message(prog: str, old: str, new: str) -> str:
    """The one line printed when a deprecated spelling is used (`new` in the style of `old`: dashes or underscores).

    >>> deprecation_message("catto demo", "--alpha", "--catto_alpha")
    'catto demo: --alpha is deprecated and will be removed in the next release; use --catto_alpha instead.'
    """
    if old.startswith("--") and "-" in old[2:] and "_" not in old[2:]:
        new = "--" + new[2:].replace("_", "-")
    return f"{prog}: {old} is deprecated and will be removed in the next release; use {new} instead."


class _Calls:
    """Stands in for a parser: records the `add_argument` calls HfArgumentParser makes for one field."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []

    def add_argument(self, *args, **kwargs) -> None:
        self.calls.append((args, kwargs))


_DEPRECATED_CLASSES: dict[type, type] = {}


def _deprecated_action_class(base: type) -> type:
    """`base` (an argparse action class) that logs the deprecation line before storing the value."""
    if base not in _DEPRECATED_CLASSES:
        def __call__(self, parser, namespace, values, option_string=None):
            logger.warning(deprecation_message(parser.prog, option_string, self.catto_new_flag))
            base.__call__(self, parser, namespace, values, option_string)

        _DEPRECATED_CLASSES[base] = type(f"Deprecated{base.__name__}", (base,), {"__call__": __call__})
    return _DEPRECATED_CLASSES[base]


class CattoArgumentParser(HfArgumentParser):
    """See the module docstring."""

    def __init__(self, dataclass_types: Sequence[type], prog: str, description: str | None = None):
        self._catto_dests: set[str] = set()
        # `--config` keys: name -> (field, the new name when the key is a deprecated spelling, else None)
        self._config_keys: dict[str, tuple[str, str | None]] = {}
        super().__init__(list(dataclass_types), prog=prog, description=description)
        self.add_argument("--config", default=None, metavar="FILE.yaml",
                          help="A YAML file of option: value pairs (flags on the command line override it).")

    def _add_dataclass_arguments(self, dtype) -> None:
        parser = self.add_argument_group(dtype._argument_group_name) if hasattr(dtype, "_argument_group_name") \
            else self
        hints = get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if not f.init or f.metadata.get("cli") is False or f.name in self._catto_dests:
                continue
            name, flag = f.name, f.metadata.get("flag", f.name)
            parse = f.metadata.get("parse")
            old = list(f.metadata.get("deprecated_aliases", ()))
            f = copy.copy(f)
            f.type, f.name = hints[name], flag
            metadata = {k: v for k, v in f.metadata.items() if k not in _OWN_METADATA}
            if old and metadata.get("help"):
                metadata["help"] += f" (Formerly {' / '.join(old)}, deprecated.)"
            f.metadata = types.MappingProxyType(metadata)
            calls = _Calls()  # what HfArgumentParser adds for the field, re-added with dest = the field's name
            self._parse_dataclass_field(calls, f)
            for i, (args, kwargs) in enumerate(calls.calls):
                kwargs = {**kwargs, "dest": name}
                if i == 0 and parse is not None:
                    kwargs.update(type=parse, nargs=None)
                if i == 0 and flag != name:
                    kwargs.setdefault("metavar", flag.upper())
                parser.add_argument(*args, **kwargs)
            self._catto_dests.add(name)
            self._config_keys[flag] = (name, None)
            if old:
                args, kwargs = calls.calls[0]
                kwargs = {**kwargs, "dest": name, "help": argparse.SUPPRESS, "required": False}
                kwargs.pop("metavar", None)
                if parse is not None:
                    kwargs.update(type=parse, nargs=None)
                action = parser.add_argument(*old, **kwargs)
                action.__class__ = _deprecated_action_class(type(action))
                action.catto_new_flag = f"--{flag}"
                for spelling in old:
                    self._config_keys.setdefault(spelling.lstrip("-").replace("-", "_"), (name, flag))

    def error(self, message: str):  # argparse's usage + exit, as one line the console prints (it names the command)
        raise ConfigError(message)

    def parse(self, argv: Sequence[str]) -> tuple[Any, ...]:
        """The dataclass instances for `argv` (with `--config FILE.yaml` defaults)."""
        argv = list(argv)
        config_path = None
        if "--config" in argv:
            i = argv.index("--config")
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a value. Fix: --config FILE.yaml.")
            config_path = argv[i + 1]
            del argv[i: i + 2]
        if config_path is not None:
            self.set_defaults(**self._read_config(config_path))
        namespace, remaining = self.parse_known_args(argv)
        if remaining:
            raise self._unknown(remaining[0])
        values = vars(namespace)
        out = []
        for dtype in self.dataclass_types:
            keys = {f.name for f in dataclasses.fields(dtype) if f.init and f.name in values}
            try:
                out.append(dtype(**{k: values[k] for k in keys}))
            except ConfigError:
                raise
            except (TypeError, ValueError) as err:
                raise ConfigError(str(err)) from err
        return tuple(out)

    def _read_config(self, path: str) -> dict[str, Any]:
        import yaml

        if not os.path.isfile(path):
            raise ConfigError(f"--config {path!r}: no such file. Fix: check the path.")
        with open(path) as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]}). Fix: option: value "
                                  "lines.") from err
        if not isinstance(data, dict):
            raise ConfigError(f"--config {path}: holds a {type(data).__name__}. Fix: a YAML mapping of option: value "
                              "lines.")
        keys = self._known_keys()
        values = {}
        for key, value in data.items():
            if key not in keys:
                raise self._unknown(key, where=f"--config {path}")
            dest, new = keys[key]
            if new is not None:
                logger.warning(deprecation_message(f"{self.prog} --config {path}", key, new))
            values[dest] = value
        return values

    def _known_keys(self) -> dict[str, tuple[str, str | None]]:
        """`--config` keys: each field's flag name (deprecated spellings too) and the parser's other options."""
        keys = dict(self._config_keys)
        for action in self._actions:
            if action.dest not in self._catto_dests and action.dest not in ("help", "config"):
                keys.setdefault(action.dest, (action.dest, None))
        return keys

    def _unknown(self, flag: str, where: str | None = None) -> ConfigError:
        name = flag.lstrip("-").split("=")[0].replace("-", "_")
        known = sorted(k for k, (_, new) in self._known_keys().items() if new is None)
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
        hint = f" Did you mean {' or '.join('--' + c.replace('_', '-') for c in close)}?" if close else ""
        return ConfigError(f"{where + ': ' if where else ''}{flag!r} is not an option.{hint} Fix: "
                           f"`{self.prog} --help` lists them.")
