#!/usr/bin/env python3
"""A Schema Registry stand-in for the tests: the subset of Confluent Schema Registry's REST API
that batchlayer and its tests use, each rule modelled on Confluent's documentation, with the
page beside the rule. Python 3 standard library only.

Usage: registry_standin.py [--host 127.0.0.1] [--port 8081] [--state FILE]
  --port 0 picks a free port. The first line on stdout is "listening on HOST:PORT".
  --state FILE keeps the schemas and subjects across restarts (read at start, written after
  each registration).
  Basic authentication when BATCHLAYER_STANDIN_REGISTRY_USER and
  BATCHLAYER_STANDIN_REGISTRY_PASSWORD are set; bearer tokens when
  BATCHLAYER_STANDIN_REGISTRY_TOKEN is set (either credential then lets a request in).

Pages cited (Confluent's docs):
  API  = https://docs.confluent.io/platform/current/schema-registry/develop/api.html
  GET  = https://docs.confluent.io/cloud/current/ccloud/get-schema/            (GET /schemas/ids/:id)
  REG  = https://docs.confluent.io/cloud/current/ccloud/register/              (POST /subjects/:s/versions)
  VERS = https://docs.confluent.io/cloud/current/ccloud/list-versions/         (GET /subjects/:s/versions)
  BYV  = https://docs.confluent.io/cloud/current/ccloud/get-schema-by-version/ (GET /subjects/:s/versions/:v)
  AUTH = https://docs.confluent.io/platform/current/security/authentication/http-basic-auth/overview.html
  AVRO = https://avro.apache.org/docs/1.11.1/specification/ (what a valid Avro schema is)

Not modelled: compatibility checks (409: every valid schema is accepted into a subject),
schema references, Protobuf schemas (refused with 42201), deletes, modes, contexts,
config, normalisation beyond JSON whitespace and key order.
"""

import argparse
import base64
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

# API, "Content Types": requests and answers are application/vnd.schemaregistry.v1+json;
# the less specific application/vnd.schemaregistry+json and application/json are accepted as
# well, and a request body with no content type (or the generic application/octet-stream) is
# taken as JSON. Any other type is refused (415).
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPTED_BODY_TYPES = {
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "application/json",
    "application/octet-stream",
    "",
}

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_INT32 = 2**31 - 1


