#!/usr/bin/env bash
# What a run costs as the archive grows (1k, 10k, 100k objects; local directory and s3s-fs):
#   examples/bench_scale.sh [--sizes 1000,10000,100000] [--reps 3] [--stores local,s3]
# Writes bench/scale-results.md. Run after tests/run.sh has installed the stack.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=tests/stack.sh
source tests/stack.sh
cargo build --release --locked --quiet --bin batchlayer
exec python3 bench/scale.py "$@"
