"""Record formats benchmark: JSON and Avro tweets, each step against what a user would run
without batchlayer, alternately, in the same run. Writes bench/results-formats-N.{md,json} and
bench/RESULTS.md. Run through examples/bench_formats.sh (stack, registry, venv, release build).

- ingest: batchlayer ingest against the bare librdkafka consumer (it stores bytes; the schema
  lookups must not slow it).
- copy, JSON: batchlayer copy against psql: \\copy of the JSON lines into a jsonb staging table,
  then INSERT ... SELECT (j->>'id')::bigint, ... into the raw table.
- copy, Avro: batchlayer copy against fastavro decoding the messages in Python and piping
  rows into psql \\copy.
"""
import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BARE, BL, PG, REPO, commit, machine, psql, timed, write_index  # noqa: E402

RAW_COLUMNS = ("id bigint, created_at timestamp, followers_count integer, location varchar(256), "
               "favorite_count integer, retweet_count integer")

FRAMED = re.compile(rb"((?:[^\\\n]|\\.)*)\n", re.S)
ESCAPE = re.compile(rb"\\(.)", re.S)


def archived_messages(arch_dir):
    """Every message of the archive's data objects, unframed (tests do this with the crate)."""
    import gzip
    out = []
    for dp, _, fs in os.walk(arch_dir):
        for f in sorted(fs):
            if f.endswith(".log.gz"):
                with gzip.open(os.path.join(dp, f), "rb") as g:
                    data = g.read()
                out += [ESCAPE.sub(rb"\1", m.group(1)) for m in FRAMED.finditer(data)]
    return out


JSON_INSERT = """INSERT INTO {s}.batch_raw
SELECT (j->>'id')::bigint, ((j->>'created_at')::timestamptz AT TIME ZONE 'UTC'),
       (j->'user'->>'followers_count')::int, j->'user'->>'location',
       (j->>'favorite_count')::int, (j->>'retweet_count')::int
FROM {s}.staging"""