class Refused(Exception):
    """An error answer: HTTP status, the registry's error code, its message (API, "Errors":
    every error is {"error_code": n, "message": "..."})."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def invalid(message):
    # REG: 422 "Unprocessable entity. Error code 42201 indicates an invalid schema or schema type."
    return Refused(422, 42201, "Invalid schema: " + message)


def fullname(name, namespace):
    if "." in name:
        return name
    return f"{namespace}.{name}" if namespace else name


def check_name(name, what):
    # AVRO, "Names": each dot-separated part matches [A-Za-z_][A-Za-z0-9_]*.
    if not isinstance(name, str) or not all(NAME.match(p) for p in name.split(".")):
        raise invalid(f"{what} {name!r} is not a valid Avro name")


def check_avro(s, names, namespace):
    """AVRO, "Schema Declaration": a JSON string (a primitive or a defined name), a JSON object
    {"type": ...}, or a JSON array (a union)."""
    if isinstance(s, str):
        if s in PRIMITIVES or fullname(s, namespace) in names or s in names:
            return s if s in PRIMITIVES else "named:" + fullname(s, namespace)
        raise invalid(f"undefined name {s!r}")
    if isinstance(s, list):
        # AVRO, "Unions": no union directly inside a union; no two branches of one type
        # (but named types of different names).
        seen = set()
        for branch in s:
            if isinstance(branch, list):
                raise invalid("a union directly inside a union")
            kind = check_avro(branch, names, namespace)
            if kind in seen:
                raise invalid(f"the union has two branches of type {kind}")
            seen.add(kind)
        return "union"
    if not isinstance(s, dict) or "type" not in s:
        raise invalid(f"{json.dumps(s)[:80]} is not a schema (a name, an object with a type, or a union)")
    t = s["type"]
    if t in ("record", "error", "enum", "fixed"):
        return check_named(s, t, names, namespace)
    if t == "array":
        # AVRO, "Arrays": "items", the schema of the array's items.
        if "items" not in s:
            raise invalid("an array without items")
        check_avro(s["items"], names, namespace)
        return "array"
    if t == "map":
        # AVRO, "Maps": "values", the schema of the map's values.
        if "values" not in s:
            raise invalid("a map without values")
        check_avro(s["values"], names, namespace)
        return "map"
    if isinstance(t, str) and t in PRIMITIVES:
        return t
    # {"type": <a name or a schema>} is that schema.
    return check_avro(t, names, namespace)


def check_named(s, t, names, namespace):
    """AVRO, "Records", "Enums", "Fixed": a name (not defined twice), and fields with names and
    types, symbols, or a size."""
    check_name(s.get("name"), f"{t} name")
    ns = s.get("namespace", namespace)
    if "." in s["name"]:
        ns = s["name"].rsplit(".", 1)[0]
    full = fullname(s["name"], ns)
    if full in names:
        raise invalid(f"{full} is defined twice")
    names.add(full)
    if t in ("record", "error"):
        fields = s.get("fields")
        if not isinstance(fields, list):
            raise invalid(f"record {full} has no list of fields")
        field_names = set()
        for f in fields:
            if not isinstance(f, dict) or "type" not in f:
                raise invalid(f"record {full}: a field without a type")
            check_name(f.get("name"), f"field of {full}")
            if f["name"] in field_names:
                raise invalid(f"record {full}: field {f['name']} twice")
            field_names.add(f["name"])
            check_avro(f["type"], names, ns)
    elif t == "enum":
        symbols = s.get("symbols")
        if not isinstance(symbols, list) or len(set(map(str, symbols))) != len(symbols):
            raise invalid(f"enum {full} needs a list of distinct symbols")
        for sym in symbols:
            check_name(sym, f"symbol of {full}")
    else:
        if not isinstance(s.get("size"), int) or s["size"] < 0:
            raise invalid(f"fixed {full} needs a size")
    return "named:" + full


class Registry:
    """Schemas by id, subjects' versions; ids are global across subjects (REG: "If the same
    schema is registered under a different subject, the same identifier will be returned")."""

    def __init__(self, state_path):
        self.lock = threading.Lock()
        self.state_path = state_path
        self.schemas = {}  # id -> {"schema": text, "schemaType": type}
        self.subjects = {}  # subject -> [id of version 1, id of version 2, ...]
        if state_path and os.path.exists(state_path):
            with open(state_path) as f:
                st = json.load(f)
            self.schemas = {int(k): v for k, v in st["schemas"].items()}
            self.subjects = st["subjects"]

    def save(self):
        if not self.state_path:
            return
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"schemas": self.schemas, "subjects": self.subjects}, f)
        os.replace(tmp, self.state_path)

    def register(self, subject, body):
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            # REG, request body: "schema" (string) is required. Confluent answers 422/42201.
            raise invalid('the body needs "schema", a string')
        stype = body.get("schemaType", "AVRO")
        if body.get("references"):
            raise invalid("schema references are not modelled by this stand-in")
        try:
            parsed = json.loads(body["schema"])
        except ValueError as e:
            raise invalid(f"not JSON: {e}")
        if stype == "AVRO":
            check_avro(parsed, set(), "")
        elif stype != "JSON":
            raise invalid(f"schema type {stype} is not modelled by this stand-in (AVRO, JSON)")
        # The registry keeps (and serves) the schema's canonical text; the same schema, however
        # spaced or with its attributes in another order, is the same schema (REG: registering
        # it again answers its id).
        text = json.dumps(parsed, separators=(",", ":"))
        identity = (stype, json.dumps(parsed, separators=(",", ":"), sort_keys=True))
        with self.lock:
            sid = next(
                (i for i, v in self.schemas.items()
                 if (v["schemaType"], json.dumps(json.loads(v["schema"]), separators=(",", ":"), sort_keys=True)) == identity),
                None,
            )
            if sid is None:
                # Ids are assigned from 1 up, across all subjects.
                sid = max(self.schemas, default=0) + 1
                self.schemas[sid] = {"schema": text, "schemaType": stype}
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
            self.save()
        return {"id": sid}

    def by_id(self, sid):
        with self.lock:
            v = self.schemas.get(sid)
        if v is None:
            # GET: 404 "Error code 40403 indicates schema not found."
            raise Refused(404, 40403, f"Schema {sid} not found")
        out = {"schema": v["schema"]}
        # GET: "schemaType" in the answer; the registry leaves it out for Avro.
        if v["schemaType"] != "AVRO":
            out["schemaType"] = v["schemaType"]
        return out

    def versions(self, subject):
        with self.lock:
            vs = self.subjects.get(subject)
        if not vs:
            # VERS: 404 "Error code 40401 indicates subject not found."
            raise Refused(404, 40401, f"Subject '{subject}' not found.")
        return list(range(1, len(vs) + 1))

    def version(self, subject, version):
        with self.lock:
            vs = list(self.subjects.get(subject) or [])
        if version == "latest":
            n = len(vs)
        else:
            # BYV: "Valid values for versionId are between [1,2^31-1] or the string "latest""
            # (else 422, error code 42202 "invalid version").
            if not re.fullmatch(r"-?[0-9]+", version) or not 1 <= int(version) <= MAX_INT32:
                raise Refused(422, 42202, f"The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")
            n = int(version)
        if not vs:
            # BYV: 404 "Error code 40401 indicates subject not found."
            raise Refused(404, 40401, f"Subject '{subject}' not found.")
        if not 1 <= n <= len(vs):
            # BYV: 404 "Error code 40402 indicates version not found."
            raise Refused(404, 40402, f"Version {version} not found.")
        sid = vs[n - 1]
        out = {"subject": subject, "version": n, "id": sid}
        out.update(self.by_id(sid))
        return out


