#!/usr/bin/env bash
# The one test command: starts the stack, then fmt check, clippy -D warnings, and every test.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=tests/stack.sh
source tests/stack.sh
# Leftovers of earlier runs: per-test schemas (name_pid_time_n) and buckets older than an hour.
PGOPTIONS=--client-min-messages=warning psql -X -q -h 127.0.0.1 -U postgres -d postgres -At -c \
  "SELECT 'DROP SCHEMA IF EXISTS ' || quote_ident(nspname) || ' CASCADE;' FROM pg_namespace
   WHERE nspname ~ '^[a-z0-9_]+_[0-9]+_[0-9]+_[0-9]+$'" |
  PGOPTIONS=--client-min-messages=warning psql -X -q -h 127.0.0.1 -U postgres -d postgres >/dev/null || true
find "$BATCHLAYER_TEST_S3_DIR" -mindepth 1 -maxdepth 1 -type d -mmin +60 -name '*-[0-9]*-[0-9]*-[0-9]*' \
  -exec rm -rf {} + 2>/dev/null || true
# Tests that need a service fail (never skip) when it is missing.
export BATCHLAYER_REQUIRE_SERVICES=1
cargo fmt --all -- --check
cargo clippy --all-targets --all-features --locked -- -D warnings
# (clippy --all-targets above already compiled the bin and the examples.)
cargo test --locked --features testing --lib --test integration -- --test-threads="${BATCHLAYER_TEST_THREADS:-4}"
