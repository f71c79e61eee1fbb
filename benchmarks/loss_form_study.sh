#!/usr/bin/env bash
# The loss-form study (issue 27, part 2; rule: benchmarks/results/loss_form_study/RULE.md), one arm and seed per
# call of benchmarks/calibration_study.py, so every finished run is cached and the study resumes where it stopped.
# Two workers with one torch thread each share a 2-core machine; seed 0 of every arm first, then seed 1, then 2.
#
#   bash benchmarks/loss_form_study.sh            # train + evaluate what is missing, then render the tables
#   RENDER_ONLY=1 bash benchmarks/loss_form_study.sh   # only re-render from the cached runs (seeds that are complete)
#   JOBS="catto_a0.3:1 dpo:2" bash benchmarks/loss_form_study.sh   # these runs, in this order (arm:seed)
#   NO_RENDER=1 JOBS=... bash benchmarks/loss_form_study.sh   # train, score and archive only; leave summary.md and
#                                                  # study.json as they are (a render rewrites them)
#   MODEL=gemma-3-270m OUT=benchmarks/results/gemma_study ARMS="dpo catto_a0.3 dpo_bce" bash benchmarks/loss_form_study.sh
#                                                  # the same driver on another model (issue 27 part 3)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/loss_form_study}
ARMS=${ARMS:-"dpo catto_a0.3 dpo_bce l2_a0.3 catto_a0.3_noeos catto_a1.0 bce_a1.0 l2_a1.0"}
SEEDS=${SEEDS:-"0 1 2"}
WORKERS=${WORKERS:-2}
MODEL_ARGS=()
[ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")  # default: the demo's SmolLM2 (calibration_study.py --model)
LOGS=${LOGS:-$OUT/logs}
mkdir -p "$LOGS"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

# Runs finished in an earlier session come back from their archives in $OUT/records (calibration_study.py restores
# them): their records read back without a model or the adapter (which is not kept), so they are neither trained nor
# scored again; every run finished here is archived there (--archive-records) to be committed.
jobs=("base 0")
if [ -n "${JOBS:-}" ]; then
    for job in $JOBS; do jobs+=("${job%%:*} ${job##*:}"); done
else
    for seed in $SEEDS; do for arm in $ARMS; do jobs+=("$arm $seed"); done; done
fi

run_job() {  # arm seed: train (or reuse) and evaluate (or reuse) one run
    python benchmarks/calibration_study.py --rule loss_form --out "$OUT" --arms "$1" --seeds "$2" --threads 1 --runs-only --archive-records \
        "${MODEL_ARGS[@]}" \
        >"$LOGS/$1-s$2.log" 2>&1 && echo "done $1-s$2" || { echo "FAILED $1-s$2 (see $LOGS/$1-s$2.log)"; return 1; }
}

if [ -z "${RENDER_ONLY:-}" ]; then
    pids=()
    for ((w = 0; w < WORKERS; w++)); do
        (for ((i = w; i < ${#jobs[@]}; i += WORKERS)); do run_job ${jobs[$i]}; done) &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
fi

# The tables over every finished run (archived, or scored here): the seeds every arm has finished.
done_seeds=""
for seed in $SEEDS; do
    complete=1
    for arm in $ARMS; do
        [ -f "$OUT/records/$arm-s$seed.tar.gz" ] && continue
        for f in "$OUT/eval/$arm-s$seed"/{scoring,token}/mmlu/results.jsonl; do  # the last set, 500 items each
            [ -f "$f" ] && [ "$(wc -l <"$f")" -ge 500 ] || complete=0
        done
    done
    [ $complete = 1 ] && done_seeds="$done_seeds,$seed"
done
if [ -n "${NO_RENDER:-}" ]; then
    echo "NO_RENDER set: runs archived in $OUT/records; summary.md and study.json left as they were"
elif [ -n "$done_seeds" ]; then
    python benchmarks/calibration_study.py --rule loss_form --out "$OUT" --arms "base,${ARMS// /,}" \
        --seeds "${done_seeds#,}" --threads 2 "${MODEL_ARGS[@]}" >"$LOGS/render.log" 2>&1
    echo "rendered $OUT/summary.md (seeds ${done_seeds#,})"
else
    echo "no seed finished for every arm yet; nothing rendered"
fi
