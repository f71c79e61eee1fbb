"""The MSP paper's abstention experiment (arXiv 2402.13213 v2 §5) against its per-question data and tables.

Protocol (``../shared/data/README.md``): per model and dataset the two phrasings are pooled and shuffled
(``random.seed(2549900867)``; ``random.shuffle``), the first 20 questions label the threshold, the rest are the test
set; one threshold per model maximises the dataset-averaged training score over the paper's grid
(`catto.methods.abstention.select_threshold`); reported is the dataset-averaged test score.

What reproduces and what does not (measured, not tuned):

- The Mann-Whitney U p-values of MSP(correct) vs MSP(wrong) equal the paper's ``stat_tests/mann_whitney.csv`` to
  full precision (also through catto's scipy-free normal approximation).
- Every published "Base" cell (no abstention) is the pooled score minus *some* 20 held-out questions: it lies within
  the exact bound that removing 20 questions can move the score (plus half a printed digit).
- The paper's claim holds in catto's replay for every model: MSP abstention never scores below answering everything,
  and under the conservative penalty it gains on all 14 models.
- The exact 20-question split could NOT be recovered: with the documented seed the published Base column matches
  only about half of the cells (as does any other shuffle variant we tried: phrasing order, interleaving, numpy's
  RNG, a seed per model or per run, the n-th shuffle of the stream). The test set is therefore not the paper's, and
  the MSP cells agree only to within the split's sampling noise; ``test_exact_cell_agreement_is_recorded`` pins which
  cells agree so a future fix of the split shows up.
"""

import csv
import random

import numpy as np
import pytest
from test_msp_paper_reproduction import (
    DATA,
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


def test_msp_abstention_never_loses_to_answering_everything(results):  # noqa: F811
    """The paper's claim (Table 3: MSP >= Base for every model), in catto's replay with the 20-question protocol."""
    published = parse_tex_table("score_table.tex")[2]
    for group, penalty in PENALTIES.items():
        gains = {}
        for name, model in DISPLAY_MODEL.items():
            msp, base = _replay(results, model, penalty)
            gains[name] = msp - base
            assert _cell(published[f"{group} MSP"][name]) >= _cell(published[f"{group} Base"][name])
        assert min(gains.values()) >= -1e-9, gains
        if group == "Conservative":
            assert min(gains.values()) > 0, gains


def test_exact_cell_agreement_is_recorded(results):  # noqa: F811
    """Which main-table cells catto's replay reproduces to the printed digit (see the module docstring: the split is
    not the paper's). A change here means the replay moved: update the docstring and the report with it."""
    published = parse_tex_table("score_table.tex")[2]
    agree = {}
    for group, penalty in PENALTIES.items():
        for name, model in DISPLAY_MODEL.items():
            msp, base = _replay(results, model, penalty)
            for column, value in (("Base", base), ("MSP", msp)):
                if round(value, 1) == _cell(published[f"{group} {column}"][name]):
                    agree.setdefault(f"{group} {column}", set()).add(name)
    counts = {k: len(v) for k, v in sorted(agree.items())}
    assert counts == EXPECTED_AGREEMENT, counts


# out of 14 models each: the published Base column (no threshold involved) agrees no better than the MSP one, so the
# disagreement is the split, not the threshold selection
EXPECTED_AGREEMENT = {"Balanced Base": 7, "Balanced MSP": 2, "Conservative Base": 5, "Conservative MSP": 1}
