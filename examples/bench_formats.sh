#!/usr/bin/env bash
# Benchmark of the record formats: JSON and Avro tweets through ingest and copy, against the
# bare consumer, psql with jsonb, and fastavro piped into psql (bench/formats.py).
#   examples/bench_formats.sh [--messages N] [--reps R]      (default 1,000,000 messages, 3 repetitions)
# Writes bench/results-formats-N.{md,json} and bench/RESULTS.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=tests/stack.sh
source tests/stack.sh
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
cargo build --release --locked --quiet --bin batchlayer --example bare_consumer
exec "$BATCHLAYER_TEST_VENV/bin/python" bench/formats.py "$@"