AVRO_PEER = r'''
import io, struct, sys, fastavro, json, datetime
schema = fastavro.parse_schema(json.load(open(sys.argv[1])))
out = sys.stdout
esc = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
with open(sys.argv[2], "rb") as f:
    data = f.read()
pos, n = 0, len(data)
while pos < n:
    (size,) = struct.unpack_from(">I", data, pos)
    msg = data[pos + 4:pos + 4 + size]
    pos += 4 + size
    r = fastavro.schemaless_reader(io.BytesIO(msg[5:]), schema)
    u = r["user"]
    loc = "\\N" if u["location"] is None else u["location"].translate(esc)
    ts = r["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f")
    out.write(f'{r["id"]}\t{ts}\t{u["followers_count"]}\t{loc}\t{r["favorite_count"]}\t{r["retweet_count"]}\n')
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=3)
    a = ap.parse_args()
    n = a.messages
    stamp = int(time.time()) % 1000000
    s3dir = os.environ["BATCHLAYER_TEST_S3_DIR"]
    venv_py = os.path.join(os.environ["BATCHLAYER_TEST_VENV"], "bin", "python")
    log = lambda *x: print("bench:", *x, file=sys.stderr, flush=True)
    res = {}
    payload = {}
    for fmt in ("json", "avro"):
        topic = f"f{fmt}{stamp}"
        bucket = f"bench-fmt-{fmt}-{stamp}"
        os.makedirs(os.path.join(s3dir, bucket), exist_ok=True)
        env = dict(os.environ)
        env.update({
            "BATCHLAYER_CONFIG": os.path.join(REPO, f"examples/tweets-{fmt}.toml"),
            "BATCHLAYER_KAFKA_BROKERS": "127.0.0.1:9092",
            "BATCHLAYER_KAFKA_TOPIC": topic,
            "BATCHLAYER_S3_ENDPOINT": os.environ["BATCHLAYER_TEST_S3_ENDPOINT"],
            "AWS_ACCESS_KEY_ID": os.environ["BATCHLAYER_TEST_S3_ACCESS_KEY"],
            "AWS_SECRET_ACCESS_KEY": os.environ["BATCHLAYER_TEST_S3_SECRET_KEY"],
            "CI": "true",
        })
        log(f"producing {n} {fmt} tweets to {topic}")
        subprocess.run([BL, "produce-tweets", "--format", fmt, "--count", str(n), "--partitions",
                        str(a.partitions), "--locations", "1000"], env=env, check=True, capture_output=True)
        r = res.setdefault(fmt, {"ingest": {}, "copy": {}})

        def add(step, name, secs, rss):
            r[step].setdefault(name, []).append({"seconds": secs, "rss_mib": rss})

        for rep in range(a.reps):
            e = dict(env, BATCHLAYER_KAFKA_GROUP=f"g{fmt}{stamp}_{rep}", BATCHLAYER_ARCHIVE_URL=f"s3://{bucket}/bl{rep}")
            secs, rss, out = timed([BL, "--json", "ingest"], env=e)
            got = json.loads(out)
            if got["messages"] != n:
                raise RuntimeError(f"batchlayer ingest archived {got['messages']} of {n}")
            payload[fmt] = got["bytes"]
            add("ingest", "batchlayer ingest", secs, rss)
            secs, rss, _ = timed([BARE, "127.0.0.1:9092", topic], env=env)
            add("ingest", "bare librdkafka consumer (limit)", secs, rss)
            log(f"{fmt} ingest rep {rep + 1}/{a.reps} done")

        msgs = archived_messages(os.path.join(s3dir, bucket, "bl0"))
        if len(msgs) != n:
            raise RuntimeError(f"{len(msgs)} messages in the archive, {n} produced")
        work = tempfile.mkdtemp(prefix=f"bench-{fmt}-")
        if fmt == "json":
            lines = os.path.join(work, "tweets.jsonl")
            with open(lines, "wb") as f:
                for m in msgs:
                    f.write(m + b"\n")
        else:
            framed = os.path.join(work, "tweets.avro-msgs")
            with open(framed, "wb") as f:
                for m in msgs:
                    f.write(struct.pack(">I", len(m)) + m)
            schema_id = struct.unpack(">I", msgs[0][1:5])[0]
            schema_file = os.path.join(work, "tweet.avsc")
            with open(os.path.join(s3dir, bucket, "bl0", "_schemas", f"{schema_id}.json")) as g:
                stored = json.load(g)
            with open(schema_file, "w") as f:
                f.write(stored["schema"])
            peer = os.path.join(work, "peer.py")
            with open(peer, "w") as f:
                f.write(AVRO_PEER)
        for rep in range(a.reps):
            sch = f"bf{fmt}{stamp}_{rep}"
            psql(f"DROP SCHEMA IF EXISTS {sch} CASCADE; CREATE SCHEMA {sch}")
            e = dict(env, BATCHLAYER_ARCHIVE_URL=f"s3://{bucket}/bl0", BATCHLAYER_WAREHOUSE_SCHEMA=sch)
            secs, rss, out = timed([BL, "--json", "copy"], env=e)
            if json.loads(out)["rows"] != n:
                raise RuntimeError(f"batchlayer copy loaded {out}")
            add("copy", "batchlayer copy", secs, rss)
            psch = f"bp{fmt}{stamp}_{rep}"
            psql(f"DROP SCHEMA IF EXISTS {psch} CASCADE; CREATE SCHEMA {psch}; "
                 f"CREATE TABLE {psch}.batch_raw ({RAW_COLUMNS}); CREATE TABLE {psch}.staging (j jsonb)")
            if fmt == "json":
                # CSV with quote and delimiter bytes JSON text never holds: each line is one value.
                cmd = PG + ["-c", f"\\copy {psch}.staging (j) FROM '{lines}' WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')",
                            "-c", JSON_INSERT.format(s=psch)]
                secs, rss, _ = timed(cmd)
                name = "psql \\copy into jsonb + INSERT ... SELECT"
            else:
                pipe = (f"{venv_py} {peer} {schema_file} {framed} | "
                        + " ".join(PG) + f" -c \"\\copy {psch}.batch_raw FROM STDIN\"")
                secs, rss, _ = timed(["bash", "-o", "pipefail", "-c", pipe])
                name = "fastavro in Python, piped to psql \\copy"
            count = subprocess.run(PG + ["-At", "-c", f"SELECT count(*) FROM {psch}.batch_raw"],
                                   capture_output=True, text=True, check=True).stdout.strip()
            if int(count) != n:
                raise RuntimeError(f"the peer loaded {count} rows of {n}")
            add("copy", name, secs, rss)
            for s in (sch, psch):
                psql(f"DROP SCHEMA IF EXISTS {s} CASCADE")
            log(f"{fmt} copy rep {rep + 1}/{a.reps} done")
    report(n, a, res, payload)


def report(n, a, res, payload):
    lines = [f"## Record formats: {n:,} tweets as JSON and as Avro ({a.partitions} partitions, {a.reps} repetitions, median wall time)", "",
             "| format | step | program | median s | msgs/s | peak RSS MiB |", "|---|---|---|---:|---:|---:|"]
    med = {}
    for fmt, steps in res.items():
        for step, progs in steps.items():
            for prog, xs in progs.items():
                m = statistics.median(x["seconds"] for x in xs)
                rss = max(x["rss_mib"] for x in xs)
                med[(fmt, step, prog)] = (m, rss)
                lines.append(f"| {fmt} | {step} | {prog} | {m:.2f} | {n / m:,.0f} | {rss:.1f} |")
    lines.append("")
    bl = lambda f, s: med[(f, s, "batchlayer copy" if s == "copy" else "batchlayer ingest")][0]
    checks = [
        ("JSON copy vs psql \\copy into jsonb + INSERT ... SELECT",
         med[("json", "copy", "psql \\copy into jsonb + INSERT ... SELECT")][0] / bl("json", "copy"), ">= 1.5x", 1.5),
        ("Avro copy vs fastavro piped to psql \\copy",
         med[("avro", "copy", "fastavro in Python, piped to psql \\copy")][0] / bl("avro", "copy"), ">= 3x", 3.0),
        ("JSON ingest vs bare consumer",
         med[("json", "ingest", "bare librdkafka consumer (limit)")][0] / bl("json", "ingest"), ">= 0.9x", 0.9),
        ("Avro ingest vs bare consumer",
         med[("avro", "ingest", "bare librdkafka consumer (limit)")][0] / bl("avro", "ingest"), ">= 0.9x", 0.9),
    ]
    lines += ["| target | measured | target | met |", "|---|---:|---|---|"]
    for name, v, t, want in checks:
        lines.append(f"| {name} | {v:.2f} | {t} | {'yes' if v >= want else '**no**'} |")
    lines.append("")
    lines.append(f"Payload: {payload.get('json', 0) / n:.0f} bytes per JSON tweet, {payload.get('avro', 0) / n:.0f} per Avro tweet (framed). "
                 "Copy reads the archive from s3s-fs; the peers read the same messages from a local file, decoded by "
                 "this script before timing (their Kafka and S3 time is not counted).")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(REPO, f"bench/results-formats-{n}.json"), "w") as f:
        json.dump({"messages": n, "machine": machine(), "commit": commit(),
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": res,
                   "checks": [{"name": c[0], "value": c[1], "target": c[2], "met": c[1] >= c[3]} for c in checks]},
                  f, indent=1)
    with open(os.path.join(REPO, f"bench/results-formats-{n}.md"), "w") as f:
        f.write(text)
    write_index()


if __name__ == "__main__":
    main()
