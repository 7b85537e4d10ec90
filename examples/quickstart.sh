#!/usr/bin/env bash
# Runs the whole pipeline on a local stack: produce tweets -> ingest -> copy -> aggregate,
# then prints the top rows of batch_layer.
#   examples/quickstart.sh [--s3] [--count N] [--format delimited|json|avro]
# Each run uses a fresh topic, archive and schema, so it can be run any number of times.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

use_s3=0
count=10000
format=delimited
while [ $# -gt 0 ]; do
  case "$1" in
    --s3) use_s3=1 ;;
    --count) count="$2"; shift ;;
    --format) format="$2"; shift ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "quickstart: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=tests/stack.sh
source tests/stack.sh
echo "quickstart: building batchlayer (release)" >&2
cargo build --release --locked --quiet
bl="$repo/target/release/batchlayer"

run="qs$(date +%s)"
case "$format" in
  delimited) export BATCHLAYER_CONFIG="$repo/examples/batchlayer.toml" ;;
  json|avro) export BATCHLAYER_CONFIG="$repo/examples/tweets-$format.toml" ;;
  *) echo "quickstart: --format is delimited, json or avro" >&2; exit 2 ;;
esac
export BATCHLAYER_KAFKA_TOPIC="tweets_$run"
export BATCHLAYER_KAFKA_GROUP="quickstart"
schema="quickstart"
if [ "$use_s3" = 1 ]; then
  export AWS_ACCESS_KEY_ID="$BATCHLAYER_TEST_S3_ACCESS_KEY"
  export AWS_SECRET_ACCESS_KEY="$BATCHLAYER_TEST_S3_SECRET_KEY"
  export BATCHLAYER_S3_ENDPOINT="$BATCHLAYER_TEST_S3_ENDPOINT"
  mkdir -p "$BATCHLAYER_TEST_S3_DIR/quickstart"   # s3s-fs: a bucket is a directory
  export BATCHLAYER_ARCHIVE_URL="s3://quickstart/$run"
else
  mkdir -p "$repo/.stack/quickstart"
  export BATCHLAYER_ARCHIVE_URL="$repo/.stack/quickstart/$run"
fi
PGOPTIONS=--client-min-messages=warning psql -q -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 \
  -c "DROP SCHEMA IF EXISTS $schema CASCADE" -c "CREATE SCHEMA $schema" >/dev/null
export BATCHLAYER_WAREHOUSE_SCHEMA="$schema"

echo "quickstart: producing $count tweets (every 10th twice) to topic $BATCHLAYER_KAFKA_TOPIC" >&2
echo "quickstart: the tweets as $format messages ($BATCHLAYER_CONFIG)" >&2
"$bl" -v produce-tweets --format "$format" --count "$count" --duplicate-every 10 --partitions 3
"$bl" -v ingest
"$bl" -v copy
"$bl" -v aggregate --print 10

total=$(psql -At -h 127.0.0.1 -U postgres -d postgres -c "SELECT sum(count_id) FROM $schema.batch_layer")
echo "quickstart: produced $count distinct tweets; batch_layer counts $total"
[ "$total" = "$count" ] || { echo "quickstart: MISMATCH" >&2; exit 1; }
