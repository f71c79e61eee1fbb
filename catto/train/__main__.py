"""`python -m catto.train` / `accelerate launch -m catto.train`: the training script (see `catto.train.script`)."""

import sys

from .script import run

sys.exit(run())
