"""What a run costs as the archive grows: ingest and copy with no new data and with one new
object, on archives of 1k, 10k and 100k objects, on a local directory and on s3s-fs. Reports
wall time (median of repetitions) and S3 requests (counted by a proxy in front of s3s-fs), and
the same for --full-scan (the whole-archive listing) for contrast. Run through
examples/bench_scale.sh (which starts the stack and builds the release binary).

The archive's history is synthesised: N small objects of a partition the topic does not have
(so no run reads their offsets), grouped ten to a manifest in an old day folder, and their
ledger rows, written straight into the directory (s3s-fs serves plain files) and PostgreSQL.
The topic itself has real data, archived and loaded by batchlayer before the measurements."""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BL = os.path.join(REPO, "target/release/batchlayer")
S3_DIR = os.environ.get("BATCHLAYER_TEST_S3_DIR", os.path.join(REPO, ".stack/s3"))
PG = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"]
REQ = re.compile(rb"(?:GET|PUT|POST|HEAD|DELETE) /[^ \r\n]* HTTP/1\.1\r\n")


class CountingProxy:
    """Forwards TCP to s3s-fs and counts the HTTP requests it sees."""

    def __init__(self, target=("127.0.0.1", 9000)):
        self.target = target
        self.count = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            c, _ = self.sock.accept()
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        u = socket.create_connection(self.target)

        def up():
            tail = b""
            while True:
                d = c.recv(65536)
                if not d:
                    break
                seen = tail + d
                n = len(REQ.findall(seen)) - len(REQ.findall(tail))
                with self.lock:
                    self.count += n
                tail = seen[-64:]
                u.sendall(d)
            try:
                u.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        t = threading.Thread(target=up, daemon=True)
        t.start()
        while True:
            d = u.recv(65536)
            if not d:
                break
            c.sendall(d)
        # The server closed: so does the client's side (a client reading to EOF ends here).
        try:
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        t.join()
        c.close()
        u.close()

    def take(self):
        with self.lock:
            n, self.count = self.count, 0
        return n


def psql(sql, stdin=None):
    p = subprocess.run(PG + ["-c", sql], input=stdin, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"psql: {p.stderr.strip()}\n{sql[:300]}")


def frame(payload: bytes) -> bytes:
    return payload.replace(b"\\", b"\\\\").replace(b"\n", b"\\\n").replace(b"\r", b"\\\r") + b"\n"


class World:
    def __init__(self, store, n, proxy):
        tag = f"{store[0]}{n}_{int(time.time() * 1000) % 10_000_000}"
        self.topic, self.group, self.schema = f"sc{tag}", f"g{tag}", f"bench_scale_{tag}"
        self.store, self.n, self.proxy = store, n, proxy
        self.dir = os.path.join(REPO, "bench/out", f"scale_{tag}")
        os.makedirs(self.dir, exist_ok=True)
        self.env = dict(os.environ, CI="true")
        if store == "local":
            self.root = os.path.join(self.dir, "archive")
            url = self.root
        else:
            bucket = f"scale-{tag}".replace("_", "-")
            os.makedirs(os.path.join(S3_DIR, bucket), exist_ok=True)
            self.root = os.path.join(S3_DIR, bucket, "a")
            url = f"s3://{bucket}/a"
            self.env.update(
                AWS_ACCESS_KEY_ID="batchlayer",
                AWS_SECRET_ACCESS_KEY="batchlayer-secret",
                BATCHLAYER_S3_ENDPOINT=f"http://127.0.0.1:{proxy.port}",
            )
        self.config = os.path.join(self.dir, "batchlayer.toml")
        with open(self.config, "w") as f:
            f.write(
                f'[kafka]\nbrokers = "127.0.0.1:9092"\ntopic = "{self.topic}"\ngroup = "{self.group}"\n'
                f'[archive]\nurl = "{url}"\n[warehouse]\nschema = "{self.schema}"\n'
            )
        psql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE; CREATE SCHEMA {self.schema}")

    def bl(self, *args):
        t0 = time.perf_counter()
        p = subprocess.run([BL, "--config", self.config, *args], env=self.env, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"batchlayer {' '.join(args)}: {p.stderr.strip()}")
        return secs, p.stdout

    def produce(self, count, seed):
        self.bl("produce-tweets", "--count", str(count), "--seed", str(seed), "--partitions", "1")

    def synthesize(self):
        """N archived, loaded objects of partition 99, ten per manifest, in 2020's folders."""
        folder = os.path.join(self.root, self.topic, "2020", "01", "01", "00")
        mdir = os.path.join(self.root, "_manifests", self.topic, "20200101")
        os.makedirs(folder, exist_ok=True)
        os.makedirs(mdir, exist_ok=True)
        rows = []
        entries = []
        for i in range(self.n):
            name = f"{self.topic}+99+{i:020}+{i:020}.log"
            body = frame(f"{i};2020-01-01 00:00:00;1;Oslo;2;3;".encode())
            with open(os.path.join(folder, name), "wb") as f:
                f.write(body)
            key = f"{self.topic}/2020/01/01/00/{name}"
            sha = __import__("hashlib").sha256(body).hexdigest()
            entries.append({
                "key": key, "topic": self.topic, "partition": 99, "first_offset": i, "last_offset": i,
                "records": 1, "bytes": len(body), "uncompressed_bytes": len(body), "sha256": sha,
                "compression": "none",
            })
            if len(entries) == 10 or i == self.n - 1:
                mname = f"20200101T000000.000Z-{i:09}"
                with open(os.path.join(mdir, mname + ".json"), "w") as f:
                    json.dump({
                        "run_id": mname, "topic": self.topic, "group": self.group,
                        "started_at": "2020-01-01T00:00:00Z", "finished_at": "2020-01-01T00:00:00Z",
                        "objects": entries, "rejected_key": None, "rejected": 0, "epoch": 0,
                    }, f)
                for e in entries:
                    rows.append("\t".join(map(str, [
                        e["key"], e["bytes"], e["sha256"], 1, 0, f"{self.schema}.batch_raw", self.topic,
                        99, 0, e["first_offset"], e["last_offset"], 0, mname, len(entries)])))
                entries = []
        psql(
            f"\\copy {self.schema}.batchlayer_loads (key, size, sha256, rows_loaded, rows_rejected, "
            "target_table, topic, partition_id, epoch, first_offset, last_offset, rows_skipped, manifest, "
            "manifest_objects) FROM STDIN",
            stdin="\n".join(rows) + "\n",
        )
        psql(f"ANALYZE {self.schema}.batchlayer_loads")

    def measure(self, *args):
        if self.proxy:
            self.proxy.take()
        secs, out = self.bl("--json", *args)
        return secs, (self.proxy.take() if self.proxy else 0), json.loads(out)


