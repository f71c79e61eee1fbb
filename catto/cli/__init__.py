"""`catto` console commands: leaves that parse their arguments and call the library, nothing else.

    catto train  --config RECIPE.yaml [...]     DPO/CATTO training under accelerate launch (catto.train)
    catto eval   --method NAME [...]            one evaluation method on MCQA data (catto.pipeline.runner)
    catto report --methods A,B,C [...]          several methods on the same items, one page (catto.pipeline.report)
    catto demo   [...]                          DPO vs CATTO on SmolLM2-135M, about 8 minutes on CPU (catto.pipeline.demo)

A mistake in what was asked (a `catto.errors.CattoError`) prints one line naming the field or file and the fix,
and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from ..errors import CattoError

COMMANDS = {
    "train": ("catto.cli.train", "DPO/CATTO training from a recipe YAML under accelerate launch."),
    "eval": ("catto.cli.eval", "Accuracy and calibration of a model with one method (catto eval --method NAME "
                               "--help for its options)."),
    "report": ("catto.cli.report", "Several methods on the same items: one Markdown/HTML page + JSON."),
    "demo": ("catto.cli.demo", "DPO vs CATTO on SmolLM2-135M-Instruct and real MCQA data, on CPU (about 15 "
                               "minutes); --synthetic: a 1-minute toy."),
}


def usage() -> str:
    lines = ["usage: catto {train,eval,report,demo} [options]   (catto COMMAND --help for a command's options)", ""]
    lines += [f"  {name:<7} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def disable_progress_bars() -> None:
    """`--no-progress`: silence every progress bar (catto's, transformers', datasets')."""
    os.environ["TQDM_DISABLE"] = "1"
    try:
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from .. import __version__

        print(f"catto {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"catto: unknown command {command!r}. Fix: use one of {', '.join(COMMANDS)} (catto --help).",
              file=sys.stderr)
        return 2
    try:
        return importlib.import_module(COMMANDS[command][0]).main(rest)
    except CattoError as err:
        message = " ".join(str(err).split("\n")) if "\n" not in str(err).strip() else str(err).strip()
        prefix = f"catto {command}: "
        while message.startswith(prefix):  # the command is named once, whoever raised
            message = message[len(prefix):]
        print(prefix + message, file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
