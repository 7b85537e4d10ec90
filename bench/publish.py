"""The lake benchmark (issue 27): `batchlayer publish` against DuckDB writing the same records
as Parquet, in the same run, on the same machine.

    examples/bench_publish.sh [N ...] [--quick] [--reps 3] [--partitions 3] [--duckdb-threads T] [--keep]

For each N (default 1,000,000 and 10,000,000; --quick: 100,000 alone):

* setup (not part of the comparison, times kept in the JSON): N tweets to a new topic
  (`batchlayer produce-tweets`, --partitions partitions), `ingest` into a new S3 archive
  (s3s-fs), `copy` into a new PostgreSQL schema's `batch_raw`; then psql exports the raw table
  as CSV (`\\copy (SELECT id, created_at, followers_count, location, favorite_count,
  retweet_count FROM batch_raw) TO '...' CSV`), timed and reported on its own.
* each repetition, in alternating order:
  - `batchlayer --json publish` into a fresh local lake directory (BATCHLAYER_LAKE_URL);
    wall time and peak RSS from /usr/bin/time -v. Then, untimed, DuckDB reads every Parquet
    file of the lake: the rows must be N and the (_epoch, _partition, _offset) triples N
    distinct ones.
  - DuckDB (the judges' venv: $BATCHLAYER_TEST_VENV, else .stack/venv) as a process of its own:
    `COPY (SELECT ... FROM read_csv(csv, header=false, columns={...})) TO 'out.parquet'
    (FORMAT parquet, COMPRESSION snappy)`; wall time of the process (the interpreter and
    `import duckdb` included, as publish's process start is) and its peak RSS, the COPY's
    own time kept beside it. Its row count must be N.
* sizes: the Parquet bytes of the lake (its .parquet files, not `_lake/`) against the archive's
  data objects for the same records (the archive's .log.gz files, not its `_` folders).

The tweets carry Kafka timestamps spread over four hours that ended before the run
(`produce-tweets --start-time 5h --span 14400`), so publish writes closed hours and seals them:
the path a nightly run takes.

Medians over the repetitions; peak RSS is the largest. Writes bench/results-publish.json
(merged by N with the sizes kept from earlier runs) and bench/results-publish.md, and rewrites
bench/RESULTS.md (bench.py's write_index). --quick writes bench/out/results-publish-quick.*
instead and leaves the kept results alone.

What the script reads of publish's --json summary: `rows` (the top level, else the sum over
`topics`), checked equal to N when present; `files`, `bytes` and `seconds` are kept as given.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import commit, machine, timed, write_index  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BL = os.environ.get("BATCHLAYER_BIN") or os.path.join(REPO, "target/release/batchlayer")
PG_URL = os.environ.get("BATCHLAYER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", PG_URL]
BROKERS = os.environ.get("BATCHLAYER_TEST_BROKERS", "127.0.0.1:9092")
S3_ENDPOINT = os.environ.get("BATCHLAYER_TEST_S3_ENDPOINT", "http://127.0.0.1:9000")
S3_DIR = os.environ.get("BATCHLAYER_TEST_S3_DIR", os.path.join(REPO, ".stack/s3"))
VENV = os.environ.get("BATCHLAYER_TEST_VENV") or os.path.join(REPO, ".stack/venv")
OUT_JSON = os.path.join(REPO, "bench/results-publish.json")
OUT_MD = os.path.join(REPO, "bench/results-publish.md")
QUICK_JSON = os.path.join(REPO, "bench/out/results-publish-quick.json")
QUICK_MD = os.path.join(REPO, "bench/out/results-publish-quick.md")
MIB = 1024 * 1024
RSS_TARGET_MIB = 256
PUBLISH = ["--json", "publish"]
ARCHIVE_EXTENSIONS = (".log", ".log.gz", ".log.zst")

# The raw table's columns as DuckDB reads them from the CSV (the tweets layout).
COLUMNS = (("id", "BIGINT"), ("created_at", "TIMESTAMP"), ("followers_count", "INTEGER"),
           ("location", "VARCHAR"), ("favorite_count", "INTEGER"), ("retweet_count", "INTEGER"))
SELECT_LIST = ", ".join(c for c, _ in COLUMNS)

# The peer: one DuckDB process; prints its COPY's own time and row count as JSON.
DUCKDB_PEER = r'''
import json, sys, time
import duckdb
csv, out, threads, select_list, columns = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
lit = lambda s: "'" + s.replace("'", "''") + "'"
con = duckdb.connect()
if threads > 0:
    con.execute(f"SET threads = {threads}")
cols = "{" + ", ".join(f"{lit(c)}: {lit(t)}" for c, t in columns) + "}"
t0 = time.perf_counter()
# psql's CSV: an unquoted empty field is NULL, a quoted one ("") the empty string.
got = con.execute(f"COPY (SELECT {select_list} FROM read_csv({lit(csv)}, header = false, columns = {cols}, "
                  f"delim = ',', quote = '\"', escape = '\"', allow_quoted_nulls = false)) "
                  f"TO {lit(out)} (FORMAT parquet, COMPRESSION snappy)").fetchall()
secs = time.perf_counter() - t0
print(json.dumps({"copy_seconds": secs, "rows": got[0][0] if got else None,
                  "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
                  "duckdb": duckdb.__version__}))
'''

# Untimed check of a lake: every file read by DuckDB, rows and distinct record positions.
LAKE_CHECK = r'''
import json, sys
import duckdb
files = json.loads(sys.argv[1])
rows, distinct = duckdb.connect().execute(
    "SELECT count(*), count(DISTINCT (_epoch, _partition, _offset)) FROM read_parquet(?)", [files]).fetchone()
print(json.dumps({"rows": rows, "distinct_positions": distinct}))
'''


def log(*x):
    print("bench-publish:", *x, file=sys.stderr, flush=True)


def psql(sql):
    p = subprocess.run(PG + ["-c", sql], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"psql: {p.stderr.strip()}\n{sql[:300]}")
    return p.stdout


def run_env():
    """The environment of every batchlayer process: no BATCHLAYER_* setting of the caller's
    (the environment beats the config file), the stack's S3 keys and endpoint."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("BATCHLAYER_") and not k.startswith("BATCHLAYER_TEST_"))
           and k not in ("RUST_LOG", "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    env.update({
        "AWS_ACCESS_KEY_ID": os.environ.get("BATCHLAYER_TEST_S3_ACCESS_KEY", "batchlayer"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("BATCHLAYER_TEST_S3_SECRET_KEY", "batchlayer-secret"),
        "BATCHLAYER_S3_ENDPOINT": S3_ENDPOINT,
        "CI": "true",
    })
    return env


