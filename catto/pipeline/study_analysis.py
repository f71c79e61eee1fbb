"""What a study's records become: per-run metrics (per set and all out-of-distribution sets pooled), paired
differences on the same items, the written selection rule, tables and plots. Pure functions over records and the
JSON they produce, so a committed `study.json` is re-rendered (and its tables checked) without a model.

The selection rule (written before the results of the first study; `select_default` and `apply_noise_rule`):

1. eligible: CATTO arms (names starting with `catto`) whose mean over seeds of MCQA accuracy, ID and pooled OOD, and
   held-out token accuracy, ID and pooled OOD, are each at most `tolerance` (one point) below DPO's, each arm
   compared with DPO on the seeds both were trained with;
2. chosen: the eligible arm with the lowest mean pooled-OOD held-out token ECE (chosen responses), on the seeds the
   eligible arms share;
3. it changes catto's defaults only if, on every seed, its pooled-OOD token ECE is below DPO's beyond the paired
   bootstrap interval and its pooled-OOD MCQA ECE is not above DPO's beyond the interval, and it is not already
   the default arm.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..eval.compare import paired_difference
from ..eval.metrics import aurc, auroc, bootstrap_ci, ece, ece_estimate, top_label_brier_score
from ..io import atomic_write

N_BINS = 15
# Where a summary says the rule is written (a study may name its own).
RULE_SOURCE = "the docstring of benchmarks/calibration_study.py"

# ----------------------------------------------------------------------------------------------------------------
# Metrics of one run on one set (or pooled sets)


def _interval(fn, conf, correct, n_resamples, seed):
    value, low, high = bootstrap_ci(fn, conf, correct, n_resamples=n_resamples, seed=seed)
    return {"value": value, "ci": [low, high]}


def mcqa_metrics(results, n_resamples: int, seed: int = 0) -> dict:
    """MCQA calibration of per-item records: accuracy, ECE (15 and 10 equal-width bins, 15 equal-mass; with the
    debiased estimate and noise floor), Brier, AUROC, AURC, each with its 95 % bootstrap interval."""
    conf = np.array([r.confidence for r in results])
    correct = np.array([bool(r.correct) for r in results], dtype=float)
    out = {"n": len(results), "mean_confidence": float(conf.mean())}
    out["accuracy"] = _interval(lambda c, y: float(np.mean(y)), conf, correct, n_resamples, seed)
    out["ece15"] = ece_estimate(conf, correct, n_bins=15, n_resamples=n_resamples, seed=seed)
    out["ece10"] = ece_estimate(conf, correct, n_bins=10, n_resamples=n_resamples, n_simulations=0, seed=seed)
    out["ece15_mass"] = ece_estimate(conf, correct, n_bins=15, binning="equal_mass", n_resamples=n_resamples,
                                     seed=seed)
    for name, fn in (("brier", top_label_brier_score), ("auroc", auroc), ("aurc", aurc)):
        out[name] = _interval(fn, conf, correct, n_resamples, seed)
    return out


def token_metrics_of(results, n_resamples: int, seed: int = 0) -> dict:
    """Held-out token calibration of per-pair records (`catto.eval.token.summarize_token_results`, 15 bins)."""
    from ..eval.token import summarize_token_results

    return summarize_token_results(results, n_bins=N_BINS, n_resamples=n_resamples, seed=seed)


def _prefixed(results, name):
    """Records of one set with their ids prefixed by the set's name (ids are only unique within a set)."""
    return [dataclasses.replace(r, id=f"{name}:{r.id}") for r in results]


def run_metrics(mcqa: dict, tokens: dict, id_name: str, n_resamples: int) -> dict:
    """One run's metrics: `{"per_set": {set: {"mcqa": ..., "token": ...}}, "pooled_ood": {...}}` from its
    `{set: records}` of MCQA scoring and held-out tokens; the pooled block joins every set but `id_name`."""
    ood = [n for n in mcqa if n != id_name]
    per_set = {n: {"mcqa": mcqa_metrics(mcqa[n], n_resamples), "token": token_metrics_of(tokens[n], n_resamples)}
               for n in mcqa}
    pooled = {}
    if ood:
        pooled = {"mcqa": mcqa_metrics([r for n in ood for r in mcqa[n]], n_resamples),
                  "token": token_metrics_of([r for n in ood for r in _prefixed(tokens[n], n)], n_resamples)}
    return {"per_set": per_set, "pooled_ood": pooled}


