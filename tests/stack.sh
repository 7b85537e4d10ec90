#!/usr/bin/env bash
# Installs (once) and starts (if down) the local stack on 127.0.0.1:
#   tansu 0.6.0 (Kafka protocol, :9092), s3s-fs 0.14.1 (S3, :9000), PostgreSQL (:5432),
#   the Schema Registry stand-in (:8081).
# Idempotent and fast when everything is already there. Sourcing it exports the endpoints.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stack="${BATCHLAYER_STACK_DIR:-$repo/.stack}"
mkdir -p "$stack/s3"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { echo "stack: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 logf=$3
  for _ in $(seq 1 150); do
    port_open "$port" && return 0
    sleep 0.2
  done
  log "$name did not open port $port; last lines of $logf:"
  tail -n 20 "$logf" >&2 || true
  return 1
}

install_crate() {
  local bin=$1 want=$2; shift 2
  if command -v "$bin" >/dev/null 2>&1 && "$bin" --version 2>/dev/null | grep -q "$want"; then
    return 0
  fi
  log "installing $bin $want (cargo install $*; tansu takes 15-19 minutes cold)"
  cargo install "$@" >&2
}

# Build tools, OpenSSL headers (librdkafka and the PostgreSQL TLS connector link the system
# OpenSSL), and the TLS tests' tools: the openssl CLI (certificates) and socat (TLS terminator).
need=()
command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v socat >/dev/null 2>&1 || need+=(socat)
# The Spark judge (pyspark 4.x in the venv below) runs on Java 17 or later.
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

install_crate tansu 0.6.0 tansu --version 0.6.0 --locked --features dynostore
install_crate s3s-fs 0.14.1 s3s-fs@0.14.1 --features binary --locked

if ! port_open 9092; then
  log "starting tansu on 127.0.0.1:9092"
  nohup tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$stack/tansu.log" 2>&1 &
  wait_port 9092 tansu "$stack/tansu.log"
fi

if ! port_open 9000; then
  log "starting s3s-fs on 127.0.0.1:9000 (data in $stack/s3)"
  nohup s3s-fs --host 127.0.0.1 --port 9000 --access-key batchlayer --secret-key batchlayer-secret \
    "$stack/s3" >"$stack/s3s-fs.log" 2>&1 &
  wait_port 9000 s3s-fs "$stack/s3s-fs.log"
fi

if ! port_open 5432; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  fi
  ver="$(ls /etc/postgresql | sort -n | tail -n 1)"
  log "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 || pg_ctlcluster "$ver" main start >&2
  wait_port 5432 postgresql "/var/log/postgresql/postgresql-$ver-main.log"
fi

# The judges, in a venv of their own (tests that compare our output with an independent reader
# read BATCHLAYER_TEST_VENV): fastavro for Avro, pyarrow and DuckDB for Parquet, sqlglot for the
# lake's DDL, pyspark (a local Spark on the machine's Java 17) for the lake as Spark reads it.
# Pinned; created once, reused while every pin matches.
fastavro_pin=1.13.1
pyarrow_pin=23.0.1
duckdb_pin=1.4.3
sqlglot_pin=30.31.0
pyspark_pin=4.3.0
if ! "$stack/venv/bin/python" -c "import sys, fastavro, pyarrow, duckdb, sqlglot, pyspark; sys.exit((fastavro.__version__, pyarrow.__version__, duckdb.__version__, sqlglot.__version__, pyspark.__version__) != ('$fastavro_pin', '$pyarrow_pin', '$duckdb_pin', '$sqlglot_pin', '$pyspark_pin'))" 2>/dev/null; then
  log "installing fastavro $fastavro_pin, pyarrow $pyarrow_pin, duckdb $duckdb_pin, sqlglot $sqlglot_pin and pyspark $pyspark_pin in $stack/venv"
  python3 -m venv "$stack/venv" >&2
  "$stack/venv/bin/pip" install -q --disable-pip-version-check \
    "fastavro==$fastavro_pin" "pyarrow==$pyarrow_pin" "duckdb==$duckdb_pin" "sqlglot==$sqlglot_pin" \
    "pyspark==$pyspark_pin" >&2
fi
export BATCHLAYER_TEST_VENV="$stack/venv"

# The Schema Registry stand-in (tests/registry_standin.py, Python 3's standard library only).
if ! port_open 8081; then
  log "starting the schema registry stand-in on 127.0.0.1:8081 (state in $stack/registry.json)"
  nohup python3 "$repo/tests/registry_standin.py" --port 8081 --state "$stack/registry.json" \
    >"$stack/registry.log" 2>&1 &
  wait_port 8081 registry-standin "$stack/registry.log"
fi
export BATCHLAYER_TEST_SCHEMA_REGISTRY=http://127.0.0.1:8081

export BATCHLAYER_TEST_BROKERS=127.0.0.1:9092
export BATCHLAYER_TEST_S3_ENDPOINT=http://127.0.0.1:9000
export BATCHLAYER_TEST_S3_ACCESS_KEY=batchlayer
export BATCHLAYER_TEST_S3_SECRET_KEY=batchlayer-secret
export BATCHLAYER_TEST_S3_DIR="$stack/s3"
export BATCHLAYER_TEST_PG_URL="${BATCHLAYER_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
log "ready: kafka 127.0.0.1:9092, s3 http://127.0.0.1:9000, postgres 127.0.0.1:5432"
