#!/usr/bin/env bash
# Benchmark: each step against its physical limit and the seed, alternately, same machine.
#   examples/bench.sh [--messages N] [--reps R]      (default 1,000,000 messages, 3 repetitions)
# Writes bench/results-N.{md,json} and bench/RESULTS.md. Run after tests/run.sh has installed the stack.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=tests/stack.sh
source tests/stack.sh
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
venv="$repo/.stack/bench-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q confluent-kafka kafka-python boto3 psycopg2-binary
fi
cargo build --release --locked --quiet --bin batchlayer --example bare_consumer
exec "$venv/bin/python" bench/bench.py "$@"