def data_files(root, exts):
    """(path, bytes) of the files under root ending in one of exts, leaving out every path
    with a component starting with `_` or `.` (catalogs, manifests, temp files)."""
    out = []
    for dp, dns, fns in os.walk(root):
        dns[:] = sorted(d for d in dns if not d.startswith(("_", ".")))
        for f in sorted(fns):
            if not f.startswith(("_", ".")) and f.endswith(exts):
                p = os.path.join(dp, f)
                out.append((p, os.path.getsize(p)))
    return out


def total(doc, key):
    """A total of a --json summary: the top level's, else the sum over its topics; None if absent."""
    if key in doc:
        return doc[key]
    topics = doc.get("topics")
    if isinstance(topics, dict) and any(key in v for v in topics.values() if isinstance(v, dict)):
        return sum(v.get(key, 0) for v in topics.values() if isinstance(v, dict))
    return None


def bl_json(args, env, what):
    """batchlayer with --json under /usr/bin/time -v: (seconds, peak RSS MiB, summary)."""
    secs, rss, out = timed([BL] + args, env=env)
    try:
        return secs, rss, json.loads(out)
    except ValueError:
        raise RuntimeError(f"{what}: no JSON summary on stdout: {out[:500]!r}")


def run_size(n, a, env, venv_py):
    stamp = int(time.time()) % 1_000_000
    tag = f"{stamp}n{n}"
    # Short names: s3s-fs keeps multipart parts in files named after the key (bench.py).
    topic = f"pub{tag}"
    bucket = f"bench-pub-{tag}".lower()
    schema = f"bpub_{tag}".lower()
    work = os.path.join(REPO, "bench/out", f"publish_{tag}")
    os.makedirs(work, exist_ok=True)
    os.makedirs(os.path.join(S3_DIR, bucket), exist_ok=True)  # s3s-fs: a bucket is a directory
    archive_dir = os.path.join(S3_DIR, bucket, "a")
    psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
    config = os.path.join(work, "bench.toml")
    with open(config, "w") as f:
        f.write(f'[kafka]\nbrokers = "{BROKERS}"\ntopic = "{topic}"\ngroup = "g{tag}"\n'
                f'[archive]\nurl = "s3://{bucket}/a"\n'
                f'[warehouse]\nurl = "{PG_URL}"\nschema = "{schema}"\n')
    cfg = ["--config", config]
    res = {"records": n, "partitions": a.partitions, "reps": a.reps, "topic": topic,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(), "machine": machine(),
           "publish_command": "batchlayer " + " ".join(PUBLISH), "setup": {}, "publish": [], "duckdb": [],
           "notes": []}
    st = res["setup"]
    csv = os.path.join(work, "batch_raw.csv")
    try:
        # ---- setup: produce, ingest, copy, the CSV export ----
        log(f"{n:,} tweets: producing to {topic} ({a.partitions} partitions)")
        secs, _, _ = timed([BL] + cfg + ["produce-tweets", "--count", str(n), "--partitions", str(a.partitions),
                                         "--locations", "1000", "--start-time", "5h", "--span", "14400"], env=env)
        st["produce_s"] = round(secs, 3)
        secs, rss, doc = bl_json(cfg + ["--json", "ingest"], env, "ingest")
        if doc.get("messages") != n:
            raise RuntimeError(f"ingest archived {doc.get('messages')} of {n} messages: {json.dumps(doc)[:1000]}")
        st.update(ingest_s=round(secs, 3), ingest_rss_mib=round(rss, 1), payload_bytes=doc.get("bytes"))
        log(f"{n:,} tweets: ingested in {secs:.2f} s")
        secs, rss, doc = bl_json(cfg + ["--json", "copy"], env, "copy")
        if doc.get("rows") != n:
            raise RuntimeError(f"copy loaded {doc.get('rows')} of {n} rows: {json.dumps(doc)[:1000]}")
        st.update(copy_s=round(secs, 3), copy_rss_mib=round(rss, 1))
        log(f"{n:,} tweets: copied in {secs:.2f} s")

        objs = data_files(archive_dir, ARCHIVE_EXTENSIONS)
        if not objs:
            raise RuntimeError(f"no archived data object under {archive_dir}")
        res["archive_bytes"] = sum(b for _, b in objs)
        res["archive_objects"] = len(objs)

        export = (f"\\copy (SELECT {SELECT_LIST} FROM {schema}.batch_raw) TO '{csv}' CSV")
        secs, rss, _ = timed(PG + ["-c", export])
        st.update(csv_export_s=round(secs, 3), csv_export_rss_mib=round(rss, 1), csv_bytes=os.path.getsize(csv))
        log(f"{n:,} tweets: exported the raw table as CSV in {secs:.2f} s ({st['csv_bytes'] / MIB:,.0f} MiB)")

        peer = os.path.join(work, "duckdb_peer.py")
        with open(peer, "w") as f:
            f.write(DUCKDB_PEER)
        check = os.path.join(work, "lake_check.py")
        with open(check, "w") as f:
            f.write(LAKE_CHECK)

        # ---- repetitions: publish and DuckDB, alternately ----
        for rep in range(a.reps):
            order = ("publish", "duckdb") if rep % 2 == 0 else ("duckdb", "publish")
            for who in order:
                if who == "publish":
                    rec = one_publish(n, rep, work, env, cfg, venv_py, check, a.keep)
                    res["publish"].append(rec)
                    if rec.get("summary_rows") is None:
                        note = "publish's --json summary has no `rows` (top level or per topic): not checked"
                        if note not in res["notes"]:
                            res["notes"].append(note)
                else:
                    res["duckdb"].append(one_duckdb(n, rep, work, venv_py, peer, csv, a))
            log(f"{n:,} tweets: rep {rep + 1}/{a.reps}: publish {res['publish'][-1]['seconds']:.2f} s "
                f"{res['publish'][-1]['rss_mib']:.1f} MiB, DuckDB {res['duckdb'][-1]['seconds']:.2f} s "
                f"{res['duckdb'][-1]['rss_mib']:.1f} MiB")
        res["median"] = medians(res)
    finally:
        if a.keep:
            log(f"kept: topic {topic}, schema {schema}, archive {archive_dir}, work dir {os.path.relpath(work, REPO)}")
        else:
            try:
                psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            except RuntimeError as ex:
                log(f"could not drop {schema}: {ex}")
            shutil.rmtree(os.path.join(S3_DIR, bucket), ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    return res


def one_publish(n, rep, work, env, cfg, venv_py, check, keep):
    lake = os.path.join(work, f"lake{rep}")
    shutil.rmtree(lake, ignore_errors=True)
    secs, rss, doc = bl_json(cfg + PUBLISH, dict(env, BATCHLAYER_LAKE_URL=lake), "publish")
    rows = total(doc, "rows")
    if rows is not None and rows != n:
        raise RuntimeError(f"publish wrote {rows} of {n} rows: {json.dumps(doc)[:1000]}")
    files = data_files(lake, (".parquet",))
    if not files:
        raise RuntimeError(f"publish wrote no .parquet file under {lake}: {json.dumps(doc)[:1000]}")
    hours = sorted({os.path.relpath(os.path.dirname(p), lake) for p, _ in files})
    p = subprocess.run([venv_py, check, json.dumps([p for p, _ in files])], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"DuckDB could not read the lake {lake}:\n{p.stderr[-3000:]}")
    got = json.loads(p.stdout)
    if got["rows"] != n or got["distinct_positions"] != n:
        raise RuntimeError(f"the lake {lake} holds {got['rows']} rows, {got['distinct_positions']} distinct "
                           f"(_epoch, _partition, _offset), of {n} records")
    if not (keep and rep == 0):
        shutil.rmtree(lake, ignore_errors=True)
    return {"seconds": round(secs, 4), "rss_mib": round(rss, 1), "parquet_bytes": sum(b for _, b in files),
            "parquet_files": len(files), "hours": hours, "summary_rows": rows,
            "summary": {k: doc.get(k) for k in ("rows", "files", "bytes", "seconds") if k in doc} or doc}


def one_duckdb(n, rep, work, venv_py, peer, csv, a):
    out = os.path.join(work, f"duckdb{rep}.parquet")
    if os.path.exists(out):
        os.remove(out)
    secs, rss, stdout = timed([venv_py, peer, csv, out, str(a.duckdb_threads), SELECT_LIST, json.dumps(COLUMNS)])
    got = json.loads(stdout)
    if got.get("rows") != n:
        raise RuntimeError(f"DuckDB wrote {got.get('rows')} of {n} rows")
    size = os.path.getsize(out)
    if not (a.keep and rep == 0):
        os.remove(out)
    return {"seconds": round(secs, 4), "rss_mib": round(rss, 1), "copy_seconds": round(got["copy_seconds"], 4),
            "parquet_bytes": size, "threads": got.get("threads"), "duckdb": got.get("duckdb")}


def medians(res):
    pub, duck = res["publish"], res["duckdb"]
    m = {
        "publish_s": statistics.median(x["seconds"] for x in pub),
        "publish_rss_mib": max(x["rss_mib"] for x in pub),
        "duckdb_s": statistics.median(x["seconds"] for x in duck),
        "duckdb_copy_s": statistics.median(x["copy_seconds"] for x in duck),
        "duckdb_rss_mib": max(x["rss_mib"] for x in duck),
        "parquet_bytes": statistics.median(x["parquet_bytes"] for x in pub),
        "duckdb_parquet_bytes": statistics.median(x["parquet_bytes"] for x in duck),
        "parquet_files": statistics.median(x["parquet_files"] for x in pub),
        "hours": max(len(x["hours"]) for x in pub),
    }
    m["ratio"] = m["duckdb_s"] / m["publish_s"]
    m["bytes_ratio"] = m["parquet_bytes"] / res["archive_bytes"]
    return m


def plural(k, what):
    return f"{k:,.0f} {what}{'' if k == 1 else 's'}"


def render(runs):
    sizes = sorted(runs, key=int)
    lines = ["## The lake: `batchlayer publish` against DuckDB writing Parquet (issue 27)", "",
             "`batchlayer publish` of N tweets from the archive (s3s-fs) into a local lake directory, against "
             "DuckDB (Python, its own process) copying the same rows from a CSV export of the raw table into one "
             "Parquet file with Snappy: `COPY (SELECT ... FROM read_csv(...)) TO '...' (FORMAT parquet, COMPRESSION "
             "snappy)`. Wall time (median of the repetitions, in alternating order) and peak RSS (`/usr/bin/time -v`, "
             "the largest) of each process; ratio = DuckDB s / publish s (1.00 or more: publish at least as fast). "
             "Parquet bytes: the lake's .parquet files (the layout's columns and `_partition`, `_offset`, `_epoch`, "
             "`_timestamp`); archive bytes: the gzip archive's data objects holding the same records.", "",
             "| records | publish s | publish MiB RSS | DuckDB s | DuckDB MiB RSS | ratio | Parquet bytes "
             "| archive bytes | ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sizes:
        m = runs[s]["median"]
        lines.append(f"| {int(s):,} | {m['publish_s']:.2f} | {m['publish_rss_mib']:.1f} | {m['duckdb_s']:.2f} "
                     f"| {m['duckdb_rss_mib']:.1f} | {m['ratio']:.2f} | {m['parquet_bytes']:,.0f} "
                     f"| {runs[s]['archive_bytes']:,} | {m['bytes_ratio']:.2f} |")
    checks = []
    for s in sizes:
        m = runs[s]["median"]
        # Issue 27's speed target is at 1M; other sizes are shown beside it, not judged.
        if int(s) == 1_000_000:
            checks.append((f"{int(s):,}: DuckDB s / publish s", f"{m['ratio']:.2f}", ">= 1.0", m["ratio"] >= 1.0))
        else:
            checks.append((f"{int(s):,}: DuckDB s / publish s", f"{m['ratio']:.2f}", "(info; the target is at 1M)", None))
        checks.append((f"{int(s):,}: publish peak RSS (MiB)", f"{m['publish_rss_mib']:.1f}", f"< {RSS_TARGET_MIB}",
                       m["publish_rss_mib"] < RSS_TARGET_MIB))
    small, big = runs.get(str(1_000_000)), runs.get(str(10_000_000))
    if small and big:
        r = big["median"]["publish_rss_mib"] / small["median"]["publish_rss_mib"]
        checks.append(("publish peak RSS, 10M / 1M", f"{r:.2f}", "<= 1.2 (flat)", r <= 1.2))
    lines += ["", "| target | measured | target | met |", "|---|---:|---|---|"]
    for name, v, t, ok in checks:
        lines.append(f"| {name} | {v} | {t} | {'(info)' if ok is None else 'yes' if ok else '**no**'} |")
    lines.append("")
    for s in sizes:
        r = runs[s]
        m, st = r["median"], r["setup"]
        d = r["duckdb"][0] if r["duckdb"] else {}
        lines.append(
            f"{int(s):,}: publish wrote {plural(m['parquet_files'], 'file')} in {plural(m['hours'], 'hour folder')}; "
            f"the archive held {plural(r['archive_objects'], 'object')}. DuckDB's COPY alone (inside its process) "
            f"{m['duckdb_copy_s']:.2f} s, {d.get('threads', '?')} threads (DuckDB {d.get('duckdb', '?')}), its file "
            f"{m['duckdb_parquet_bytes']:,.0f} bytes (the six columns only). Not in DuckDB's time: the CSV export "
            f"(psql `\\copy`, {st['csv_export_s']:.2f} s, {st['csv_bytes']:,} bytes). Setup: produce "
            f"{st['produce_s']:.2f} s, ingest {st['ingest_s']:.2f} s, copy {st['copy_s']:.2f} s.")
        for note in r.get("notes", []):
            lines.append(f"Note ({int(s):,}): {note}.")
    lines.append("")
    lines.append(
        "Publish writes closed hours: the tweets' Kafka timestamps span four hours that ended before the run "
        "(`produce-tweets --start-time 5h --span 14400`), each sealed with `_SUCCESS`. Publish reads the archive from s3s-fs; DuckDB reads a local CSV "
        "file. Each lake is checked after its timed run: DuckDB reads all its files, N rows and N distinct "
        "(`_epoch`, `_partition`, `_offset`).")
    lines.append("")
    lines.append("Runs: " + "; ".join(
        f"{int(s):,} records on {runs[s]['date']}, commit {runs[s]['commit']} ({runs[s]['partitions']} partitions, "
        f"{runs[s]['reps']} repetitions; {runs[s]['machine']})" for s in sizes)
        + ". Produced by `examples/bench_publish.sh`.")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description="batchlayer publish against DuckDB writing Parquet (issue 27).")
    ap.add_argument("sizes", nargs="*", type=int, help="numbers of records (default: 1000000 10000000)")
    ap.add_argument("--quick", action="store_true",
                    help="100,000 records alone; results in bench/out/, the kept results untouched")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--duckdb-threads", type=int, default=0, help="DuckDB's threads (default: its own, all cores)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the schema, the archive, the CSV, the first lake and DuckDB's first file")
    a = ap.parse_args()
    if a.quick and a.sizes:
        ap.error("--quick or sizes, not both")
    sizes = [100_000] if a.quick else (a.sizes or [1_000_000, 10_000_000])
    if any(n < 1 for n in sizes) or a.reps < 1:
        ap.error("sizes and --reps must be at least 1")
    if not os.access(BL, os.X_OK):
        sys.exit(f"bench-publish: {BL} is missing: run examples/bench_publish.sh (it builds it)")
    venv_py = os.path.join(VENV, "bin", "python")
    if subprocess.run([venv_py, "-c", "import duckdb"], capture_output=True).returncode != 0:
        sys.exit(f"bench-publish: no duckdb in {VENV}: source tests/stack.sh (it installs the judges' venv)")
    out_json, out_md = (QUICK_JSON, QUICK_MD) if a.quick else (OUT_JSON, OUT_MD)
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    kept = {}
    if not a.quick:
        try:
            with open(out_json) as f:
                kept = json.load(f).get("runs", {})
        except (OSError, ValueError):
            pass
    env = run_env()
    text = ""
    for n in sizes:
        t0 = time.time()
        res = run_size(n, a, env, venv_py)
        res["total_s"] = round(time.time() - t0, 1)
        kept[str(n)] = res
        log(f"{n:,} records done in {res['total_s']:.0f} s")
        # Written after each size: a failure at 10M keeps the 1M row.
        with open(out_json, "w") as f:
            json.dump({"runs": kept}, f, indent=1)
        text = render(kept)
        with open(out_md, "w") as f:
            f.write(text)
    print(text)
    if not a.quick:
        write_index()


if __name__ == "__main__":
    main()
