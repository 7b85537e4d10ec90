#!/usr/bin/env bash
# The one test command: starts the stack, then fmt check, clippy -D warnings, and every test.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=tests/stack.sh
source tests/stack.sh
# Tests that need a service fail (never skip) when it is missing.
export BATCHLAYER_REQUIRE_SERVICES=1
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# (clippy --all-targets above already compiled the bin and the examples.)
cargo test --locked --lib --test integration -- --test-threads="${BATCHLAYER_TEST_THREADS:-4}"
