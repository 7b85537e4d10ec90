"""Many topics, one config (issue 26, "Cost"): what an ingest and a copy run cost when one topic
of N has new data, against the same runs over that one topic alone.

    examples/bench_topics.sh [N ...] [--partitions 3] [--initial 30] [--messages 10000] [--rounds 3]
                             [--setup-jobs 4] [--no-direct] [--no-idle] [--no-profile] [--keep]

For each N (default 100 and 1,000):

* setup: N topics of --partitions partitions, each created and given --initial tweets by one
  `batchlayer produce-tweets` process (--setup-jobs at a time). Topic 0 is the *hot* topic.
* two worlds, each with its own S3 bucket, PostgreSQL schema and consumer group:
  - multi: `kafka.topics_pattern` matching the N topics (no [[topics]] routes: each topic
    loads into its derived raw table in the tweets layout);
  - single: `kafka.topic` = the hot topic alone (single-topic mode: batch_raw and its ledger).
  Both read the same hot topic, each with its own group, so each round's new messages are
  archived and loaded by both: the same work, once beside N-1 idle topics and once alone. (The
  single world does not share the multi world's archive or tables: single-topic mode has its
  own table names, and a single run beside N-1 topics' folders is not "that topic alone".)
  Each world's initial ingest and copy archive and load everything (timed, counted).
* rounds: --messages new tweets to the hot topic, then `ingest` and `copy` of each world
  (their order alternating by round), each checked (the run archived and loaded exactly the
  new messages, no topic failed). Each round is made twice: once with the S3 endpoint pointed
  at the counting proxy (bench/s3_count_proxy.py: the S3 requests by kind), once straight at
  s3s-fs (the wall times: the proxy, in Python, adds about 0.3 ms to each request, which would
  weigh on the run with more requests). --no-direct: times through the proxy. After each new-data pair,
  an idle pair (no new data anywhere; --no-idle leaves it out).
* a profile round (--no-profile leaves it out): the same, through the proxy, with -v; the
  stderr lines are timestamped as they arrive and the proxy's request log kept, to say where
  the time goes (S3 requests per idle topic by kind of request, the time upstream, the longest
  quiet stretches of the log).

Medians over the rounds. Writes bench/results-topics.json (merged by N with the sizes kept from
earlier runs) and bench/results-topics.md, and rewrites bench/RESULTS.md (bench.py's
write_index). Requests per idle topic = (multi - single) / (N - 1).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import commit, machine, write_index  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BL = os.environ.get("BATCHLAYER_BIN") or os.path.join(REPO, "target/release/batchlayer")
PG_URL = os.environ.get("BATCHLAYER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", PG_URL]
BROKERS = os.environ.get("BATCHLAYER_TEST_BROKERS", "127.0.0.1:9092")
S3_ENDPOINT = os.environ.get("BATCHLAYER_TEST_S3_ENDPOINT", "http://127.0.0.1:9000")
S3_DIR = os.environ.get("BATCHLAYER_TEST_S3_DIR", os.path.join(REPO, ".stack/s3"))
OUT_JSON = os.path.join(REPO, "bench/results-topics.json")
OUT_MD = os.path.join(REPO, "bench/results-topics.md")
KINDS = ("GET", "LIST", "PUT", "HEAD", "DELETE", "POST")
RUN_TIMEOUT = 3600


def log(*x):
    print("bench-topics:", *x, file=sys.stderr, flush=True)


def psql(sql):
    p = subprocess.run(PG + ["-c", sql], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"psql: {p.stderr.strip()}\n{sql[:300]}")
    return p.stdout


def psql_rows(sql):
    p = subprocess.run(PG + ["-At", "-c", sql], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"psql: {p.stderr.strip()}\n{sql[:300]}")
    return [x for x in p.stdout.splitlines() if x]


def drop_schema(schema):
    """Drops a schema of up to thousands of tables, a hundred tables per transaction (one
    DROP SCHEMA ... CASCADE of 4,000 tables can exceed max_locks_per_transaction)."""
    names = psql_rows(f"SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = '{schema}'")
    for i in range(0, len(names), 100):
        psql("DROP TABLE IF EXISTS " + ", ".join(names[i:i + 100]) + " CASCADE")
    psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class Proxy:
    """bench/s3_count_proxy.py as a process of its own, in front of s3s-fs."""

    def __init__(self):
        up = urllib.parse.urlsplit(S3_ENDPOINT)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "bench/s3_count_proxy.py"), "--listen", "127.0.0.1:0",
             "--upstream", f"{up.hostname}:{up.port or 80}"],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        m = re.match(r"listening on (http://\S+)$", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"the counting proxy did not start: {line!r}")
        self.url = m.group(1)

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.load(r)

    def take(self):
        return self.get("/__take")

    def log_and_take(self):
        entries = self.get("/__log")
        return entries, self.take()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_env():
    """The environment of every batchlayer process: no BATCHLAYER_* setting of the caller's
    (the environment beats the config file), the stack's S3 keys and PostgreSQL."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("BATCHLAYER_") and not k.startswith("BATCHLAYER_TEST_"))
           and k not in ("RUST_LOG", "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    env.update({
        "AWS_ACCESS_KEY_ID": os.environ.get("BATCHLAYER_TEST_S3_ACCESS_KEY", "batchlayer"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("BATCHLAYER_TEST_S3_SECRET_KEY", "batchlayer-secret"),
        "BATCHLAYER_WAREHOUSE_URL": PG_URL,
        "CI": "true",
    })
    return env


