"""catto's own errors: each message names the field or file at fault and the fix.

The console (`catto ...`) prints a `CattoError` as one line and exits with status 2; any other exception is a bug or
an environment problem and keeps its traceback. Library callers can catch `CattoError` (or the built-in base each
subclass also derives from, e.g. `ValueError`) to handle user mistakes.
"""

from __future__ import annotations


class CattoError(Exception):
    """A mistake in what catto was asked to do; the message says what and how to fix it."""


class ConfigError(CattoError, ValueError):
    """A setting (a flag, a config field, a recipe key) that cannot work."""


class DataError(CattoError, ValueError):
    """A data file or row that cannot be used."""


class MissingFileError(DataError, FileNotFoundError):
    """A data file or folder that is not there."""


class ModelLoadError(CattoError, OSError):
    """A model or tokenizer that cannot be loaded."""


class ResumeMismatchError(CattoError):
    """An output folder holds results made with other settings or data; resuming would mix them."""


class OutputExistsError(CattoError):
    """Writing would overwrite earlier results or a trained model without being asked to."""


class SetupError(CattoError):
    """A package or file catto needs is missing; the message gives the command that installs it."""
