#!/usr/bin/env bash
# Runs the JIT's tests under valgrind memcheck: generated optimizer
# kernels and compiled circuits, the safe wrappers around them and the
# padded tails must make no invalid read or write, use no uninitialised
# value and leak nothing definite. The soundness tests add the reproducers
# (folded reductions, circuits with bad wires refused, a bounded engine
# that unmaps the code it evicts).
#
#   bash scripts/valgrind-jit.sh
#
# Generated code is written at run time, so valgrind must re-check code it
# has translated (--smc-check=all). The differential tests run 40 cases per
# property here (they run 2,000 in the normal suite); the large-tensor tests
# run as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 2; }
cargo test --no-run -p lensopt-tests --test jit --test differential --test circuits --test soundness 2>&1 | tail -n 3
for test in jit differential circuits soundness; do
  bin=$(find target/debug/deps -maxdepth 1 -type f -executable -name "${test}-*" -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2)
  echo "== valgrind: $bin"
  LENSOPT_PROPTEST_CASES=40 valgrind --tool=memcheck --smc-check=all --error-exitcode=99 \
    --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
    "$bin" --test-threads=1
done
