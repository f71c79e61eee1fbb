"""Why L1 and BCE calibration terms can behave differently: the push each form gives a token, measured on a trained
model's held-out tokens (issue 27, part 2).

With the demo recipe's surrogate (logit margin, scale 1, detached), a token's target is z = p_y / (p_y + p_w), p_w
the best wrong token's probability; the confidence c is the top-1 probability, and the term's gradient reaches the
logits through log c. Per token, |dL/dlog c| is:

    L1   |c - z| -> c               (the same push whatever the gap)
    L2   (c - z)^2 -> 2 c |c - z|   (shrinks with the gap)
    BCE  -> |c - z| / (1 - c)       (grows without bound as a wrong token's c nears 1)

On a *wrong* token (top-1 != y) the best wrong token is the top-1, so z = p_y / (p_y + c) and everything is in the
per-pair records (`confidence`, `label_prob`); on a correct token z needs the second probability, which the records
do not keep, so this script measures the wrong tokens only (where a calibration term lowers confidence). It reports,
per run: the share of wrong tokens, their confidence, each form's mean push, and the share of each form's push that
falls on confidently wrong tokens (c > 0.8).

    python benchmarks/loss_form_gradients.py --study benchmarks/results/loss_form_study --runs dpo-s0,catto_a0.3-s0 \\
        --out benchmarks/results/loss_form_study/gradients.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

FORMS = ("l1", "l2", "bce")
BCE_FLOOR = np.exp(-100.0)  # the term floors its BCE logs at -100, like torch.nn.BCELoss


def push(form: str, c: np.ndarray, z: np.ndarray) -> np.ndarray:
    """|dL/dlog c| of each form at confidence `c` and target `z`."""
    if form == "l1":
        return c
    if form == "l2":
        return 2 * c * np.abs(c - z)
    return np.abs(c - z) / np.maximum(1 - c, BCE_FLOOR)


def wrong_tokens(records_path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """`(confidence, label prob)` of the wrong tokens of every response, and the number of tokens."""
    conf, label, total = [], [], 0
    with open(records_path) as f:
        for line in f:
            row = json.loads(line)
            for role in ("chosen", "rejected"):
                seq = row[role]
                total += len(seq["correct"])
                for c, ok, p in zip(seq["confidence"], seq["correct"], seq["label_prob"]):
                    if not ok:
                        conf.append(c)
                        label.append(p)
    return np.asarray(conf), np.asarray(label), total


def summarize(conf: np.ndarray, label: np.ndarray, total: int) -> dict:
    z = label / (label + conf)
    out = {"tokens": total, "wrong_share": len(conf) / total, "wrong_mean_confidence": float(conf.mean()),
           "wrong_share_confident_over_0.8": float((conf > 0.8).mean())}
    for form in FORMS:
        g = push(form, conf, z)
        out[f"{form}_mean_push"] = float(g.mean())
        out[f"{form}_push_share_on_confident_over_0.8"] = float(g[conf > 0.8].sum() / g.sum())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True, help="A calibration_study.py output folder.")
    ap.add_argument("--runs", required=True, help="Comma list of run keys (arm-s<seed>).")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    result = {"command": "python benchmarks/loss_form_gradients.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "what": "wrong held-out tokens (chosen and rejected responses, EOS included) of every set, pooled",
              "runs": {}}
    for key in args.runs.split(","):
        files = sorted(Path(args.study, "eval", key, "token").glob("*/results.jsonl"))
        if not files:
            print(f"loss_form_gradients: no token records for run {key!r} under {args.study}/eval/{key}/token/. Fix: "
                  "name a finished run of that study.", file=sys.stderr)
            return 2
        parts = [wrong_tokens(f) for f in files]
        result["runs"][key] = summarize(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                                        sum(p[2] for p in parts))
        result["runs"][key]["sets"] = [f.parent.name for f in files]
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
