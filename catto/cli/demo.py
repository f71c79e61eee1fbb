"""`catto demo`: parse `DemoArguments`, run `catto.pipeline.demo.run_demo`."""

from __future__ import annotations

from ..pipeline.demo import DemoArguments
from .parsing import CattoArgumentParser


def build_parser() -> CattoArgumentParser:
    return CattoArgumentParser([DemoArguments], prog="catto demo",
                               description="DPO vs CATTO on SmolLM2-135M-Instruct and real MCQA data, on CPU (about "
                                           "8 minutes on 2 cores; model and data from PyPI). --synthetic: a "
                                           "1-minute toy.")


def main(argv: list[str]) -> int:
    from ..pipeline.demo import run_demo
    from . import disable_progress_bars

    (args,) = build_parser().parse(argv)
    if args.no_progress:
        disable_progress_bars()
    run_demo(args)
    return 0
