"""The MSP paper's abstention experiment (arXiv 2402.13213 v2 §5) on its per-question data.

Protocol (``../shared/data/README.md``): per model and dataset the two phrasings are pooled and shuffled
(``random.seed(2549900867)``; ``random.shuffle``), the first 20 questions label the threshold, the rest are the test
set; one threshold per model maximises the dataset-averaged training score over the paper's grid
(`catto.methods.abstention.select_threshold`); reported is the dataset-averaged test score.

What is asserted is what catto's implementation must do on this data, each checked against a recomputation written
out here from the per-question values: the chosen threshold is the best grid point on the 20 labelled questions (and
the first of equals); the reported test scores, base scores and abstention rates are the hand-counted ones; the
Mann-Whitney statistics equal the paper's ``stat_tests/mann_whitney.csv`` (scipy's, an external computation); every
published "Base" cell (no abstention) lies within the exact range that removing 20 questions can move catto's pooled
score; and, as the paper claims (Table 3), catto's replay never scores below answering everything.

For information only (printed by ``test_replay_against_the_published_table``, run with ``-s``; not asserted): the
exact 20-question split could NOT be recovered. With the documented seed the published Base column matches only about
half of the cells (measured: to the printed digit, Balanced Base 7/14, Balanced MSP 2/14, Conservative Base 5/14,
Conservative MSP 1/14), as does any other shuffle variant tried (phrasing order, interleaving, numpy's RNG, a seed per
model or per run, the n-th shuffle of the stream). The test set is therefore not the paper's, and the MSP cells agree
only to within the split's sampling noise; the Base column agreeing no better than the MSP one says the disagreement
is the split, not the threshold selection.
"""

import csv
import random

import numpy as np
import pytest
from test_msp_paper_reproduction import (
    DATA,
    DATASET_SIZES,
    DATASETS,
    DISPLAY_MODEL,
    PHRASINGS,
    parse_tex_table,
    results,  # noqa: F401  (module fixture: the per-question data)
)

from catto.methods.abstention import (
    NEVER_ABSTAIN,
    _mann_whitney_normal,
    abstention_score,
    abstention_summary,
    mann_whitney_u_test,
    select_threshold,
)

pytestmark = pytest.mark.integration

SEED = 2549900867
N_TRAIN = 20
PENALTIES = {"Balanced": 1.0, "Conservative": 2.0}


def _cell(text):
    return float(text.replace("\\textbf{", "").replace("}", "").replace("\\offset", "").replace("~", "").strip())


def _pooled(results, model, dataset):  # noqa: F811
    parts = [results[(model, dataset, "norm", ph)] for ph in PHRASINGS]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _split(results, model, dataset):  # noqa: F811
    conf, correct = _pooled(results, model, dataset)
    order = list(range(conf.size))
    random.seed(SEED)
    random.shuffle(order)
    order = np.array(order)
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    return (conf[train], correct[train]), (conf[test], correct[test])


def _replay(results, model, penalty):  # noqa: F811
    """catto's replay of the paper's protocol: (MSP test score, base test score), dataset-averaged."""
    splits = [_split(results, model, ds) for ds in DATASETS]
    threshold = select_threshold([train for train, _ in splits], penalty).threshold
    msp = float(np.mean([abstention_score(*test, threshold, penalty) for _, test in splits]))
    base = float(np.mean([abstention_score(*test, NEVER_ABSTAIN, penalty) for _, test in splits]))
    return msp, base


def test_mann_whitney_p_values_match_the_papers_csv(results):  # noqa: F811
    n = 0
    with open(DATA / "stat_tests" / "mann_whitney.csv") as f:
        for row in csv.DictReader(f):
            key = (row["model"], row["dataset"], row["value"].split("_")[0], row["prompt"].split("_")[0])
            conf, correct = results[key]
            out = mann_whitney_u_test(conf, correct)
            assert out["u"] == pytest.approx(float(row["u_stat"]), rel=1e-12), key
            assert out["p_value"] == pytest.approx(float(row["p_value"]), rel=1e-9, abs=1e-300), key
            u, p = _mann_whitney_normal(np.asarray(conf, float), np.asarray(correct, bool))  # the scipy-free path
            assert u == pytest.approx(out["u"], rel=1e-12) and p == pytest.approx(out["p_value"], rel=1e-6,
                                                                                   abs=1e-300), key
            n += 1
    assert n == 260


@pytest.mark.parametrize("dataset", DATASETS)
def test_base_cells_are_the_pooled_score_minus_twenty_questions(results, dataset):  # noqa: F811
    cols = parse_tex_table(f"{dataset}_score_table.tex")[2]
    for group, penalty in PENALTIES.items():
        for name, cell in cols[f"{group} Base"].items():
            conf, correct = _pooled(results, DISPLAY_MODEL[name], dataset)
            n = conf.size
            points = abstention_score(conf, correct, NEVER_ABSTAIN, penalty) * n / 100
            # removing 20 questions worth r points each, r in [-penalty, 1]: the test score's exact range
            lo = (points - N_TRAIN * 1.0) / (n - N_TRAIN) * 100
            hi = (points + N_TRAIN * penalty) / (n - N_TRAIN) * 100
            assert lo - 0.05 <= _cell(cell) <= hi + 0.05, (dataset, group, name, cell, lo, hi)