class Handler(BaseHTTPRequestHandler):
    registry = None
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("registry-standin: " + (fmt % args) + "\n")

    def answer(self, status, obj, extra=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        """AUTH (Schema Registry section): with HTTP Basic authentication on, a request without
        valid credentials is refused with 401 (RFC 7617: WWW-Authenticate names the scheme)."""
        user = os.environ.get("BATCHLAYER_STANDIN_REGISTRY_USER")
        password = os.environ.get("BATCHLAYER_STANDIN_REGISTRY_PASSWORD")
        token = os.environ.get("BATCHLAYER_STANDIN_REGISTRY_TOKEN")
        if not (user or token):
            return True
        got = self.headers.get("Authorization", "")
        if user and got.startswith("Basic "):
            try:
                pair = base64.b64decode(got[6:], validate=True).decode()
            except ValueError:
                return False
            return pair == f"{user}:{password or ''}"
        if token and got.startswith("Bearer "):
            return got[7:] == token
        return False

    def route(self, method):
        # The body is read whatever the answer, so the connection stays usable.
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self.authorized():
            raise Refused(401, 401, "Unauthorized")
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        if method == "GET":
            if not parts:
                return {}
            if len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
                if not re.fullmatch(r"[0-9]+", parts[2]):
                    raise Refused(404, 404, "HTTP 404 Not Found")
                return self.registry.by_id(int(parts[2]))
            if parts == ["subjects"]:
                with self.registry.lock:
                    return sorted(self.registry.subjects)
            if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                return self.registry.versions(parts[1])
            if len(parts) == 4 and parts[0] == "subjects" and parts[2] == "versions":
                return self.registry.version(parts[1], parts[3])
        if method == "POST" and len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype not in ACCEPTED_BODY_TYPES:
                # API, "Content Types": the request's body is one of the registry's JSON types.
                raise Refused(415, 415, f"HTTP 415 Unsupported Media Type: {ctype}")
            try:
                body = json.loads(raw)
            except ValueError as e:
                raise Refused(400, 400, f"Unexpected character in the request body: {e}")
            return self.registry.register(parts[1], body)
        raise Refused(404, 404, "HTTP 404 Not Found")

    def handle_method(self, method):
        try:
            self.answer(200, self.route(method))
        except Refused as r:
            extra = {"WWW-Authenticate": 'Basic realm="SchemaRegistry"'} if r.status == 401 else None
            self.answer(r.status, {"error_code": r.code, "message": r.message}, extra)

    def do_GET(self):
        self.handle_method("GET")

    def do_POST(self):
        self.handle_method("POST")

    def do_PUT(self):
        self.handle_method("PUT")

    def do_DELETE(self):
        self.handle_method("DELETE")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--state")
    a = ap.parse_args()
    Handler.registry = Registry(a.state)
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    print(f"listening on {a.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