def records_fingerprint(mcqa: dict, tokens: dict) -> str:
    """A SHA-256 of one run's `{set: records}` (MCQA and token): equal fingerprints, equal metrics, so a cached
    metric is reused only for the records it was computed from."""
    digest = hashlib.sha256()
    for kind, by_set in (("mcqa", mcqa), ("token", tokens)):
        for name in sorted(by_set):
            digest.update(f"{kind}\t{name}\n".encode())
            for record in by_set[name]:
                digest.update(record.to_json().encode() + b"\n")
    return digest.hexdigest()


def comparisons(keys: list[str], also_vs: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """`(run, reference)` pairs: DPO vs base; every other arm vs DPO of the same seed; every CATTO arm vs the
    paper's DPO + BCE baseline of the same seed; and every arm with a term vs each arm of `also_vs` (e.g. the
    default arm, which a loss-form rule must beat) of the same seed; each where that run exists."""
    pairs = []
    for key in keys:
        arm, seed = key.rsplit("-s", 1)
        if arm == "base":
            continue
        refs = ["base-s0"] if arm == "dpo" else [f"dpo-s{seed}"]
        if arm.startswith("catto"):
            refs.append(f"dpo_bce-s{seed}")
        if arm != "dpo":
            refs += [f"{ref}-s{seed}" for ref in also_vs if ref != arm and ref != "dpo_bce"]
        pairs += [(key, ref) for ref in refs if ref in keys and ref != key]
    return pairs


def paired_differences(mcqa: dict, tokens: dict, id_name: str, n_resamples: int,
                       also_vs: tuple[str, ...] = (),
                       cache: Callable[[str, str, Callable[[], dict]], dict] | None = None) -> dict:
    """`mcqa` and `tokens` are `{run key: {set: records}}`. Each pair of `comparisons` on the same items/pairs: ID
    and pooled OOD, paired bootstrap (MCQA: items; token: pairs); the answer's own tokens apart where the records
    name the EOS. `cache(key, ref, compute)`, if given, returns one pair's entry (e.g. from a file, see
    `benchmarks/calibration_study.py`) or `compute()`."""
    out = {}
    for key, ref in comparisons(list(mcqa), also_vs):
        compute = functools.partial(paired_entry, mcqa[key], mcqa[ref], tokens[key], tokens[ref], id_name,
                                    n_resamples)
        out[f"{key} vs {ref}"] = cache(key, ref, compute) if cache is not None else compute()
    return out


def paired_entry(mcqa_a: dict, mcqa_b: dict, tokens_a: dict, tokens_b: dict, id_name: str,
                 n_resamples: int) -> dict:
    """Run a − run b (each `{set: records}`) in distribution and pooled out of distribution, paired on the same
    items: MCQA accuracy and ECE, token accuracy and ECE (all tokens, and the answer's own where the EOS is named)."""
    from ..eval.token import eos_token_id_of, paired_token_difference

    ece15 = functools.partial(ece, n_bins=N_BINS)

    def accuracy(conf, correct):
        return float(np.mean(correct))

    def pooled_mcqa(by_set, names):
        res = [r for n in names for r in by_set[n]]
        return [r.confidence for r in res], [bool(r.correct) for r in res]

    def pooled_tokens(by_set, names):
        return [r for n in names for r in _prefixed(by_set[n], n)]

    names = list(mcqa_a)
    groups = {"id": [id_name], "ood": [n for n in names if n != id_name]}
    entry = {}
    for group, members in groups.items():
        if not members:
            continue
        a, b = pooled_mcqa(mcqa_a, members), pooled_mcqa(mcqa_b, members)
        ta, tb = pooled_tokens(tokens_a, members), pooled_tokens(tokens_b, members)
        entry[group] = {
            "n_items": len(a[0]),
            "mcqa_accuracy": paired_difference(accuracy, a, b, n_resamples=n_resamples, seed=0),
            "mcqa_ece15": paired_difference(ece15, a, b, n_resamples=n_resamples, seed=0, method="basic"),
            "token_accuracy": paired_token_difference(ta, tb, "accuracy", n_resamples=n_resamples),
            "token_ece": paired_token_difference(ta, tb, "ece", n_bins=N_BINS, n_resamples=n_resamples),
        }
        if eos_token_id_of(ta) is not None and eos_token_id_of(tb) is not None:
            for metric in ("accuracy", "ece"):
                entry[group][f"answer_token_{metric}"] = paired_token_difference(
                    ta, tb, metric, part="answer", n_bins=N_BINS, n_resamples=n_resamples)
    return entry


TABLE_FIELDS = {
    "mcqa_accuracy": ("mcqa", "accuracy", "value"), "mcqa_ece15": ("mcqa", "ece15", "value"),
    "mcqa_ece15_debiased": ("mcqa", "ece15", "debiased"), "mcqa_confidence": ("mcqa", "mean_confidence", None),
    "token_accuracy": ("token", "accuracy", "value"), "token_confidence": ("token", "confidence", "value"),
    "token_ece": ("token", "ece", "value"), "token_ece_debiased": ("token", "ece", "debiased"),
    "token_ece_mass": ("token", "ece_equal_mass", "value"),
    "token_ece_noise_floor": ("token", "ece", "noise_floor"),
    "mcqa_ece15_noise_floor": ("mcqa", "ece15", "noise_floor"),
    # the answer's own tokens and the EOS apart (records that name the EOS id)
    "answer_token_accuracy": ("token:answer", "accuracy", "value"), "answer_token_ece": ("token:answer", "ece", "value"),
    "eos_token_accuracy": ("token:eos", "accuracy", "value"), "eos_token_ece": ("token:eos", "ece", "value"),
}


def run_row(run: dict, id_name: str) -> dict:
    """One run's ID and pooled-OOD numbers the rule and the README use, as `{"id_token_ece": ..., ...}`."""
    row = {}
    metrics = run["metrics"]
    for name, (kind, metric, sub) in TABLE_FIELDS.items():
        for scope, block in (("id", metrics["per_set"].get(id_name)), ("ood", metrics["pooled_ood"])):
            if not block:
                continue
            if kind == "mcqa":
                node = block["mcqa"]
            else:
                node = block["token"]["chosen"]
                if ":" in kind:  # a part: only where the records named the EOS
                    node = node.get("parts", {}).get(kind.split(":")[1])
                    if node is None:
                        continue
            row[f"{scope}_{name}"] = float(node[metric] if sub is None else node[metric][sub])
    return row


def rows_by_seed(runs: dict, arms: list[str], id_name: str) -> dict[str, dict[int, dict]]:
    """`{arm: {seed: run_row}}`: what `select_default` compares."""
    return {arm: {r["seed"]: run_row(r, id_name) for r in runs.values() if r["arm"] == arm}
            for arm in arms if any(r["arm"] == arm for r in runs.values())}


def table_over_seeds(runs: dict, arms: list[str], id_name: str) -> dict:
    """Per arm: means (and sd) over seeds of `run_row`'s numbers."""
    table = {}
    for arm, by_seed in rows_by_seed(runs, arms, id_name).items():
        row = {"seeds": sorted(by_seed)}
        for field in next(iter(by_seed.values())):
            vals = [r[field] for r in by_seed.values() if field in r]
            row[field], row[f"{field}_sd"] = float(np.mean(vals)), float(np.std(vals))
        table[arm] = row
    return table



# ----------------------------------------------------------------------------------------------------------------
# Selection


def select_default(rows: dict[str, dict[int, dict]], tolerance: float = 0.01) -> dict:
    """Rule steps 1-2 (see the module docstring) on `{arm: {seed: row}}` (`rows_by_seed`).

    Each arm is compared with DPO on the seeds both were trained with: a screened arm has the first seed only, and
    DPO's mean over three seeds is not its match (seed-to-seed spread is several points here). The choice among the
    eligible arms is made on the seeds they all share, for the same reason."""
    if "dpo" not in rows:
        return {"chosen": None, "reason": "no dpo arm to compare with"}
    dpo = rows["dpo"]
    accuracy_keys = ("id_mcqa_accuracy", "ood_mcqa_accuracy", "id_token_accuracy", "ood_token_accuracy")

    def vs_dpo(arm: str, key: str, seeds: list[int]) -> float:
        return float(np.mean([rows[arm][s][key] - dpo[s][key] for s in seeds]))

    eligible, costs, seeds_of = [], {}, {}
    for arm in rows:
        if not arm.startswith("catto"):
            continue
        seeds_of[arm] = sorted(set(rows[arm]) & set(dpo))
        if not seeds_of[arm]:
            costs[arm] = {"reason": "no DPO run with its seeds"}
            continue
        costs[arm] = {k: -vs_dpo(arm, k, seeds_of[arm]) for k in accuracy_keys}
        if all(cost <= tolerance for cost in costs[arm].values()):
            eligible.append(arm)
    if not eligible:
        return {"chosen": None, "accuracy_cost_vs_dpo": costs, "compared_on_seeds": seeds_of,
                "reason": f"no CATTO arm within {tolerance:.2f} of DPO's MCQA and token accuracy (ID and OOD)"}
    choice_seeds = sorted(set.intersection(*(set(seeds_of[a]) for a in eligible)))
    chosen = min(eligible, key=lambda arm: vs_dpo(arm, "ood_token_ece", choice_seeds))
    return {"chosen": chosen, "eligible": sorted(eligible), "tolerance": tolerance, "accuracy_cost_vs_dpo": costs,
            "compared_on_seeds": seeds_of, "choice_seeds": choice_seeds,
            "ood_token_ece_vs_dpo_on_choice_seeds": {a: vs_dpo(a, "ood_token_ece", choice_seeds) for a in eligible},
            "ood_token_ece_vs_dpo": vs_dpo(chosen, "ood_token_ece", seeds_of[chosen]),
            "ood_mcqa_ece_vs_dpo": vs_dpo(chosen, "ood_mcqa_ece15", seeds_of[chosen])}


def apply_noise_rule(selection: dict, paired: dict, default_arm: str = "catto_a0.3") -> dict:
    """Rule step 3 (see the module docstring): the chosen arm changes the defaults only if, on every seed, its
    pooled-OOD token ECE is below DPO's beyond the paired interval and its pooled-OOD MCQA ECE is not above DPO's
    beyond the interval (and it is not already `default_arm`, the arm matching catto's defaults). `paired` is
    `paired_differences`' output. Returns `selection` with the per-seed intervals
    and the verdicts added (each condition apart, so a report can say which one failed)."""
    chosen = selection.get("chosen")
    if not chosen:
        return selection
    per_seed = {name: e["ood"] for name, e in paired.items()
                if name.startswith(f"{chosen}-s") and " vs dpo-s" in name and "ood" in e}
    token_better = bool(per_seed) and all(e["token_ece"]["ci"][1] < 0 for e in per_seed.values())
    mcqa_not_worse = bool(per_seed) and all(e["mcqa_ece15"]["ci"][0] <= 0 for e in per_seed.values())
    return {**selection,
            "per_seed_ood_token_ece_ci_vs_dpo": {n: e["token_ece"]["ci"] for n, e in per_seed.items()},
            "per_seed_ood_mcqa_ece_ci_vs_dpo": {n: e["mcqa_ece15"]["ci"] for n, e in per_seed.items()},
            "token_ece_below_dpo_every_seed": token_better, "mcqa_ece_not_above_dpo_every_seed": mcqa_not_worse,
            "beyond_noise": token_better and mcqa_not_worse,
            "changes_defaults": token_better and mcqa_not_worse and chosen != default_arm}


# The loss-form study's rule (issue 27, part 2; benchmarks/results/loss_form_study/RULE.md, written before its runs):
# answer-token numbers (the EOS apart), every arm with a term a candidate, the default arm the one to beat.
LOSS_FORM_ACCURACY_KEYS = ("id_mcqa_accuracy", "ood_mcqa_accuracy", "id_answer_token_accuracy",
                           "ood_answer_token_accuracy")


def select_loss_form(rows: dict[str, dict[int, dict]], tolerance: float = 0.01) -> dict:
    """Steps 1-2 of the loss-form rule on `{arm: {seed: row}}` (`rows_by_seed`): eligible = every arm with a term
    (not `base`, not `dpo`) whose mean MCQA and answer-token accuracy, ID and pooled OOD, are each at most
    `tolerance` below DPO's on the seeds both have; chosen = the eligible arm with the lowest mean pooled-OOD
    answer-token ECE on the seeds the eligible arms share."""
    if "dpo" not in rows:
        return {"chosen": None, "reason": "no dpo arm to compare with"}
    dpo = rows["dpo"]

    def vs_dpo(arm: str, key: str, seeds: list[int]) -> float:
        return float(np.mean([rows[arm][s][key] - dpo[s][key] for s in seeds]))

    eligible, costs, seeds_of = [], {}, {}
    for arm in rows:
        if arm in ("base", "dpo"):
            continue
        seeds_of[arm] = sorted(set(rows[arm]) & set(dpo))
        missing = [k for k in LOSS_FORM_ACCURACY_KEYS + ("ood_answer_token_ece",)
                   if any(k not in rows[arm][s] or k not in dpo[s] for s in seeds_of[arm])]
        if not seeds_of[arm] or missing:
            costs[arm] = {"reason": "no DPO run with its seeds" if not seeds_of[arm] else
                          f"no answer-token numbers ({', '.join(missing)}): records without the EOS named"}
            continue
        costs[arm] = {k: -vs_dpo(arm, k, seeds_of[arm]) for k in LOSS_FORM_ACCURACY_KEYS}
        if all(cost <= tolerance for cost in costs[arm].values()):
            eligible.append(arm)
    if not eligible:
        return {"chosen": None, "accuracy_cost_vs_dpo": costs, "compared_on_seeds": seeds_of,
                "reason": f"no arm within {tolerance:.2f} of DPO's MCQA and answer-token accuracy (ID and OOD)"}
    choice_seeds = sorted(set.intersection(*(set(seeds_of[a]) for a in eligible)))
    key = "ood_answer_token_ece"
    chosen = min(eligible, key=lambda arm: vs_dpo(arm, key, choice_seeds))
    return {"rule": "loss_form", "chosen": chosen, "eligible": sorted(eligible), "tolerance": tolerance,
            "accuracy_cost_vs_dpo": costs, "compared_on_seeds": seeds_of, "choice_seeds": choice_seeds,
            "ood_answer_token_ece_vs_dpo_on_choice_seeds": {a: vs_dpo(a, key, choice_seeds) for a in eligible},
            "ood_answer_token_ece_vs_dpo": vs_dpo(chosen, key, seeds_of[chosen]),
            "ood_mcqa_ece_vs_dpo": vs_dpo(chosen, "ood_mcqa_ece15", seeds_of[chosen])}


def apply_loss_form_noise_rule(selection: dict, paired: dict, default_arm: str = "catto_a0.3",
                               required_seeds: int = 3) -> dict:
    """Step 3 of the loss-form rule: the chosen arm changes the defaults only if it is not `default_arm` and, on every
    seed, its pooled-OOD answer-token ECE is below the default arm's beyond the paired interval and its pooled-OOD
    MCQA ECE is not above it beyond the interval (`paired` from `paired_differences(..., also_vs=(default_arm,))`),
    on at least `required_seeds` seeds (the rule's three): with fewer the verdict is reported as provisional and the
    defaults stay."""
    chosen = selection.get("chosen")
    if not chosen:
        return selection
    if chosen == default_arm:
        return {**selection, "beyond_noise": None, "changes_defaults": False,
                "reason_defaults": f"the chosen arm is the default arm ({default_arm})"}
    per_seed = {name: e["ood"] for name, e in paired.items()
                if name.startswith(f"{chosen}-s") and f" vs {default_arm}-s" in name and "ood" in e}
    token_better = bool(per_seed) and all("answer_token_ece" in e and e["answer_token_ece"]["ci"][1] < 0
                                          for e in per_seed.values())
    mcqa_not_worse = bool(per_seed) and all(e["mcqa_ece15"]["ci"][0] <= 0 for e in per_seed.values())
    enough = len(per_seed) >= required_seeds
    return {**selection, "default_arm": default_arm, "seeds_compared": len(per_seed), "seeds_required": required_seeds,
            "provisional": not enough,
            "per_seed_ood_answer_token_ece_ci_vs_default": {n: e.get("answer_token_ece", {}).get("ci")
                                                            for n, e in per_seed.items()},
            "per_seed_ood_mcqa_ece_ci_vs_default": {n: e["mcqa_ece15"]["ci"] for n, e in per_seed.items()},
            "answer_token_ece_below_default_every_seed": token_better,
            "mcqa_ece_not_above_default_every_seed": mcqa_not_worse,
            "beyond_noise": token_better and mcqa_not_worse,
            "changes_defaults": token_better and mcqa_not_worse and enough}


# ----------------------------------------------------------------------------------------------------------------
# Reports


def _ci(e: dict, signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(e["value"])
    if e.get("ci"):
        text += " [" + fmt.format(e["ci"][0]) + ", " + fmt.format(e["ci"][1]) + "]"
    return text


def selection_lines(sel: dict) -> list[str]:
    """The rule's verdict in words (the JSON below it has every number)."""
    if not sel.get("chosen"):
        return [f"- No arm chosen: {sel.get('reason', '')}."]

    def yes(flag):
        return "yes" if flag else "**no**"

    if sel.get("rule") == "loss_form":
        lines = [f"- Eligible (MCQA and answer-token accuracy within {sel['tolerance']:.2f} of DPO on the same "
                 f"seeds): {', '.join(sel['eligible'])}; chosen on seeds {sel['choice_seeds']}: **{sel['chosen']}** "
                 f"(pooled-OOD answer-token ECE vs DPO {sel['ood_answer_token_ece_vs_dpo']:+.3f} over its seeds)."]
        if sel.get("beyond_noise") is None:
            return lines + [f"- Defaults: unchanged ({sel.get('reason_defaults', '')})."]
        token = "; ".join(f"{k.split(' vs ')[0]} " + ("-" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]")
                          for k, ci in sel["per_seed_ood_answer_token_ece_ci_vs_default"].items())
        mcqa = "; ".join(f"{k.split(' vs ')[0]} [{a:+.3f}, {b:+.3f}]"
                         for k, (a, b) in sel["per_seed_ood_mcqa_ece_ci_vs_default"].items())
        return lines + [
            f"- Pooled-OOD answer-token ECE below the default arm ({sel['default_arm']}) beyond the paired interval on "
            f"every seed: {yes(sel['answer_token_ece_below_default_every_seed'])} ({token}).",
            f"- Pooled-OOD MCQA ECE not above the default arm's beyond the interval on every seed: "
            f"{yes(sel['mcqa_ece_not_above_default_every_seed'])} ({mcqa}).",
            f"- Defaults: {'change to ' + sel['chosen'] if sel['changes_defaults'] else 'unchanged'}"
            + (f" (**provisional**: {sel['seeds_compared']} of the rule's {sel['seeds_required']} seeds)."
               if sel.get("provisional") else ".")]

    lines = [f"- Eligible (accuracy within {sel['tolerance']:.2f} of DPO on the same seeds): "
             f"{', '.join(sel['eligible'])}; chosen on seeds {sel['choice_seeds']}: **{sel['chosen']}** "
             f"(pooled-OOD token ECE vs DPO {sel['ood_token_ece_vs_dpo']:+.3f} over its seeds)."]
    if "beyond_noise" in sel:
        token = "; ".join(f"{k.split(' vs ')[0]} [{a:+.3f}, {b:+.3f}]"
                          for k, (a, b) in sel["per_seed_ood_token_ece_ci_vs_dpo"].items())
        mcqa = "; ".join(f"{k.split(' vs ')[0]} [{a:+.3f}, {b:+.3f}]"
                         for k, (a, b) in sel["per_seed_ood_mcqa_ece_ci_vs_dpo"].items())
        lines += [f"- Pooled-OOD token ECE below DPO beyond the paired interval on every seed: "
                  f"{yes(sel['token_ece_below_dpo_every_seed'])} ({token}).",
                  f"- Pooled-OOD MCQA ECE not above DPO beyond the interval on every seed: "
                  f"{yes(sel['mcqa_ece_not_above_dpo_every_seed'])} ({mcqa}).",
                  f"- Defaults: {'change to ' + sel['chosen'] if sel['changes_defaults'] else 'unchanged'}."]
    return lines


def summary_markdown(payload: dict) -> str:
    p = payload
    sets = ", ".join(f"{k} {v['n']}" for k, v in p["eval_data"].items())
    lines = [f"# Calibration study: {os.path.basename(p['model'])}", "", f"Command: `{p['command']}`", "",
             f"Training: {p['train_items']} CommonsenseQA train items as cloze pairs, {p['steps']} steps, batch "
             f"{p['batch_size']}. Evaluation: up to {p['eval_items']} seeded-random items per set "
             f"({sets}); ID = {p['id']}.", "",
             "Token columns: held-out chosen answers (the training format), confidence = max next-token probability, "
             "accuracy = top-1 is the token; ECE 15 equal-width bins with the debiased estimate and the noise floor "
             "(ECE of a calibrated predictor with the same confidences). MCQA columns: cloze option probabilities. "
             "Intervals: 95 % bootstrap (ECE: basic, bias-aware; tokens: resampling pairs).", "",
             "## Means over seeds (± sd): ID, and all OOD items pooled", "",
             "| arm | seeds | ID token acc | ID token ECE (debiased) | OOD token acc | OOD token conf | "
             "OOD token ECE (debiased) | OOD token floor | ID MCQA acc | ID MCQA ECE | OOD MCQA acc | OOD MCQA ECE "
             "(debiased) | OOD MCQA floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, row in p["table"].items():
        def f(key, row=row):
            if key not in row:
                return "-"
            return f"{row[key]:.3f}" + (f" ± {row[key + '_sd']:.3f}" if len(row["seeds"]) > 1 else "")
        lines.append(
            f"| {arm} | {row['seeds']} | {f('id_token_accuracy')} | {f('id_token_ece')} ({f('id_token_ece_debiased')})"
            f" | {f('ood_token_accuracy')} | {f('ood_token_confidence')} | {f('ood_token_ece')} "
            f"({f('ood_token_ece_debiased')}) | {f('ood_token_ece_noise_floor')} | {f('id_mcqa_accuracy')} | "
            f"{f('id_mcqa_ece15')} | {f('ood_mcqa_accuracy')} | {f('ood_mcqa_ece15')} ({f('ood_mcqa_ece15_debiased')})"
            f" | {f('ood_mcqa_ece15_noise_floor')} |")
    if any("ood_answer_token_ece" in row for row in p["table"].values()):
        lines += ["", "## Answer tokens and the EOS apart (means over seeds ± sd)", "",
                  "| arm | ID answer-token acc | ID answer-token ECE | OOD answer-token acc | OOD answer-token ECE | "
                  "ID EOS acc | ID EOS ECE | OOD EOS acc | OOD EOS ECE |", "|---|---|---|---|---|---|---|---|---|"]
        for arm, row in p["table"].items():
            def g(key, row=row):
                if key not in row:
                    return "-"
                return f"{row[key]:.3f}" + (f" ± {row[key + '_sd']:.3f}" if len(row["seeds"]) > 1 else "")
            lines.append(f"| {arm} | " + " | ".join(g(f"{scope}_{part}_token_{m}") for part in ("answer", "eos")
                                                    for scope in ("id", "ood") for m in ("accuracy", "ece")) + " |")
    lines += ["", "## Paired differences (same items / pairs; 95 % paired bootstrap)", "",
              "| comparison | ID token ECE | ID token acc | OOD token ECE | OOD token acc | ID MCQA ECE | "
              "ID MCQA acc | OOD MCQA ECE | OOD MCQA acc |", "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in p["paired_differences"].items():
        cells = []
        for group in ("id", "ood"):
            for metric in ("token_ece", "token_accuracy"):
                e = entry.get(group, {}).get(metric)
                cells.append("-" if e is None else _ci(e, signed=True))
        for group in ("id", "ood"):
            for metric in ("mcqa_ece15", "mcqa_accuracy"):
                e = entry.get(group, {}).get(metric)
                cells.append("-" if e is None else _ci(e, signed=True))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    answer_pairs = {name: entry for name, entry in p["paired_differences"].items()
                    if any("answer_token_ece" in entry.get(group, {}) for group in ("id", "ood"))}
    if answer_pairs:
        lines += ["", "## Paired differences on the answer's own tokens (the EOS apart)", "",
                  "| comparison | ID answer-token ECE | ID answer-token acc | OOD answer-token ECE | "
                  "OOD answer-token acc |", "|---|---|---|---|---|"]
        for name, entry in answer_pairs.items():
            cells = [_ci(e, signed=True) if (e := entry.get(group, {}).get(f"answer_token_{metric}")) else "-"
                     for group in ("id", "ood") for metric in ("ece", "accuracy")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Per run and set (token: chosen answers; MCQA: cloze)", "",
              "| run | data | token acc | token conf | token ECE | token ECE debiased / floor | rejected token ECE | "
              "MCQA acc | MCQA conf | MCQA ECE15 | MCQA ECE15 debiased / floor | MCQA ECE15 mass | Brier | AUROC |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, run in p["runs"].items():
        blocks = {**run["metrics"]["per_set"], **({"pooled OOD": run["metrics"]["pooled_ood"]}
                                                  if run["metrics"]["pooled_ood"] else {})}
        for name, b in blocks.items():
            t, m = b["token"]["chosen"], b["mcqa"]
            lines.append(
                f"| {key} | {name} | {_ci(t['accuracy'])} | {t['confidence']['value']:.3f} | {_ci(t['ece'])} | "
                f"{t['ece']['debiased']:.3f} / {t['ece']['noise_floor']:.3f} | "
                f"{b['token']['rejected']['ece']['value']:.3f} | {_ci(m['accuracy'])} | {m['mean_confidence']:.3f} | "
                f"{_ci(m['ece15'])} | {m['ece15']['debiased']:.3f} / {m['ece15']['noise_floor']:.3f} | "
                f"{m['ece15_mass']['value']:.3f} | {m['brier']['value']:.3f} | {m['auroc']['value']:.3f} |")
    lines += ["", "## Selection", "", f"Rule: see {p.get('rule_source', RULE_SOURCE)}.", "",
              *selection_lines(p["selection"]), "",
              f"```json\n{json.dumps(p['selection'], indent=1)}\n```", ""]
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, plt, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def plot_tradeoff(payload: dict, path: Path) -> None:
    """Calibration against accuracy cost, per arm (mean ± sd over seeds), relative to DPO: the trade-off figure."""
    plt = _pyplot()
    table = payload["table"]
    if plt is None or "dpo" not in table:
        return
    ref = table["dpo"]
    # the answer's own tokens where every arm has them (the EOS apart; issue 27 part 0), else all tokens
    if all("ood_answer_token_ece" in row for row in table.values()):
        tok_acc, tok_ece, what = "ood_answer_token_accuracy", "ood_answer_token_ece", "answer-token"
    else:
        tok_acc, tok_ece, what = "ood_token_accuracy", "ood_token_ece", "token"
    panels = ((tok_acc, tok_ece, f"held-out {what} ECE vs {what} accuracy, OOD pooled"),
              ("ood_mcqa_accuracy", tok_ece, f"held-out {what} ECE vs MCQA accuracy, OOD pooled"),
              ("ood_mcqa_accuracy", "ood_mcqa_ece15", "MCQA (cloze) ECE vs MCQA accuracy, OOD pooled"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5))
    for ax, (acc_key, ece_key, title) in zip(axes, panels):
        for arm, row in table.items():
            if acc_key not in row:
                continue
            x, y = ref[acc_key] - row[acc_key], row[ece_key]
            ax.errorbar(x, y, xerr=row[acc_key + "_sd"], yerr=row[ece_key + "_sd"], fmt="o", capsize=3)
            ax.annotate(arm, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axvline(0.0, color="gray", lw=0.8, ls="--")
        ax.axvline(0.01, color="gray", lw=0.8, ls=":")
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.set_xlabel("accuracy cost vs DPO (DPO − arm)")
        ax.set_ylabel("ECE (15 bins)")
        ax.set_title(title, fontsize=10)
    fig.suptitle("Calibration vs accuracy cost (mean ± sd over seeds; dotted: the rule's 1-point tolerance)",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, plt, path)


def plot_ece_by_arm(payload: dict, path: Path) -> None:
    """Per set, token and MCQA ECE of every arm (mean over seeds)."""
    plt = _pyplot()
    if plt is None:
        return
    runs = payload["runs"]
    arms = list(payload["table"])
    names = list(next(iter(runs.values()))["metrics"]["per_set"])
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.1 * len(names) * len(arms) / 3), 7), sharex=True)
    width = 0.8 / len(arms)
    for ax, kind, label in ((axes[0], "token", "held-out token ECE (chosen)"), (axes[1], "mcqa", "MCQA ECE (cloze)")):
        for i, arm in enumerate(arms):
            keys = [k for k, r in runs.items() if r["arm"] == arm]
            vals = []
            for n in names:
                per = [runs[k]["metrics"]["per_set"][n][kind] for k in keys]
                vals.append(np.mean([(b["chosen"]["ece"] if kind == "token" else b["ece15"])["value"] for b in per]))
            ax.bar(np.arange(len(names)) + i * width, vals, width, label=arm)
        ax.set_ylabel(label, fontsize=9)
    axes[1].set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=20)
    axes[0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    _save(fig, plt, path)




def write_study_outputs(payload: dict, out: str | os.PathLike) -> str:
    """`study.json`, `summary.md`, `tradeoff.png` and `ece_by_arm.png` of a study's payload into `out` (each
    written atomically); returns the summary's Markdown."""
    from ..io import write_json_atomic, write_text_atomic

    out = Path(out)
    summary = summary_markdown(payload)
    write_json_atomic(out / "study.json", payload)
    write_text_atomic(out / "summary.md", summary)
    plot_tradeoff(payload, out / "tradeoff.png")
    plot_ece_by_arm(payload, out / "ece_by_arm.png")
    return summary
