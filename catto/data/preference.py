"""Preference datasets (`prompt` / `chosen` / `rejected`, TRL's format) from a hub id, a `save_to_disk` folder or a
file, checked before any model is loaded.

Used by `catto train` (`dataset_name`) and by `catto eval --method token` (`--data pairs:PATH`).

Example:
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "pairs.jsonl")
    >>> with open(path, "w") as f:
    ...     _ = f.write(json.dumps({"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}) + "\\n")
    >>> ds = load_preference_dataset(path)
    >>> check_preference_columns(ds, path); ds[0]["chosen"]
    ' 4'
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

FILE_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}


def load_preference_dataset(source: str, split: str = "train", config: str | None = None):
    """A `datasets.Dataset` of preference rows: a `save_to_disk` folder (a Dataset or a DatasetDict holding
    `split`), a .json/.jsonl/.csv/.parquet file (its rows, whatever `split` says), or a hub id."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    path = Path(os.path.expanduser(source))
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        data = load_from_disk(str(path))
        if isinstance(data, Dataset):
            return data
        if split not in data:
            raise DataError(f"{source}: its splits are {sorted(data)}, not {split!r}. Fix: pick one of them.")
        return data[split]
    if path.is_file():
        suffix = path.suffix.lower().lstrip(".")
        builder = FILE_BUILDERS.get(suffix)
        if builder is None:
            raise DataError(f"{source}: unsupported file type .{suffix}; use .json/.jsonl/.csv/.parquet.")
        try:
            return load_dataset(builder, data_files={"rows": str(path)}, split="rows")
        except Exception as err:  # datasets raises Arrow / JSON errors with no file or line in them
            raise DataError(f"{source}: could not read it as {suffix} ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else ''}). Fix: one JSON object per line "
                            "with prompt/chosen/rejected strings (or message lists).") from err
    if path.suffix.lower().lstrip(".") in FILE_BUILDERS or os.sep in source and not path.exists():
        raise DataError(f"{source}: no such file. Fix: check the path.")
    data = load_dataset(source, config)
    if isinstance(data, DatasetDict) and split not in data:
        raise DataError(f"{source}: its splits are {sorted(data)}, not {split!r}. Fix: pick one of them.")
    return data[split]


def check_preference_columns(dataset, where: str) -> None:
    """A DPO dataset needs `chosen` and `rejected` (and `prompt`, unless the prompt is inside them)."""
    columns = set(dataset.column_names)
    missing = [c for c in ("chosen", "rejected") if c not in columns]
    if missing:
        raise DataError(
            f"{where} has no {' / '.join(repr(m) for m in missing)} column (its columns: {sorted(columns)}). A "
            "preference dataset needs 'prompt', 'chosen' and 'rejected' (or 'chosen'/'rejected' holding the whole "
            "dialogue). Fix: rename the columns (dataset.rename_columns), or, for multiple-choice data, use MCQA "
            "data (`mcqa_data` in catto train).")
    if len(dataset) == 0:
        raise DataError(f"{where} is empty.")