def bl(args, env, cwd, timeout=RUN_TIMEOUT, profile=False):
    """Runs batchlayer; returns (seconds, stdout, [(seconds since start, stderr line)])."""
    cmd = [BL] + args
    t0 = time.perf_counter()
    if not profile:
        try:
            p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(args)} did not finish within {timeout} s")
        secs = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"batchlayer {' '.join(args)} exited {p.returncode}:\n{p.stderr[-4000:]}")
        return secs, p.stdout, []
    # Profile: each stderr line stamped as it arrives (batchlayer's stderr is unbuffered).
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, out = [], []
    th = threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True)
    th.start()
    for line in p.stderr:
        lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    rc = p.wait(timeout)
    secs = time.perf_counter() - t0
    th.join()
    if rc != 0:
        raise RuntimeError(f"batchlayer {' '.join(args)} exited {rc}:\n" + "\n".join(l for _, l in lines[-40:]))
    return secs, out[0] if out else "", lines


def total(doc, key):
    """A total of a --json summary: the multi-topic document's, else the single-topic one's."""
    if key in doc:
        return doc[key]
    return sum(v.get(key, 0) for v in doc.get("topics", {}).values())


def trimmed(doc, keep):
    """A multi-topic --json document without the idle topics' entries (1,000 of them)."""
    if "topics" not in doc:
        return doc
    d = {k: v for k, v in doc.items() if k not in ("topics", "idle")}
    d["topics"] = {k: v for k, v in doc["topics"].items() if k in keep or k in doc.get("failed", {})}
    d["idle_count"] = len(doc.get("idle", []))
    return d


class World:
    def __init__(self, name, tag, kafka_toml, work, env):
        self.name = name
        self.bucket = f"bt-{tag}-{name}".replace("_", "-").lower()
        self.schema = f"bt_{tag}_{name}".lower()
        self.dir = work
        os.makedirs(os.path.join(S3_DIR, self.bucket), exist_ok=True)  # s3s-fs: a bucket is a directory
        drop_schema(self.schema)
        psql(f"CREATE SCHEMA {self.schema}")
        self.config = os.path.join(work, f"{name}.toml")
        with open(self.config, "w") as f:
            f.write(f'[kafka]\nbrokers = "{BROKERS}"\n{kafka_toml}\n'
                    f'[archive]\nurl = "s3://{self.bucket}/a"\n'
                    f'[warehouse]\nurl = "{PG_URL}"\nschema = "{self.schema}"\n')
        self.env = env

    def run(self, step, via, proxy, profile=False):
        """One `ingest` or `copy`; returns its record (seconds, requests, summary)."""
        env = dict(self.env, BATCHLAYER_S3_ENDPOINT=proxy.url if via == "proxy" else S3_ENDPOINT)
        args = ["--config", self.config] + (["-v"] if profile else []) + ["--json", step]
        if via == "proxy":
            proxy.take()
        secs, out, lines = bl(args, env, self.dir, profile=profile)
        rec = {"seconds": round(secs, 4), "via": via}
        if via == "proxy":
            if profile:
                entries, counts = proxy.log_and_take()
                rec["log"] = entries
                rec["stderr"] = lines
            else:
                counts = proxy.take()
            rec["requests"] = counts["total"]
            rec["by_kind"] = counts["by_kind"]
            rec["s3_seconds"] = round(sum(counts["seconds"].values()), 4)
            rec["s3_errors"] = counts["errors"]
        try:
            doc = json.loads(out)
        except ValueError:
            raise RuntimeError(f"{self.name} {step}: no JSON summary on stdout: {out[:500]!r}")
        rec["doc"] = doc
        if doc.get("failed"):
            raise RuntimeError(f"{self.name} {step}: topics failed: {json.dumps(doc['failed'])[:2000]}")
        return rec


