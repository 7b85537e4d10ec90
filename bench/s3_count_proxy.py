"""A counting HTTP reverse proxy for an S3 endpoint (Python's standard library only).

    python3 bench/s3_count_proxy.py [--listen 127.0.0.1:0] [--upstream 127.0.0.1:9000]

Prints `listening on http://HOST:PORT` on stdout once it accepts connections, then forwards
every request (any method; the body streamed, chunked or by Content-Length) to the upstream
S3 server with its headers unchanged, the Host header included, so a SigV4 signature made for
the proxy's address stays valid (s3s-fs checks the signature against the Host header it
receives, not against its own address: tests/common/proxy.rs and bench/scale.py forward the
same way). Each client connection keeps one upstream connection alive.

It counts requests by kind: GET, PUT, HEAD, DELETE, POST, and LIST (a GET of a bucket, with no
key, or one with `list-type`), and the seconds the upstream took for each kind. Its own paths
(no S3 bucket name starts with `_`):

    GET /__counts   {"total": N, "by_kind": {...}, "errors": N, "seconds": {...}}
    GET /__take     the same, and resets the counts and the log
    GET /__reset    resets
    GET /__log      the requests since the last reset: [[start s, kind, method, path, status, s], ...]

bench/topics.py runs it as a process of its own (so its threads never share a GIL with the
benchmark), and reads it between runs.
"""
import argparse
import http.client
import json
import select
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("GET", "LIST", "PUT", "HEAD", "DELETE", "POST")
# Per hop; everything else goes through unchanged (Host, Content-Length, Transfer-Encoding,
# Expect and every x-amz-* header: what SigV4 may sign).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "upgrade", "proxy-authorization"}
LOG_LIMIT = 2_000_000
BLOCK = 256 * 1024


