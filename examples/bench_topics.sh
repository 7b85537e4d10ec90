#!/usr/bin/env bash
# Many topics, one config (issue 26's cost): ingest and copy over N topics of which one has new
# data, against the same runs over that topic alone; wall time and S3 requests (bench/topics.py).
#   examples/bench_topics.sh [N ...] [--messages 10000] [--rounds 3] [--partitions 3] [--initial 30]
#                            [--setup-jobs 4] [--no-direct] [--no-idle] [--no-profile] [--keep]
#   (default: 100 and 1000 topics)
# Writes bench/results-topics.{md,json} and bench/RESULTS.md. Run after tests/run.sh has installed the stack.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=tests/stack.sh
source tests/stack.sh
cargo build --release --locked --quiet --bin batchlayer
# Python's standard library only (the counting proxy too): no venv needed.
exec python3 bench/topics.py "$@"