def produce(topic, count, seed, partitions, env, cwd):
    secs, _, _ = bl(["produce-tweets", "--brokers", BROKERS, "--topic", topic, "--partitions", str(partitions),
                     "--count", str(count), "--seed", str(seed), "--locations", "1000"], env, cwd, timeout=600)
    return secs


def expect(rec, key, want, what):
    got = total(rec["doc"], key)
    if got != want:
        raise RuntimeError(f"{what}: {key} = {got}, expected {want}: {json.dumps(trimmed(rec['doc'], set()))[:2000]}")


def run_size(n, a, proxy, env):
    stamp = int(time.time()) % 1_000_000
    tag = f"{stamp}n{n}"
    prefix = f"tp{tag}_"
    topics = [f"{prefix}{i:04d}" for i in range(n)]
    hot = topics[0]
    work = os.path.join(REPO, "bench/out", f"topics_{tag}")
    os.makedirs(work, exist_ok=True)
    res = {"topics": n, "partitions": a.partitions, "initial_per_topic": a.initial, "messages": a.messages,
           "rounds": a.rounds, "hot_topic": hot, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "commit": commit(), "machine": machine(), "setup": {}, "new": {}, "idle": {}}

    # ---- setup: N topics ----
    log(f"{n} topics: creating {prefix}0000..{n - 1:04d} ({a.partitions} partitions, {a.initial} tweets each, "
        f"{a.setup_jobs} produce-tweets processes at a time)")
    t0 = time.perf_counter()
    done = [0]
    lock = threading.Lock()

    def one(i):
        produce(topics[i], a.initial, i + 1, a.partitions, env, work)
        with lock:
            done[0] += 1
            if done[0] % max(1, n // 10) == 0 or done[0] == n:
                log(f"  {done[0]}/{n} topics created ({time.perf_counter() - t0:.1f} s)")

    with ThreadPoolExecutor(a.setup_jobs) as ex:
        list(ex.map(one, range(n)))
    res["setup"]["create_topics_s"] = round(time.perf_counter() - t0, 2)
    log(f"{n} topics created in {res['setup']['create_topics_s']:.1f} s")

    multi = World("m", tag, f'group = "gm{tag}"\ntopics_pattern = \'^{prefix}[0-9]+$\'', work, env)
    single = World("s", tag, f'group = "gs{tag}"\ntopic = "{hot}"', work, env)
    worlds = {"multi": multi, "single": single}

    # ---- initial ingest and copy: everything archived and loaded ----
    for wname, w, want in (("single", single, a.initial), ("multi", multi, n * a.initial)):
        for step, key in (("ingest", "messages"), ("copy", "rows")):
            rec = w.run(step, "proxy", proxy)
            expect(rec, key, want, f"initial {wname} {step}")
            res["setup"][f"initial_{wname}_{step}"] = {k: rec[k] for k in ("seconds", "requests", "by_kind", "s3_seconds")}
            log(f"initial {wname} {step}: {want} {key} in {rec['seconds']:.2f} s, {rec['requests']} S3 requests")

    vias = ["proxy"] + ([] if a.no_direct else ["direct"])
    for kind in ("new", "idle"):
        for wname in worlds:
            res[kind][wname] = {"ingest": [], "copy": []}
    seed = 1_000_000
    for r in range(a.rounds):
        order = ["multi", "single"] if r % 2 == 0 else ["single", "multi"]
        for via in vias:
            seed += 1
            produce(hot, a.messages, seed, a.partitions, env, work)
            for wname in order:
                for step, key in (("ingest", "messages"), ("copy", "rows")):
                    rec = worlds[wname].run(step, via, proxy)
                    expect(rec, key, a.messages, f"round {r + 1} {wname} {step} ({via})")
                    rec["doc"] = trimmed(rec["doc"], {hot})
                    res["new"][wname][step].append(rec)
            if not a.no_idle:
                for wname in order:
                    for step, key in (("ingest", "messages"), ("copy", "rows")):
                        rec = worlds[wname].run(step, via, proxy)
                        expect(rec, key, 0, f"round {r + 1} idle {wname} {step} ({via})")
                        rec["doc"] = trimmed(rec["doc"], {hot})
                        res["idle"][wname][step].append(rec)
            log(f"{n} topics: round {r + 1}/{a.rounds} ({via}) " + ", ".join(
                f"{w} {s} {res['new'][w][s][-1]['seconds']:.2f} s"
                + (f" {res['new'][w][s][-1]['requests']} req" if via == "proxy" else "")
                for w in ("multi", "single") for s in ("ingest", "copy")))

    # ---- where the time goes: one more round through the proxy, with -v ----
    if not a.no_profile:
        seed += 1
        produce(hot, a.messages, seed, a.partitions, env, work)
        prof = {}
        for wname in ("multi", "single"):
            for step, key in (("ingest", "messages"), ("copy", "rows")):
                rec = worlds[wname].run(step, "proxy", proxy, profile=True)
                expect(rec, key, a.messages, f"profile {wname} {step}")
                with open(os.path.join(work, f"profile-{wname}-{step}.stderr"), "w") as f:
                    f.writelines(f"{t:9.4f} {line}\n" for t, line in rec["stderr"])
                with open(os.path.join(work, f"profile-{wname}-{step}.requests.json"), "w") as f:
                    json.dump(rec["log"], f)
                with open(os.path.join(work, f"profile-{wname}-{step}.summary.json"), "w") as f:
                    json.dump(rec["doc"], f)
                prof[f"{wname} {step}"] = analyse(rec, topics, hot, multi.bucket if wname == "multi" else single.bucket)
        res["profile"] = prof
        log(f"{n} topics: profile logs in {os.path.relpath(work, REPO)}/")

    res["median"] = medians(res, n)
    if not a.keep:
        for w in worlds.values():
            drop_schema(w.schema)
            shutil.rmtree(os.path.join(S3_DIR, w.bucket), ignore_errors=True)
    return res


def med(recs, key, via=None):
    xs = [r[key] for r in recs if (via is None or r["via"] == via) and r.get(key) is not None]
    return statistics.median(xs) if xs else None


def medians(res, n):
    out = {}
    for kind in ("new", "idle"):
        for wname, steps in res[kind].items():
            for step, recs in steps.items():
                if not recs:
                    continue
                timing = "direct" if any(r["via"] == "direct" for r in recs) else "proxy"
                out[f"{kind} {wname} {step}"] = {
                    "seconds": med(recs, "seconds", timing), "timed": timing,
                    "seconds_via_proxy": med(recs, "seconds", "proxy"),
                    "requests": med(recs, "requests", "proxy"),
                    "by_kind": {k: statistics.median(r["by_kind"].get(k, 0) for r in recs if r["via"] == "proxy")
                                for k in KINDS},
                    "s3_seconds": med(recs, "s3_seconds", "proxy"),
                }
        for step in ("ingest", "copy"):
            m, s = out.get(f"{kind} multi {step}"), out.get(f"{kind} single {step}")
            if m and s:
                out[f"{kind} {step}"] = {
                    "ratio": m["seconds"] / s["seconds"] if s["seconds"] else None,
                    "requests_per_idle_topic": (m["requests"] - s["requests"]) / (n - 1) if n > 1 else None,
                }
    return out


# ---- where the time goes ----

def analyse(rec, topics, hot, bucket):
    """Requests by pattern (topic names and numbers replaced), upstream time by whom, and the
    longest quiet stretches of the -v log."""
    names = set(topics)
    topic_re = re.compile(re.escape(hot[:-4]) + r"[0-9]+")
    patterns, idle_req, idle_s, hot_req, hot_s, other_req, other_s = {}, 0, 0.0, 0, 0.0, 0, 0.0
    for start, kind, method, path, status, secs in rec["log"]:
        target = urllib.parse.unquote(path)
        seen = set(topic_re.findall(target)) & names
        if hot in seen:
            who = "hot"
            hot_req += 1
            hot_s += secs
        elif seen:
            who = "idle"
            idle_req += 1
            idle_s += secs
        else:
            who = "other"
            other_req += 1
            other_s += secs
        norm = topic_re.sub(lambda m: "{hot}" if m.group(0) == hot else "{topic}", target)
        norm = norm.replace(bucket, "{bucket}")
        norm = re.sub(r"[0-9]+", "#", norm)
        key = f"{kind} {norm}" + ("" if status < 400 else f" -> {status}")
        p = patterns.setdefault(key, {"who": who, "count": 0, "seconds": 0.0})
        p["count"] += 1
        p["seconds"] += secs
    lines = rec["stderr"]
    stamps = [(0.0, "(the process's start)")] + lines + [(rec["seconds"], "(its exit)")]
    gaps = []
    for (t1, l1), (t2, _l2) in zip(stamps, stamps[1:]):
        gaps.append((t2 - t1, topic_re.sub("{topic}", l1)[:140]))
    gaps.sort(reverse=True)
    top = sorted(patterns.items(), key=lambda kv: -kv[1]["count"])
    return {
        "seconds": rec["seconds"], "requests": rec["requests"], "by_kind": rec["by_kind"],
        "s3_seconds": rec["s3_seconds"],
        "idle_requests": idle_req, "idle_s3_seconds": round(idle_s, 4),
        "hot_requests": hot_req, "hot_s3_seconds": round(hot_s, 4),
        "other_requests": other_req, "other_s3_seconds": round(other_s, 4),
        "patterns": [{"request": k, **{kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()}}
                     for k, v in top[:25]],
        "log_lines": len(lines),
        "quiet": [{"seconds": round(g, 4), "after": l} for g, l in gaps[:5]],
    }


# ---- report ----

def fmt_s(x):
    return "-" if x is None else f"{x:.2f}"


def fmt_r(x):
    return "-" if x is None else f"{x:,.0f}"


def render(runs):
    sizes = sorted(runs, key=int)
    lines = ["## Many topics, one config: one topic of N with new data (issue 26)", ""]
    params = {(runs[s]["partitions"], runs[s]["messages"], runs[s]["rounds"]) for s in sizes}
    direct = all(v.get("timed") == "direct" for s in sizes for k, v in runs[s]["median"].items() if "timed" in v)
    if len(params) == 1:
        p, msgs, rounds = next(iter(params))
        what = (f"Each topic has {p} partitions; one (the hot topic) receives {msgs:,} new tweets before each "
                f"round; medians of {rounds} rounds.")
    else:
        what = ("One topic (the hot topic) receives new tweets before each round (partitions, tweets and rounds "
                "of each size in the Runs line below); medians over the rounds.")
    lines.append(
        what + " *multi*: one config whose `kafka.topics_pattern` matches all N topics; *single*: the hot topic "
        "alone (`kafka.topic`), its own archive, schema and group, reading the same new messages. Wall time of "
        "`ingest` and `copy` (" + ("S3 straight to s3s-fs" if direct else "through the counting proxy") +
        "), S3 requests per run (through a counting proxy), and requests per idle topic = (multi - single) / "
        "(N - 1). Targets: multi within 2x of single, at most 2 S3 requests per idle topic.")
    lines += ["",
              "| topics | partitions | ingest s multi | ingest s single | ratio | copy s multi | copy s single | ratio "
              "| S3 req ingest multi / single | S3 req copy multi / single | req per idle topic, ingest / copy |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    checks = []
    for s in sizes:
        r = runs[s]
        m = r["median"]
        row = [f"{int(s):,}", str(r["partitions"])]
        reqs, per = [], []
        for step in ("ingest", "copy"):
            mm, ss, c = m.get(f"new multi {step}"), m.get(f"new single {step}"), m.get(f"new {step}", {})
            if not (mm and ss):
                row += ["-", "-", "-"]
                reqs.append("-")
                per.append("-")
                continue
            ratio = c.get("ratio")
            row += [fmt_s(mm["seconds"]), fmt_s(ss["seconds"]), "-" if ratio is None else f"{ratio:.2f}x"]
            reqs.append(f"{fmt_r(mm['requests'])} / {fmt_r(ss['requests'])}")
            rp = c.get("requests_per_idle_topic")
            per.append("-" if rp is None else f"{rp:.2f}")
            if ratio is not None:
                checks.append((f"{int(s):,} topics: {step} time, multi / single", f"{ratio:.2f}x", "<= 2x", ratio <= 2))
            if rp is not None:
                checks.append((f"{int(s):,} topics: {step} S3 requests per idle topic", f"{rp:.2f}", "<= 2", rp <= 2))
        lines.append("| " + " | ".join(row + reqs + [" / ".join(per)]) + " |")
    for s in sizes:
        m = runs[s]["median"]
        via = [f"{step} {m[f'new multi {step}']['seconds_via_proxy']:.2f} / {m[f'new single {step}']['seconds_via_proxy']:.2f} s"
               for step in ("ingest", "copy") if f"new multi {step}" in m and f"new single {step}" in m
               and m[f"new multi {step}"]["timed"] == "direct"]
        if via:
            lines.append(f"\n{int(s):,} topics through the proxy (the counting rounds), multi / single: " + ", ".join(via) + ".")
    lines += ["", "| target | measured | target | met |", "|---|---:|---|---|"]
    for name, v, t, ok in checks:
        lines.append(f"| {name} | {v} | {t} | {'yes' if ok else '**no**'} |")

    # Idle runs and setup.
    lines += ["", "No new data anywhere (an idle run of each world), and the setup:", "",
              "| topics | idle ingest s multi / single | req multi / single | idle copy s multi / single "
              "| req multi / single | req per idle topic, ingest / copy | create N topics s | initial ingest s (N x "
              "initial tweets) | initial copy s |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sizes:
        r = runs[s]
        m = r["median"]
        cells = [f"{int(s):,}"]
        per = []
        for step in ("ingest", "copy"):
            mm, ss = m.get(f"idle multi {step}"), m.get(f"idle single {step}")
            if mm and ss:
                cells += [f"{fmt_s(mm['seconds'])} / {fmt_s(ss['seconds'])}",
                          f"{fmt_r(mm['requests'])} / {fmt_r(ss['requests'])}"]
                rp = m.get(f"idle {step}", {}).get("requests_per_idle_topic")
                per.append("-" if rp is None else f"{rp:.2f}")
            else:
                cells += ["-", "-"]
                per.append("-")
        st = r["setup"]
        ii, ic = st.get("initial_multi_ingest", {}), st.get("initial_multi_copy", {})
        cells += [" / ".join(per), fmt_s(st.get("create_topics_s")),
                  f"{fmt_s(ii.get('seconds'))} ({fmt_r(ii.get('requests'))} req)",
                  f"{fmt_s(ic.get('seconds'))} ({fmt_r(ic.get('requests'))} req)"]
        lines.append("| " + " | ".join(cells) + " |")

    # Where the time goes.
    notes = []
    for s in sizes:
        r = runs[s]
        prof = r.get("profile")
        if not prof:
            continue
        notes.append(f"**{int(s):,} topics** (one profile round through the proxy, with -v; "
                     f"logs in `bench/out/topics_*n{s}/`):")
        for step in ("ingest", "copy"):
            pm, ps = prof.get(f"multi {step}"), prof.get(f"single {step}")
            if not (pm and ps):
                continue
            idle = int(s) - 1
            kinds = ", ".join(f"{k} {v}" for k, v in pm["by_kind"].items() if v)
            per = "; ".join(f"`{p['request']}` {p['count'] / idle:.2f}" for p in pm["patterns"]
                            if p["who"] == "idle" and p["count"] >= idle / 2)
            quiet = "; ".join(f"{q['seconds']:.2f} s after `{q['after']}`" for q in pm["quiet"][:3])
            notes.append(
                f"* {step}: multi {pm['seconds']:.2f} s against single {ps['seconds']:.2f} s. Multi made "
                f"{pm['requests']:,} S3 requests ({kinds}), {pm['s3_seconds']:.2f} s upstream in all; the idle "
                f"topics' {pm['idle_requests']:,} took {pm['idle_s3_seconds']:.2f} s, the hot topic's "
                f"{pm['hot_requests']:,} {pm['hot_s3_seconds']:.2f} s (single: {ps['requests']:,} requests, "
                f"{ps['s3_seconds']:.2f} s). Per idle topic: {per or 'no request pattern on every idle topic'}. "
                f"Longest quiet stretches of the -v log: {quiet or '-'}.")
        notes.append("")
    if notes:
        lines += ["", "### Where the time goes", "",
                  "Time upstream is the sum of the requests' times at the proxy (requests made at once count "
                  "each); what is left of the wall time is Kafka, PostgreSQL and the process itself. "
                  "A request pattern replaces topic names with `{topic}` (`{hot}` for the hot topic) and "
                  "numbers with `#`.", ""] + notes
    lines.append("Runs: " + "; ".join(
        f"{int(s):,} topics on {runs[s]['date']}, commit {runs[s]['commit']} ({runs[s]['partitions']} partitions, "
        f"{runs[s]['initial_per_topic']} initial tweets per topic, {runs[s]['messages']:,} new per round, "
        f"{runs[s]['rounds']} rounds, setup to end {runs[s].get('total_s', 0):.0f} s; {runs[s]['machine']})"
        for s in sizes) + ". Produced by `examples/bench_topics.sh`.")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description="Many topics, one config: the cost of idle topics (issue 26).")
    ap.add_argument("sizes", nargs="*", type=int, help="numbers of topics (default: 100 1000)")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--initial", type=int, default=30, help="tweets per topic before the rounds")
    ap.add_argument("--messages", type=int, default=10_000, help="new tweets to the hot topic per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--setup-jobs", type=int, default=4, help="produce-tweets processes at a time in the setup")
    ap.add_argument("--no-direct", action="store_true", help="time the rounds through the proxy (no direct rounds)")
    ap.add_argument("--no-idle", action="store_true", help="leave out the idle runs")
    ap.add_argument("--no-profile", action="store_true", help="leave out the -v profile round")
    ap.add_argument("--keep", action="store_true", help="keep the schemas and buckets (topics stay in tansu anyway)")
    a = ap.parse_args()
    sizes = a.sizes or [100, 1000]
    if any(n < 2 for n in sizes):
        ap.error("each size must be at least 2 topics (one with data, one idle)")
    if not os.access(BL, os.X_OK):
        sys.exit(f"bench-topics: {BL} is missing: run examples/bench_topics.sh (it builds it)")
    env = run_env()
    proxy = Proxy()
    log(f"counting proxy at {proxy.url} in front of {S3_ENDPOINT}")
    try:
        try:
            with open(OUT_JSON) as f:
                kept = json.load(f).get("runs", {})
        except (OSError, ValueError):
            kept = {}
        for n in sizes:
            t0 = time.time()
            res = run_size(n, a, proxy, env)
            res["total_s"] = round(time.time() - t0, 1)
            kept[str(n)] = res
            log(f"{n} topics done in {res['total_s']:.0f} s")
            # Written after each size: a failure at 1,000 keeps the 100 row.
            with open(OUT_JSON, "w") as f:
                json.dump({"runs": kept}, f, indent=1)
            text = render(kept)
            with open(OUT_MD, "w") as f:
                f.write(text)
        print(text)
        write_index()
    finally:
        proxy.stop()


if __name__ == "__main__":
    main()
