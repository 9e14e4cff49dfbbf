#!/usr/bin/env bash
# Sharded optimizer state over MPI: installs Open MPI (and libclang, which
# the mpi crate's bindings need) from Debian's packages if mpirun is
# missing, builds examples/dist_check with the `mpi` feature, and runs it
# under mpirun on 1, 2 and 4 ranks. Each run prints one line per catalog
# rule, `ranks=N rule=NAME identical=true|false` (the sharded step against
# one process's, bit for bit), then the data-parallel digits training
# against one process; last, a rank exits in the middle of training and the
# job must stop, not hang. Exits 1 when any case fails.
set -euo pipefail
cd "$(dirname "$0")/.."
# Built programs, wherever cargo puts them.
bin="${CARGO_TARGET_DIR:-target}/release"
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
      openmpi-bin libopenmpi-dev libclang-dev; } >/dev/null 2>&1 || true
fi
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
  # No MPI to be had: the same checks with ranks as threads, said plainly.
  echo "mpi: unavailable (Open MPI could not be installed); ranks are threads of one process"
  cargo build --release -q -p lensopt-cli --example dist_check
  status=0
  for ranks in 1 2 4; do
    "$bin"/examples/dist_check --threads "$ranks" || status=1
  done
  "$bin"/examples/dist_check --threads 2 --fault || status=1
  exit $status
fi
cargo build --release -q -p lensopt-cli --example dist_check --features mpi
root_flag=""
if [ "$(id -u)" = 0 ]; then root_flag="--allow-run-as-root"; fi
status=0
for ranks in 1 2 4; do
  out=$(mktemp)
  if ! mpirun $root_flag --oversubscribe -n "$ranks" "$bin"/examples/dist_check >"$out"; then
    status=1
  fi
  cat "$out"
  if grep -q "=false" "$out"; then status=1; fi
  rm -f "$out"
done
# A rank that dies in the middle of training: mpirun must end the job (the
# other rank is blocked in a collective) instead of hanging.
started=$SECONDS
rc=0
timeout 120 mpirun $root_flag --oversubscribe -n 2 "$bin"/examples/dist_check --fault >/dev/null 2>&1 || rc=$?
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then
  echo "ranks=2 task=rank_dies_mid_step stopped=false exit=$rc"
  status=1
else
  echo "ranks=2 task=rank_dies_mid_step stopped=true exit=$rc seconds=$((SECONDS - started))"
fi
exit $status
