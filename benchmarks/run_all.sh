#!/usr/bin/env bash
# Every benchmark, one after the other, on one device; each prints its own table.
#   bash benchmarks/run_all.sh [cpu|cuda]
# PYTHON overrides the interpreter (default .venv/bin/python); BENCH_TIMEOUT caps each script (s).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}
PY=${PYTHON:-.venv/bin/python}
run() {
  echo; echo "### $*"
  timeout "${BENCH_TIMEOUT:-900}" "$PY" "$@" || echo "### exit code $? from $1"
}
run benchmarks/whisper_trim.py --device "$DEVICE"
run benchmarks/interface_forward.py --device "$DEVICE"
run benchmarks/extract_overhead.py --device "$DEVICE"
run benchmarks/flops_utilisation.py --device "$DEVICE"
run benchmarks/extract_memory.py --device "$DEVICE"
run benchmarks/long_clip_memory.py --device "$DEVICE"
run benchmarks/long_clip_stitching.py --device "$DEVICE"
run benchmarks/bundled_load.py
run benchmarks/interface_cost.py --device "$DEVICE"
run benchmarks/sweep_cache.py --device "$DEVICE"
run benchmarks/sweep_jobs.py
run benchmarks/manifest_check.py
run benchmarks/checkpoint_integrity.py
run benchmarks/predict_throughput.py --device "$DEVICE"
run benchmarks/verify_throughput.py --device "$DEVICE"
run benchmarks/export_whole.py
run benchmarks/cache_integrity.py --device "$DEVICE"
run benchmarks/truncate_cost.py --device "$DEVICE"
