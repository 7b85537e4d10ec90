#!/usr/bin/env bash
# The lake (issue 27): `batchlayer publish` (closed hours) of N tweets against DuckDB copying the same rows
# from a CSV export of the raw table into Parquet; wall time, peak RSS, Parquet bytes against the
# gzip archive's (bench/publish.py).
#   examples/bench_publish.sh [N ...] [--quick] [--reps 3] [--partitions 3] [--duckdb-threads T] [--keep]
#   (default: 1,000,000 and 10,000,000 records; --quick: 100,000, written to bench/out/ only)
# Writes bench/results-publish.{md,json} and bench/RESULTS.md. Run after tests/run.sh has installed the stack.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=tests/stack.sh
source tests/stack.sh
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
cargo build --release --locked --quiet --bin batchlayer
# The script itself needs Python's standard library only; DuckDB runs from the judges' venv
# (BATCHLAYER_TEST_VENV, exported by tests/stack.sh).
exec python3 bench/publish.py "$@"