def kind_of(method, target):
    """GET, LIST, PUT, HEAD, DELETE, POST (other methods: their name)."""
    if method != "GET":
        return method
    parts = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    segments = parts.path.lstrip("/").split("/", 1)
    key = segments[1] if len(segments) > 1 else ""
    if "list-type" in query or not key:
        return "LIST"
    return "GET"


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.t0 = time.perf_counter()
        self.by_kind = {k: 0 for k in KINDS}
        self.seconds = {k: 0.0 for k in KINDS}
        self.errors = 0
        self.log = []

    def add(self, kind, method, path, status, started, secs):
        with self.lock:
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            self.seconds[kind] = self.seconds.get(kind, 0.0) + secs
            if status >= 400 or status == 0:
                self.errors += 1
            if len(self.log) < LOG_LIMIT:
                self.log.append([round(started - self.t0, 6), kind, method, path, status, round(secs, 6)])

    def snapshot(self, reset=False, log=False):
        with self.lock:
            d = {"total": sum(self.by_kind.values()), "by_kind": dict(self.by_kind),
                 "errors": self.errors, "seconds": {k: round(v, 6) for k, v in self.seconds.items()}}
            if log:
                d = self.log
            if reset:
                self.reset()
            return d


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    upstream_addr = ("127.0.0.1", 9000)
    counts: Counts = None  # set by serve()

    def log_message(self, *args):  # one line per request would cost more than the request
        pass

    def setup(self):
        super().setup()
        self.up = None

    def finish(self):
        try:
            super().finish()
        finally:
            if self.up is not None:
                self.up.close()

    # ---- the proxy's own paths ----
    def control(self):
        path = self.path.split("?", 1)[0]
        if path == "/__counts":
            body = self.counts.snapshot()
        elif path == "/__take":
            body = self.counts.snapshot(reset=True)
        elif path == "/__reset":
            self.counts.snapshot(reset=True)
            body = {"reset": True}
        elif path == "/__log":
            body = self.counts.snapshot(log=True)
        else:
            body = {"error": f"unknown control path {path}"}
        data = json.dumps(body).encode()
        self.send_response_only(200 if "error" not in body else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # ---- forwarding ----
    def upstream(self):
        """The connection's upstream connection, fresh if the server closed the kept one."""
        up = self.up
        if up is not None and up.sock is not None:
            # A kept connection the server has closed reads as ready (EOF): start anew.
            r, _, _ = select.select([up.sock], [], [], 0)
            if r:
                up.close()
        if up is None:
            up = self.up = http.client.HTTPConnection(*self.upstream_addr, timeout=600)
        return up

    def forward_body(self, up):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            # The chunks as they came (aws-chunked signatures ride inside them).
            while True:
                line = self.rfile.readline(65537)
                up.send(line)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the blank line
                        t = self.rfile.readline(65537)
                        up.send(t)
                        if t in (b"\r\n", b"\n", b""):
                            return
                left = size + 2  # the data and its CRLF
                while left:
                    d = self.rfile.read(min(left, BLOCK))
                    if not d:
                        raise ConnectionError("client closed mid-chunk")
                    up.send(d)
                    left -= len(d)
        n = int(self.headers.get("Content-Length") or 0)
        while n:
            d = self.rfile.read(min(n, BLOCK))
            if not d:
                raise ConnectionError("client closed mid-body")
            up.send(d)
            n -= len(d)

    def send_upstream(self, has_body):
        up = self.upstream()
        up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() not in HOP_BY_HOP:
                up.putheader(k, v)
        up.endheaders()
        if has_body:
            self.forward_body(up)
        return up.getresponse()

    def proxy(self):
        if self.path.startswith("/__"):
            return self.control()
        started = time.perf_counter()
        kind = kind_of(self.command, self.path)
        has_body = "Content-Length" in self.headers or "Transfer-Encoding" in self.headers
        status = 0
        try:
            try:
                resp = self.send_upstream(has_body)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The kept connection died under us; a request without a body can go again.
                if "Transfer-Encoding" in self.headers or int(self.headers.get("Content-Length") or 0) > 0:
                    raise
                if self.up is not None:
                    self.up.close()
                resp = self.send_upstream(has_body)
            status = resp.status
            self.send_response_only(resp.status, resp.reason)
            chunked = False
            length_known = False
            for k, v in resp.getheaders():
                lk = k.lower()
                if lk in HOP_BY_HOP:
                    continue
                if lk == "transfer-encoding" and "chunked" in v.lower():
                    chunked = True
                if lk == "content-length":
                    length_known = True
                self.send_header(k, v)
            no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
            if not (no_body or chunked or length_known):
                # Delimited by the close: so must the answer to the client be.
                self.close_connection = True
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if not no_body:
                while True:
                    d = resp.read1(BLOCK) if chunked else resp.read(BLOCK)
                    if not d:
                        break
                    if chunked:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(d), d))
                    else:
                        self.wfile.write(d)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            resp.close()
            if resp.will_close and self.up is not None:
                self.up.close()
        except Exception:
            if self.up is not None:
                self.up.close()
            self.close_connection = True
            if status == 0:
                try:
                    self.send_error(502, "upstream failed")
                except OSError:
                    pass
            raise
        finally:
            self.counts.add(kind, self.command, self.path, status, started, time.perf_counter() - started)


for _m in ("GET", "PUT", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH"):
    setattr(Handler, "do_" + _m, Handler.proxy)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        # A request that failed was counted (status 0 or the upstream's); a closed client
        # connection is no news.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, BrokenPipeError, socket.timeout)):
            super().handle_error(request, client_address)


def serve(listen=("127.0.0.1", 0), upstream=("127.0.0.1", 9000)):
    """Starts the proxy in a thread of this process; returns (server, counts, port)."""
    counts = Counts()
    handler = type("BoundHandler", (Handler,), {"upstream_addr": upstream, "counts": counts})
    srv = Server(listen, handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, counts, srv.server_address[1]


def hostport(s, default_host="127.0.0.1"):
    host, _, port = s.rpartition(":")
    return (host or default_host, int(port))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    ap.add_argument("--upstream", default="127.0.0.1:9000", help="the S3 server, HOST:PORT")
    a = ap.parse_args()
    srv, _, port = serve(hostport(a.listen), hostport(a.upstream))
    print(f"listening on http://{srv.server_address[0]}:{port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
