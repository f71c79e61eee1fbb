"""catto's loggers: one `catto` logger tree writing `[catto] message` lines to stderr, on the main process only.

Under `accelerate launch` / `torchrun` every process runs the same code; only the one with RANK (or LOCAL_RANK) 0, or
none set, emits, so a message appears once, not once per GPU. The level follows `CATTO_VERBOSITY` (debug, info,
warning, error; default info), like `TRANSFORMERS_VERBOSITY`.

It also holds the one filter catto puts on another package's loggers (`quiet_bitsandbytes_hub_kernel`), installed when
`catto` is imported.
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


# bitsandbytes >= 0.50, when imported on a CPU with AVX512-BF16 (peft imports it as soon as it is installed), asks the
# `kernels` package for an optional faster CPU 4-bit matmul from the Hugging Face Hub
# (`kernels-community/quantization-bitsandbytes`, `bitsandbytes/backends/cpu/ops.py`). Offline, or online without that
# repository on the `kernels` trust list, the fetch fails and two warnings are printed on every import: "Failed to load
# CPU gemm_4bit_forward from kernels-community: ..." (logger `bitsandbytes.backends.cpu.ops`) and, offline, "Skipping
# publisher trust check for 'kernels-community/quantization-bitsandbytes' ..." (logger `kernels._internals.hf_hub`).
# Nothing is lost: bitsandbytes then uses the CPU 4-bit kernel compiled into its own library. The filter drops exactly
# these records (the ones naming that repository) and says so once at debug level (CATTO_VERBOSITY=debug).
_BNB_HUB_KERNEL = "kernels-community/quantization-bitsandbytes"
_BNB_HUB_KERNEL_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")


class _BitsandbytesHubKernelFilter(logging.Filter):
    explained = False

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # pragma: no cover - a malformed record is not ours to judge
            return True
        if _BNB_HUB_KERNEL not in message and not message.startswith("Failed to load CPU gemm_4bit_forward"):
            return True
        if not _BitsandbytesHubKernelFilter.explained:
            _BitsandbytesHubKernelFilter.explained = True
            get_logger(__name__).debug(
                f"bitsandbytes: the optional hub kernel {_BNB_HUB_KERNEL} did not load ({message[:160]}); bitsandbytes "
                "uses its built-in CPU 4-bit kernel instead (the same computation, without the hub).")
        return False


def quiet_bitsandbytes_hub_kernel() -> None:
    """Drop bitsandbytes' warnings about its optional hub CPU kernel (see above); idempotent, touches no other record.

    Must run before bitsandbytes is first imported, which is why `catto/__init__.py` calls it.
    """
    for name in _BNB_HUB_KERNEL_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, _BitsandbytesHubKernelFilter) for f in target.filters):
            target.addFilter(_BitsandbytesHubKernelFilter())
