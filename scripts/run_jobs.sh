#!/usr/bin/env bash
# Run the command lines of a file (one job a line) N at a time, each pinned to one XLA thread: on a
# small shared machine several single-threaded jobs waste less time than threads fighting for cores.
# Usage: scripts/run_jobs.sh JOBS_FILE [N=2]
set -uo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
xargs -P "${2:-2}" -I{} -d '\n' bash -c '{} || echo "FAILED: {}"' < "$1"
