"""catto's loggers: one `catto` logger tree writing `[catto] message` lines to stderr, on the main process only.

Under `accelerate launch` / `torchrun` every process runs the same code; only the one with RANK (or LOCAL_RANK) 0, or
none set, emits, so a message appears once, not once per GPU. The level follows `CATTO_VERBOSITY` (debug, info,
warning, error; default info), like `TRANSFORMERS_VERBOSITY`.
"""

from __future__ import annotations

import logging
import os
import sys

_ROOT = "catto"
_configured = False


class _StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at the time (test runners and notebooks swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _MainProcessOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
        return rank in ("0", "")


def _configure() -> None:
    global _configured
    if _configured:
        return
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[catto] %(message)s"))
        handler.addFilter(_MainProcessOnly())
        root.addHandler(handler)
    root.setLevel(os.environ.get("CATTO_VERBOSITY", "info").upper())
    root.propagate = False
    _configured = True


def get_logger(name: str) -> logging.Logger:
    """The logger for module `name` (under the `catto` tree)."""
    _configure()
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")
