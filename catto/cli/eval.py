"""`catto eval --method NAME`: parse `EvalArguments` + the method's config dataclass, run `catto.pipeline.runner.run_eval`.

The method is read first (`--method`, default `scoring`) so that its config fields become flags (`catto eval
--method coral --help` lists them). A field both share (`--seed`, `--eval_batch_size`, ...) is one flag.
"""

from __future__ import annotations

import argparse

from ..pipeline.runner import EvalArguments
from .parsing import CattoArgumentParser


def build_parser(method: str = "scoring") -> CattoArgumentParser:
    from ..methods import get_method_class, method_names

    cls = get_method_class(method)
    parser = CattoArgumentParser([EvalArguments, cls.config_class], prog="catto eval",
                                 description="Accuracy and calibration of a model on MCQA datasets (or held-out "
                                             "preference pairs) with one method.")
    parser.add_argument("--method", default="scoring", help="One of " + ", ".join(method_names()) + ".")
    return parser


def read_method(argv: list[str]) -> str:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default="scoring")
    return pre.parse_known_args(argv)[0].method


def main(argv: list[str]) -> int:
    from ..pipeline.runner import run_eval
    from . import disable_progress_bars

    method = read_method(argv)
    args, config = build_parser(method).parse(argv)
    if args.no_progress:
        disable_progress_bars()
    run_eval(args, method, config)
    return 0
