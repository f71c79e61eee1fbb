"""One argument parser for catto's commands: `transformers.HfArgumentParser` over config dataclasses.

Every field of every dataclass is a flag, spelled with underscores or dashes (`--batch_size` / `--batch-size`), with
the field's `metadata["help"]`; `--config FILE.yaml` sets defaults from a YAML mapping (flags still override it),
like `catto train` and TRL's scripts. On top of HfArgumentParser:

- a field whose name an earlier dataclass already has is not a second flag: the one flag fills both (so `--seed`
  seeds the run and the method, `--batch-size` sizes every method's batches);
- `metadata["parse"]`: a function from the flag's text to the value (e.g. `--k 1,2,4,8,16`);
- `metadata["cli"] = False`: the field is Python-API only (an object, not a flag);
- errors are a `ConfigError` with argparse's one-line message, not usage text and `SystemExit`;
- values are validated when the dataclasses are built (`__post_init__`), i.e. at parse time, before any work.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
from collections.abc import Sequence
from typing import Any, get_type_hints

from transformers import HfArgumentParser

from ..errors import ConfigError

_OWN_METADATA = ("parse", "cli")


class CattoArgumentParser(HfArgumentParser):
    """See the module docstring."""

    def __init__(self, dataclass_types: Sequence[type], prog: str, description: str | None = None):
        self._catto_dests: set[str] = set()
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
            f = copy.copy(f)
            f.type = hints[f.name]
            parse = f.metadata.get("parse")
            f.metadata = types.MappingProxyType({k: v for k, v in f.metadata.items() if k not in _OWN_METADATA})
            self._parse_dataclass_field(parser, f)
            self._catto_dests.add(f.name)
            if parse is not None:
                for action in self._actions:
                    if action.dest == f.name:
                        action.type, action.nargs = parse, None

    def error(self, message: str):  # argparse's usage + exit, as one line the console prints
        raise ConfigError(f"{self.prog}: {message}")

    def parse(self, argv: Sequence[str]) -> tuple[Any, ...]:
        """The dataclass instances for `argv` (with `--config FILE.yaml` defaults)."""
        argv = list(argv)
        config_path = None
        if "--config" in argv:
            i = argv.index("--config")
            if i + 1 >= len(argv):
                raise ConfigError(f"{self.prog}: --config needs a value. Fix: --config FILE.yaml.")
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
                raise ConfigError(f"{self.prog}: {err}") from err
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
        known = {a.dest for a in self._actions}
        for key in data:
            if key not in known:
                raise self._unknown(key, where=f"--config {path}")
        return data

    def _unknown(self, flag: str, where: str | None = None) -> ConfigError:
        name = flag.lstrip("-").split("=")[0].replace("-", "_")
        known = sorted({a.dest for a in self._actions} - {"help"})
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
        hint = f" Did you mean {' or '.join('--' + c.replace('_', '-') for c in close)}?" if close else ""
        return ConfigError(f"{where or self.prog}: {flag!r} is not an option.{hint} Fix: "
                           f"`{self.prog} --help` lists them.")
