#!/usr/bin/env bash
# The GPU check: run first on any machine with an NVIDIA GPU. In order:
# nvidia-smi; the GPU test suite with LENSOPT_REQUIRE_GPU=1 (a missing
# driver or device is a failure, not a skip), which holds the size tests
# (1 to 3,000,003 elements, f32 and f64), many tensors of mixed sizes and
# global reductions against the CPU JIT; `lensopt bench --device cuda` (Adam
# at 1e6, 1e7 and 1e8 elements against the best device copy and the
# device's bandwidth, the fixed cost per step, GPT-2 small's tensors and one
# large tensor beside 300 small ones); PyTorch's fused AdamW on the same GPU
# when torch with CUDA is importable; then one SGD step over 2^31 + 7
# elements, and `compute-sanitizer` on one step when it is installed; last,
# every catalog rule sharded over NCCL on one GPU against one process. It
# writes one report and finishes well inside 10 minutes.
#
#   bash scripts/gpu-check.sh            # report in $OUT/gpu-report.txt, or ./gpu-report.txt
#
# Exit status: 0 when every step passed, 1 otherwise (the report says which).
set -uo pipefail
cd "$(dirname "$0")/.."
# Built programs, wherever cargo puts them.
bin="${CARGO_TARGET_DIR:-target}/release"
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
step build 300 cargo build --release -p lensopt-cli -p lensopt-tests --features cuda --tests --bins --examples
step gpu-tests 180 env LENSOPT_REQUIRE_GPU=1 cargo test --release -p lensopt-tests --features cuda --test gpu
step bench 150 "$bin"/lensopt bench --device cuda --sizes 1000000,10000000,100000000 --seconds 0.5
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  step torch-peer 120 python3 scripts/torch_peers.py --device cuda --sizes 1000000,10000000,100000000 --seconds 0.5
else
  echo "== torch-peer: skipped (PyTorch with CUDA is not importable here)" | tee -a "$report"
fi
step large-step 150 "$bin"/examples/gpu_large_step
if command -v compute-sanitizer >/dev/null; then
  step sanitizer 120 compute-sanitizer --error-exitcode 1 "$bin"/examples/gpu_large_step 3000003
else
  echo "== sanitizer: skipped (compute-sanitizer is not installed here)" | tee -a "$report"
fi
# Sharded optimizer state over NCCL on one GPU (every catalog rule against
# one process, bit for bit). NCCL comes from NVIDIA's wheel when the
# system has none; it is loaded at run time.
if ! ldconfig -p 2>/dev/null | grep -q libnccl.so; then
  python3 -m pip install --quiet --disable-pip-version-check nvidia-nccl-cu12 >/dev/null 2>&1 || true
  nccl_lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true)
  if [ -n "$nccl_lib" ]; then
    [ -e "$nccl_lib/libnccl.so" ] || ln -sf "$nccl_lib/libnccl.so.2" "$nccl_lib/libnccl.so" 2>/dev/null || true
    export LD_LIBRARY_PATH="$nccl_lib:${LD_LIBRARY_PATH:-}"
  fi
fi
step nccl-build 300 cargo build --release -p lensopt-cli --features nccl --example dist_check
step nccl 120 "$bin"/examples/dist_check --nccl 1
echo "== gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED); report in $report" | tee -a "$report"
exit $status
