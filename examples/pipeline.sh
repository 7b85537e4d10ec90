#!/usr/bin/env bash
# One pass of the batch layer: ingest, then copy, then (with --aggregate) aggregate. Each
# step writes its metrics file for node_exporter's textfile collector, also when it fails.
#   examples/pipeline.sh [--aggregate]
# Environment:
#   BATCHLAYER         the binary (default: batchlayer on PATH)
#   BATCHLAYER_CONFIG  the config file (default: ./batchlayer.toml)
#   METRICS_DIR        where the .prom files go (default /var/lib/prometheus/node-exporter)
# Exit: the first failing step's exit code (README "Exit codes"); later steps do not run.
set -euo pipefail

bl="${BATCHLAYER:-batchlayer}"
metrics_dir="${METRICS_DIR:-/var/lib/prometheus/node-exporter}"
aggregate=0
while [ $# -gt 0 ]; do
  case "$1" in
    --aggregate) aggregate=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "pipeline: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

mkdir -p "$metrics_dir"
step() {
  local name="$1"
  shift
  "$bl" -q "$name" --metrics-file "$metrics_dir/batchlayer_$name.prom" "$@"
}

step ingest
step copy
if [ "$aggregate" = 1 ]; then
  step aggregate
fi