def _grid_by_hand(confidences):
    """The paper's candidate thresholds: just below 0, 200 points from 0 to the largest confidence, and 100 more
    between 0.99 and 1 when the confidences reach 0.99."""
    top = max(confidences)
    grid = [-1e-9] + [top * i / 199 for i in range(200)]
    if top >= 0.99:
        grid += [0.99 + 0.01 * i / 99 for i in range(100)]
    return grid


def _score_by_hand(conf, correct, threshold, penalty):
    """Points per question x 100: +1 per answered correct, -penalty per answered wrong, 0 per abstention."""
    points = 0.0
    for c, ok in zip(conf.tolist(), correct.tolist()):
        if c >= threshold:
            points += 1.0 if ok else -penalty
    return points / len(conf) * 100


@pytest.mark.parametrize("group", sorted(PENALTIES))
def test_threshold_is_the_best_grid_point_on_the_labelled_questions(results, group):  # noqa: F811
    penalty = PENALTIES[group]
    for model in DISPLAY_MODEL.values():
        trains = [_split(results, model, ds)[0] for ds in DATASETS]
        choice = select_threshold(trains, penalty)
        grid = _grid_by_hand([c for conf, _ in trains for c in conf.tolist()])
        by_hand = [np.mean([_score_by_hand(conf, ok, t, penalty) for conf, ok in trains]) for t in grid]
        best = max(by_hand)
        assert choice.score == pytest.approx(best, abs=1e-9), model
        # the threshold returned scores that maximum on the training split, and it is the first grid point that does
        first = next(t for t, v in zip(grid, by_hand) if v >= best - 1e-9)
        assert choice.threshold == pytest.approx(first, abs=1e-12), model
        assert np.mean([_score_by_hand(conf, ok, choice.threshold, penalty) for conf, ok in trains]) == \
            pytest.approx(best, abs=1e-9)
        # never worse than answering everything there (the grid holds the "never abstain" point)
        assert best >= np.mean([_score_by_hand(conf, ok, -1e-9, penalty) for conf, ok in trains]) - 1e-9


@pytest.mark.parametrize("group", sorted(PENALTIES))
def test_reported_test_scores_match_a_recount_of_the_test_questions(results, group):  # noqa: F811
    penalty = PENALTIES[group]
    for model in DISPLAY_MODEL.values():
        splits = [_split(results, model, ds) for ds in DATASETS]
        msp, base = _replay(results, model, penalty)
        threshold = select_threshold([train for train, _ in splits], penalty).threshold
        per_dataset = []
        for (conf, correct), ds in zip((test for _, test in splits), DATASETS):
            n = len(conf)
            answered = [i for i in range(n) if conf[i] >= threshold]
            right = sum(bool(correct[i]) for i in answered)
            per_dataset.append(((right - penalty * (len(answered) - right)) / n * 100,
                                (int(correct.sum()) - penalty * (n - int(correct.sum()))) / n * 100,
                                (n - len(answered)) / n * 100))
            summary = abstention_summary(conf, correct, threshold, penalty)
            assert summary["n"] == n == len(PHRASINGS) * DATASET_SIZES[ds] - N_TRAIN  # both phrasings pooled
            assert summary["score_abstain"] == pytest.approx(per_dataset[-1][0], abs=1e-9), (model, ds)
            assert summary["score_base"] == pytest.approx(per_dataset[-1][1], abs=1e-9), (model, ds)
            assert summary["pct_abstained"] == pytest.approx(per_dataset[-1][2], abs=1e-9), (model, ds)
        assert msp == pytest.approx(np.mean([v[0] for v in per_dataset]), abs=1e-9), model
        assert base == pytest.approx(np.mean([v[1] for v in per_dataset]), abs=1e-9), model


def test_msp_abstention_never_loses_to_answering_everything(results):  # noqa: F811
    """The paper's claim (Table 3: MSP >= Base for every model), in catto's replay with the 20-question protocol."""
    for group, penalty in PENALTIES.items():
        gains = {}
        for name, model in DISPLAY_MODEL.items():
            msp, base = _replay(results, model, penalty)
            gains[name] = msp - base
        assert min(gains.values()) >= -1e-9, gains
        if group == "Conservative":
            assert min(gains.values()) > 0, gains


def test_replay_against_the_published_table(results):  # noqa: F811
    """The replay next to the paper's main table, printed for information (see the module docstring: the split is
    not the paper's, so which cells agree to the printed digit is reported, not asserted). Asserted: every published
    cell parses, and every replayed score is a valid score in [-100 * penalty, 100]."""
    published = parse_tex_table("score_table.tex")[2]
    lines, agree = [], {}
    for group, penalty in PENALTIES.items():
        for name, model in DISPLAY_MODEL.items():
            msp, base = _replay(results, model, penalty)
            assert -100 * penalty <= base <= 100 and -100 * penalty <= msp <= 100, (group, name)
            row = []
            for column, value in (("Base", base), ("MSP", msp)):
                paper = _cell(published[f"{group} {column}"][name])
                same = round(value, 1) == paper
                agree[f"{group} {column}"] = agree.get(f"{group} {column}", 0) + same
                row.append(f"{column} {value:6.2f} (paper {paper:5.1f}{', same' if same else ''})")
            lines.append(f"{group:12s} {name:13s} " + "  ".join(row))
    print("\nMSP abstention, catto's replay vs the paper's score_table.tex:\n" + "\n".join(lines))
    print("cells equal to the printed digit, of 14:", agree)
