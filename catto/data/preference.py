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


def _text_of(value) -> str | None:
    """The text of a completion: a string, or the concatenated contents of a message list; None if neither."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "".join(m["content"] if isinstance(m["content"], str) else str(m["content"]) for m in value)
    return None


def implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """`(prompt, chosen, rejected)` as TRL splits a prompt-less text pair (`trl.data_utils.extract_prompt`): the
    shared beginning, less a space it ends with; when one text starts the other, all but its last character.

    >>> implicit_prompt("Q: 2 + 2 = 4", "Q: 2 + 2 = 5")
    ('Q: 2 + 2 =', ' 4', ' 5')
    """
    n = min(len(chosen), len(rejected))
    cut = n - 1
    for i in range(n):
        if chosen[i] != rejected[i]:
            cut = i - 1 if i > 0 and chosen[i - 1] == " " else i
            break
    cut = max(cut, 0)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _word_char(text: str) -> bool:
    """Whether `text` (one character, or empty) can be part of a word a tokenizer keeps whole."""
    return bool(text) and (text.isalnum() or text in "_'’")


def row_problem(row: dict, has_prompt: bool) -> tuple[str, str] | None:
    """`(field, what is wrong and the fix)` for a preference row that cannot be trained or evaluated on, else None."""
    for name in ("chosen", "rejected"):
        text = _text_of(row.get(name))
        if text is None:
            return name, (f"is a {type(row.get(name)).__name__}, not a string or a list of chat messages "
                          "({'role', 'content'}). Fix: store the completion as text or messages.")
        if not text.strip():
            return name, "is empty. Fix: give every pair a non-empty chosen and rejected completion (or drop it)."
    if type(row["chosen"]) is not type(row["rejected"]):
        return "rejected", ("is not the same kind as chosen (one text, one message list). Fix: use one format for "
                            "both.")
    if has_prompt:
        prompt = row.get("prompt")
        if _text_of(prompt) is None:
            return "prompt", (f"is a {type(prompt).__name__}, not a string or a list of chat messages. Fix: store "
                              "the prompt as text or messages.")
    else:
        chosen, rejected = row["chosen"], row["rejected"]
        if isinstance(chosen, str):
            prompt, chosen_rest, rejected_rest = implicit_prompt(chosen, rejected)
        else:  # message lists: TRL takes the shared leading messages, which never split a message
            shared = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b),
                          min(len(chosen), len(rejected)) - 1)
            prompt, chosen_rest, rejected_rest = chosen[:shared], None, None
        mid_word = isinstance(prompt, str) and bool(prompt) and _word_char(prompt[-1]) and (
            _word_char(chosen_rest[:1]) or _word_char(rejected_rest[:1]))
        if not prompt or mid_word and not any(c.isspace() for c in prompt):  # not even one whole word shared
            return "prompt", ("is missing and chosen/rejected share no beginning to take it from (TRL's implicit "
                              "prompt). Fix: add a 'prompt' column, or put the same prompt at the start of both.")
        if mid_word:
            # TRL's prompt would end inside a word: the tokenized prompt is then no prefix of the tokenized pair, and
            # TRL trains on a context cut where the tokens diverge (its "tokenized prompt is not a prefix" warning)
            shown = ("..." if len(prompt) > 24 else "") + repr(prompt[-24:])
            return "prompt", (f"is missing, and the beginning chosen and rejected share, which TRL takes as the prompt "
                              f"({shown}), ends inside a word (chosen goes on {chosen_rest[:12]!r}, rejected "
                              f"{rejected_rest[:12]!r}). Fix: add a 'prompt' column holding the shared text up to its "
                              "last whole word.")
    if row["chosen"] == row["rejected"]:
        return "rejected", "equals chosen: the pair prefers nothing. Fix: drop the row."
    return None


def validate_preference_rows(dataset, where: str, on_invalid: str = "skip"):
    """`(dataset of the valid rows, [{"row", "field", "reason"}, ...] of the others)`; with `on_invalid="raise"` the
    first invalid row is a `DataError` naming the row, the field and the fix. No valid row at all is an error."""
    if on_invalid not in ("skip", "raise"):
        raise DataError(f"on_invalid must be 'skip' or 'raise', got {on_invalid!r}.")
    has_prompt = "prompt" in dataset.column_names
    skipped, keep = [], []
    for i, row in enumerate(dataset):
        problem = row_problem(row, has_prompt)
        if problem is None:
            keep.append(i)
            continue
        field, reason = problem
        if on_invalid == "raise":
            raise DataError(f"{where} row {i}: '{field}' {reason}")
        skipped.append({"row": i, "field": field, "reason": f"'{field}' {reason}"})
    if not keep:
        raise DataError(f"{where} has no valid pair ({len(skipped)} row(s) invalid; row {skipped[0]['row']}: "
                        f"{skipped[0]['reason']})")
    return (dataset.select(keep) if skipped else dataset), skipped