def run_one(store, n, reps, proxy):
    w = World(store, n, proxy if store == "s3" else None)
    w.produce(200, 1)
    w.bl("ingest")
    w.bl("copy")
    w.synthesize()
    res = {k: [] for k in ["ingest idle", "copy idle", "ingest new", "copy new"]}
    for r in range(reps):
        res["ingest idle"].append(w.measure("ingest"))
        res["copy idle"].append(w.measure("copy"))
        w.produce(50, 100 + r)
        res["ingest new"].append(w.measure("ingest"))
        res["copy new"].append(w.measure("copy"))
        got = res["copy new"][-1][2]
        assert got["rows"] == 50, got
    # The whole-archive listing, for contrast (one new object, so ingest reconciles). Not on
    # s3s-fs beyond 10k objects: its listing of 100k objects did not end within 10 minutes.
    if store == "local" or n <= 10_000:
        w.produce(50, 99)
        res["ingest new --full-scan"] = [w.measure("ingest", "--full-scan")]
        res["copy new --full-scan"] = [w.measure("copy", "--full-scan")]
    out = {}
    for k, v in res.items():
        out[k] = {"seconds": statistics.median(x[0] for x in v), "requests": statistics.median(x[1] for x in v)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stores", default="local,s3")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    proxy = CountingProxy()
    results = {}
    for store in a.stores.split(","):
        for n in sizes:
            t0 = time.time()
            results[(store, n)] = run_one(store, n, a.reps, proxy)
            print(f"{store} {n}: done in {time.time() - t0:.0f}s", flush=True)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"## Cost of a run as the archive grows (commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Median of {a.reps} repetitions (1 for --full-scan). S3 requests counted by a proxy in front of s3s-fs "
        "(local: no S3). 'idle': no new data; 'new': one new object (50 messages).",
        "",
    ]
    steps = list(next(iter(results.values())).keys())
    with open(os.path.join(REPO, "bench/scale-results.json"), "w") as f:
        json.dump({f"{k[0]} {k[1]}": v for k, v in results.items()}, f, indent=1)
    for store in a.stores.split(","):
        lines += [f"### {store}", "", "| run | " + " | ".join(f"{n:,} objects" for n in sizes) + f" | {sizes[-1]:,} / {sizes[0]:,} |",
                  "|---|" + "---:|" * (len(sizes) + 1)]
        for s in steps:
            cells = []
            for n in sizes:
                r = results[(store, n)].get(s)
                if r is None:
                    cells.append("not run")
                    continue
                cells.append(f"{r['seconds']:.3f} s" + (f", {r['requests']:.0f} req" if store == "s3" else ""))
            first, last = results[(store, sizes[0])].get(s), results[(store, sizes[-1])].get(s)
            if first and last and first["seconds"]:
                cells.append(f"{last['seconds'] / first['seconds']:.2f}x")
            else:
                cells.append("-")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(REPO, "bench/scale-results.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
