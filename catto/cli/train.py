"""`catto train`: see `catto.train.launcher` (checks in this process, then `accelerate launch -m catto.train`)."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from ..train.launcher import launch

    return launch(argv)
