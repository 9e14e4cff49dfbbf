#!/usr/bin/env bash
# The GPU check: run first on any machine with an NVIDIA GPU. It builds with
# the `cuda` feature, runs the GPU test suite with LENSOPT_REQUIRE_GPU=1 (a
# missing driver or device is a failure, not a skip), measures Adam on the
# device against a device copy kernel (`lensopt bench --device cuda`) and,
# when PyTorch with CUDA is importable, against torch's fused AdamW, and
# writes everything to one report. It finishes well inside 10 minutes.
#
#   bash scripts/gpu-check.sh            # report in $OUT/gpu-report.txt, or ./gpu-report.txt
#
# Exit status: 0 when every step passed, 1 otherwise (the report says which).
set -uo pipefail
cd "$(dirname "$0")/.."
report="${OUT:-.}/gpu-report.txt"
mkdir -p "$(dirname "$report")"
: >"$report"
status=0
step() { # step NAME TIMEOUT COMMAND...: runs one step, appends its output to the report
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$report"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$report"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$report"
  [ "$rc" -eq 0 ] || status=1
}
step device 30 nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
step build 300 cargo build --release -p lensopt-cli -p lensopt-tests --features cuda --tests --bins
step gpu-tests 180 env LENSOPT_REQUIRE_GPU=1 cargo test --release -p lensopt-tests --features cuda --test gpu
step bench 120 target/release/lensopt bench --device cuda --sizes 1000000,10000000,100000000 --seconds 0.5
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  step torch-peer 120 python3 scripts/torch_peers.py --device cuda --sizes 1000000,10000000 --seconds 0.5
else
  echo "== torch-peer: skipped (PyTorch with CUDA is not importable here)" | tee -a "$report"
fi
echo "== gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED); report in $report" | tee -a "$report"
exit $status
