"""`catto report`: parse `EvalArguments` + `ReportArguments`, run `catto.pipeline.report.run_report`."""

from __future__ import annotations

from ..pipeline.report import ReportArguments
from ..pipeline.runner import EvalArguments
from .parsing import CattoArgumentParser


def build_parser() -> CattoArgumentParser:
    return CattoArgumentParser([EvalArguments, ReportArguments], prog="catto report",
                               description="Several calibration methods on the same items: one Markdown/HTML page "
                                           "+ JSON.")


def main(argv: list[str]) -> int:
    from ..pipeline.report import run_report
    from . import disable_progress_bars

    args, report = build_parser().parse(argv)
    if args.no_progress:
        disable_progress_bars()
    run_report(args, report)
    return 0
