#!/usr/bin/env bash
# The prepared GPU check: one command, at most 8 minutes on one GPU, one JSON of pass/fail and numbers.
#
#   bash benchmarks/gpu_check.sh                      # installs what it needs, writes benchmarks/results/gpu_check.json
#   bash benchmarks/gpu_check.sh --dry-run --venv /tmp/gpu-check-venv --out /tmp/gpu_check_dry.json   # on a CPU
#
# Runnable from a bare machine with only this repository and PyPI: it installs catto with the test, deepspeed and
# quantization extras (an installed torch is kept; on a bare Linux machine pip's default torch wheel is the CUDA
# one), then runs benchmarks/gpu_check.py (what it checks and how is described there). Options:
#   --out PATH       the JSON (default benchmarks/results/gpu_check.json)
#   --dry-run        the CPU-capable parts only (automatic when no CUDA device is visible)
#   --no-install     use the current environment as it is
#   --venv DIR       install into a virtual environment at DIR (made with --system-site-packages, so an installed
#                    torch is reused) instead of the current environment
#   --budget SECONDS the whole check, installs included (default 480)
# Exit status: 0 when every check passed (or was skipped for want of a GPU in a dry run), 1 otherwise, 2 on bad usage.
set -euo pipefail
STARTED=$(date +%s)
cd "$(dirname "$0")/.."
OUT=benchmarks/results/gpu_check.json
DRY=()
INSTALL=1
VENV=""
BUDGET=480
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="${2:?--out needs a path}"; shift 2 ;;
        --dry-run) DRY=(--dry-run); shift ;;
        --no-install) INSTALL=0; shift ;;
        --venv) VENV="${2:?--venv needs a folder}"; shift 2 ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --budget must be a whole number of seconds, got '$BUDGET'" >&2; exit 2 ;; esac

PY=python3
if [ -n "$VENV" ]; then
    [ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
    PY="$VENV/bin/python"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
if [ "$INSTALL" = 1 ]; then
    echo "[gpu_check] installing catto[test,deepspeed,quantization] and liger-kernel into $($PY -c 'import sys; print(sys.prefix)') ..."
    "$PY" -m pip install -q -e ".[test,deepspeed,quantization]" liger-kernel  # liger: a CUDA test of the option table
fi
exec "$PY" benchmarks/gpu_check.py --out "$OUT" --budget "$BUDGET" --started "$STARTED" "${DRY[@]}"
