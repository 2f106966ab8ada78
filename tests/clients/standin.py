"""A stand-in Databricks workspace upstream for the real-client tests.

It answers the endpoints that the Databricks SDK and the legacy CLI use (see
shared/reference/databricks.md, "What a stand-in upstream must answer") so that a request the
gateway ALLOWS succeeds end to end. That is what proves a denial came from the gateway and not
from a missing route here.

Every request is recorded before it is answered: method, path, raw query, all headers (names
lower-cased, duplicates kept, nothing dropped) and the body. Records go to a thread-safe list
and, optionally, to a JSON-lines file, so a test can read them when the stand-in runs in another
process or network namespace.

In-process:   s = StandIn(record_file=None).start(); s.url; s.requests(); s.stop()
As a program: python standin.py --port 8080 --record /tmp/standin.jsonl
              (prints "standin listening 127.0.0.1:PORT" once it accepts connections)
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import json
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

# The data a download would leak. Tests assert these bytes never reach a client.
FILE_CONTENT = b"secret-row-1,alice,42\nsecret-row-2,bob,43\nEND\n!\n"  # 48 bytes
assert len(FILE_CONTENT) == 48
NOTEBOOK_SOURCE = b"# Databricks notebook source\nprint('secret notebook')\n"
RUN_RESULT = b"secret-result-rows"
MODIFIED_MS = 1700000000000

# A tiny DBFS: absolute paths without the "dbfs:" scheme.
DBFS_FILES: Dict[str, bytes] = {"/tmp/x.txt": FILE_CONTENT, "/tmp/y.csv": FILE_CONTENT}
DBFS_DIRS = {"/", "/tmp"}

MAX_RECORDED_BODY = 64 * 1024


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _dbfs_path(raw: str) -> str:
    """The legacy CLI sends `dbfs:/tmp/x`, the SDK `/tmp/x`."""
    p = raw[len("dbfs:"):] if raw.startswith("dbfs:") else raw
    if not p.startswith("/"):
        p = "/" + p
    if len(p) > 1:
        p = p.rstrip("/")
    return p


class Response:
    def __init__(self, status: int = 200, body: Any = None, headers: Optional[Dict[str, str]] = None,
                 raw: Optional[bytes] = None, content_type: str = "application/json"):
        self.status = status
        self.headers = dict(headers or {})
        if raw is not None:
            self.body = raw
            self.headers.setdefault("Content-Type", content_type if content_type != "application/json"
                                    else "application/octet-stream")
        else:
            self.body = _json_bytes({} if body is None else body)
            self.headers.setdefault("Content-Type", "application/json")


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error_code": code, "message": message})


class Request:
    def __init__(self, method: str, target: str, headers: List[Tuple[str, str]], body: bytes):
        self.method = method
        self.target = target
        parts = urlsplit(target)
        self.path = parts.path
        self.query = parts.query
        self.params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.headers = headers
        self.body = body

    def json(self) -> Dict[str, Any]:
        if not self.body:
            return {}
        try:
            doc = json.loads(self.body)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None


# --------------------------------------------------------------------------------------------
# Route handlers. Each takes (Request, match) and returns a Response.
# --------------------------------------------------------------------------------------------

def h_well_known(req: Request, m: re.Match) -> Response:
    return _error(404, "NOT_FOUND", "no databricks-config here")


def h_dbfs_get_status(req: Request, m: re.Match) -> Response:
    p = _dbfs_path(req.params.get("path", ""))
    if p in DBFS_DIRS:
        return Response(body={"path": p, "is_dir": True, "file_size": 0, "modification_time": MODIFIED_MS})
    if p in DBFS_FILES:
        return Response(body={"path": p, "is_dir": False, "file_size": len(DBFS_FILES[p]),
                              "modification_time": MODIFIED_MS})
    return _error(404, "RESOURCE_DOES_NOT_EXIST", f"No file or directory exists on path {p}.")


def h_dbfs_read(req: Request, m: re.Match) -> Response:
    p = _dbfs_path(req.params.get("path", ""))
    if p not in DBFS_FILES:
        return _error(404, "RESOURCE_DOES_NOT_EXIST", f"No file or directory exists on path {p}.")
    data = DBFS_FILES[p]
    try:
        offset = int(req.params.get("offset", "0") or 0)
        length = int(req.params.get("length", "1048576") or 1048576)
    except ValueError:
        return _error(400, "INVALID_PARAMETER_VALUE", "bad offset/length")
    chunk = data[offset:offset + min(length, 1048576)]
    return Response(body={"bytes_read": len(chunk), "data": base64.b64encode(chunk).decode()})


def h_dbfs_list(req: Request, m: re.Match) -> Response:
    p = _dbfs_path(req.params.get("path", ""))
    if p in DBFS_FILES:
        return Response(body={"files": [{"path": p, "is_dir": False, "file_size": len(DBFS_FILES[p]),
                                         "modification_time": MODIFIED_MS}]})
    if p not in DBFS_DIRS:
        return _error(404, "RESOURCE_DOES_NOT_EXIST", f"No file or directory exists on path {p}.")
    prefix = p.rstrip("/") + "/"
    files = []
    for d in sorted(DBFS_DIRS):
        if d != p and d.startswith(prefix) and "/" not in d[len(prefix):]:
            files.append({"path": d, "is_dir": True, "file_size": 0, "modification_time": MODIFIED_MS})
    for f, content in sorted(DBFS_FILES.items()):
        if f.startswith(prefix) and "/" not in f[len(prefix):]:
            files.append({"path": f, "is_dir": False, "file_size": len(content),
                          "modification_time": MODIFIED_MS})
    return Response(body={"files": files})


def h_dbfs_create(req: Request, m: re.Match) -> Response:
    return Response(body={"handle": 7})


def h_empty_ok(req: Request, m: re.Match) -> Response:
    return Response(body={})


def h_workspace_export(req: Request, m: re.Match) -> Response:
    if req.params.get("direct_download", "").lower() == "true":
        return Response(raw=NOTEBOOK_SOURCE)
    return Response(body={"content": base64.b64encode(NOTEBOOK_SOURCE).decode(), "file_type": "py"})


def h_workspace_get_status(req: Request, m: re.Match) -> Response:
    p = req.params.get("path", "/")
    return Response(body={"object_type": "NOTEBOOK", "path": p, "language": "PYTHON", "object_id": 1})


def h_workspace_list(req: Request, m: re.Match) -> Response:
    p = req.params.get("path", "/").rstrip("/")
    return Response(body={"objects": [{"object_type": "NOTEBOOK", "path": f"{p}/nb", "language": "PYTHON",
                                       "object_id": 1}]})


def h_not_found(req: Request, m: re.Match) -> Response:
    return _error(404, "NOT_FOUND", "not available in the stand-in")


def _file_headers(size: int) -> Dict[str, str]:
    return {"Content-Type": "application/octet-stream",
            "Last-Modified": email.utils.formatdate(MODIFIED_MS / 1000, usegmt=True),
            "Accept-Ranges": "bytes"}


def h_fs_files(req: Request, m: re.Match) -> Response:
    data = FILE_CONTENT
    headers = _file_headers(len(data))
    if req.method == "HEAD":
        # The body is dropped by the handler for HEAD; Content-Length still announces the size.
        return Response(raw=data, headers=headers)
    if req.method == "PUT":
        return Response(status=204, raw=b"")
    if req.method == "DELETE":
        return Response(status=204, raw=b"")
    rng = req.header("range")
    mm = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
    if mm:
        start = int(mm.group(1))
        end = int(mm.group(2)) if mm.group(2) else len(data) - 1
        end = min(end, len(data) - 1)
        if start >= len(data):
            return Response(status=416, raw=b"", headers={"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(status=206, raw=data[start:end + 1], headers=headers)
    return Response(raw=data, headers=headers)


def h_fs_directories(req: Request, m: re.Match) -> Response:
    if req.method == "PUT":
        return Response(body={})
    base = "/" + unquote(m.group("path")).strip("/")
    return Response(body={"contents": [{"path": f"{base}/x.txt", "is_directory": False,
                                        "file_size": len(FILE_CONTENT), "last_modified": MODIFIED_MS,
                                        "name": "x.txt"}]})


CLUSTER = {"cluster_id": "0101-000000-abcd1234", "cluster_name": "lab", "state": "RUNNING",
           "spark_version": "15.4.x-scala2.12", "node_type_id": "i3.xlarge", "num_workers": 1}


def h_clusters_list(req: Request, m: re.Match) -> Response:
    return Response(body={"clusters": [CLUSTER]})


def h_clusters_get(req: Request, m: re.Match) -> Response:
    return Response(body=dict(CLUSTER, cluster_id=req.params.get("cluster_id", CLUSTER["cluster_id"])))


def _run_id(req: Request) -> int:
    try:
        return int(req.params.get("run_id", "1"))
    except ValueError:
        return 1


def h_runs_get_output(req: Request, m: re.Match) -> Response:
    rid = _run_id(req)
    return Response(body={"metadata": {"run_id": rid, "job_id": 11, "state": {"life_cycle_state": "TERMINATED",
                                                                               "result_state": "SUCCESS"}},
                          "notebook_output": {"result": RUN_RESULT.decode(), "truncated": False}})


def h_runs_get(req: Request, m: re.Match) -> Response:
    rid = _run_id(req)
    return Response(body={"run_id": rid, "job_id": 11,
                          "state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"},
                          "tasks": [{"run_id": rid, "task_key": "t"}]})


def h_runs_export(req: Request, m: re.Match) -> Response:
    return Response(body={"views": [{"content": "<html>secret</html>", "name": "nb", "type": "NOTEBOOK"}]})


def h_jobs_list(req: Request, m: re.Match) -> Response:
    return Response(body={"jobs": [{"job_id": 11, "settings": {"name": "nightly"}}], "has_more": False})


def _statement(external: bool, sid: str = "01ef-statement") -> Dict[str, Any]:
    doc: Dict[str, Any] = {
        "statement_id": sid,
        "status": {"state": "SUCCEEDED"},
        "manifest": {"format": "JSON_ARRAY", "schema": {"column_count": 1, "columns": [
            {"name": "x", "type_name": "INT", "type_text": "INT", "position": 0}]},
            "total_chunk_count": 1, "total_row_count": 1, "chunks": [{"chunk_index": 0, "row_offset": 0,
                                                                    "row_count": 1}]},
    }
    if external:
        doc["result"] = {"external_links": [{"chunk_index": 0, "row_offset": 0, "row_count": 1,
                                             "external_link": "https://bucket.example/presigned?sig=x",
                                             "expiration": "2099-01-01T00:00:00Z"}]}
    else:
        doc["result"] = {"chunk_index": 0, "row_offset": 0, "row_count": 1, "data_array": [["1"]]}
    return doc


def h_sql_statements_post(req: Request, m: re.Match) -> Response:
    external = str(req.json().get("disposition", "")).upper() == "EXTERNAL_LINKS"
    return Response(body=_statement(external))


def h_sql_statement_get(req: Request, m: re.Match) -> Response:
    return Response(body=_statement(False, m.group("id")))


def h_sql_statement_chunk(req: Request, m: re.Match) -> Response:
    return Response(body={"chunk_index": int(m.group("n")), "row_offset": 0, "row_count": 1,
                          "data_array": [["1"]]})


def h_contexts_create(req: Request, m: re.Match) -> Response:
    return Response(body={"id": "ctx1"})


def h_contexts_status(req: Request, m: re.Match) -> Response:
    return Response(body={"id": req.params.get("contextId", "ctx1"), "status": "Running"})


def h_commands_execute(req: Request, m: re.Match) -> Response:
    return Response(body={"id": "cmd1"})


def h_commands_status(req: Request, m: re.Match) -> Response:
    return Response(body={"id": req.params.get("commandId", "cmd1"), "status": "Finished",
                          "results": {"resultType": "text", "data": "command output"}})


ENDPOINT = {"name": "scorer", "id": "ep1", "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
            "config": {"served_entities": [{"name": "m-1", "entity_name": "m", "entity_version": "1"}],
                       "traffic_config": {"routes": [{"served_model_name": "m-1", "traffic_percentage": 100}]}}}


def h_serving_list(req: Request, m: re.Match) -> Response:
    return Response(body={"endpoints": [ENDPOINT]})


def h_serving_get(req: Request, m: re.Match) -> Response:
    return Response(body=dict(ENDPOINT, name=unquote(m.group("name"))))


def h_serving_invocations(req: Request, m: re.Match) -> Response:
    return Response(body={"predictions": [0.5]})


def h_serving_config(req: Request, m: re.Match) -> Response:
    return Response(body=dict(ENDPOINT, name=unquote(m.group("name"))))


def h_scim_me(req: Request, m: re.Match) -> Response:
    return Response(body={"id": "1", "userName": "alice@bank.example", "active": True})


def h_secrets_get(req: Request, m: re.Match) -> Response:
    return Response(body={"key": req.params.get("key", "k"), "value": base64.b64encode(b"s3cr3t").decode()})


def h_temp_credentials(req: Request, m: re.Match) -> Response:
    return Response(body={"aws_temp_credentials": {"access_key_id": "ASIASTANDIN",
                                                   "secret_access_key": "standin-secret",
                                                   "session_token": "standin-session"},
                          "expiration_time": 4102444800000})


def h_oidc(req: Request, m: re.Match) -> Response:
    return _error(404, "NOT_FOUND", "no OIDC in the stand-in")


# (method regex, path regex, handler). The first match wins. Jobs routes accept 2.0/2.1/2.2.
ROUTES: List[Tuple[str, "re.Pattern[str]", Callable[[Request, re.Match], Response]]] = [
    (r"GET", r"/\.well-known/databricks-config", h_well_known),
    (r"GET|POST", r"/oidc/.*", h_oidc),
    (r"GET", r"/api/2\.0/dbfs/get-status", h_dbfs_get_status),
    (r"GET", r"/api/2\.0/dbfs/read", h_dbfs_read),
    (r"GET", r"/api/2\.0/dbfs/list", h_dbfs_list),
    (r"POST", r"/api/2\.0/dbfs/create", h_dbfs_create),
    (r"POST", r"/api/2\.0/dbfs/(add-block|close|put|mkdirs|move|delete)", h_empty_ok),
    (r"GET", r"/api/2\.0/workspace/export", h_workspace_export),
    (r"GET", r"/api/2\.0/workspace/get-status", h_workspace_get_status),
    (r"GET", r"/api/2\.0/workspace/list", h_workspace_list),
    (r"POST", r"/api/2\.0/workspace/(import|mkdirs|delete)", h_empty_ok),
    (r"POST", r"/api/2\.0/fs/create-download-url", h_not_found),
    (r"GET", r"/api/2\.0/fs/endpoints", h_not_found),
    (r"GET|HEAD|PUT|DELETE", r"/api/2\.0/fs/files(?P<path>/.*)", h_fs_files),
    (r"GET|HEAD|PUT|DELETE", r"/api/2\.0/fs/directories(?P<path>/.*)", h_fs_directories),
    (r"GET", r"/api/2\.[01]/clusters/list", h_clusters_list),
    (r"GET", r"/api/2\.[01]/clusters/get", h_clusters_get),
    (r"GET", r"/api/2\.[012]/jobs/runs/get-output", h_runs_get_output),
    (r"GET", r"/api/2\.[012]/jobs/runs/get", h_runs_get),
    (r"GET", r"/api/2\.[012]/jobs/runs/export", h_runs_export),
    (r"GET", r"/api/2\.[012]/jobs/list", h_jobs_list),
    (r"POST", r"/api/2\.0/sql/statements/?", h_sql_statements_post),
    (r"GET", r"/api/2\.0/sql/statements/(?P<id>[^/]+)/result/chunks/(?P<n>\d+)", h_sql_statement_chunk),
    (r"GET", r"/api/2\.0/sql/statements/(?P<id>[^/]+)", h_sql_statement_get),
    (r"POST", r"/api/2\.0/sql/statements/(?P<id>[^/]+)/cancel", h_empty_ok),
    (r"POST", r"/api/1\.2/contexts/create", h_contexts_create),
    (r"GET", r"/api/1\.2/contexts/status", h_contexts_status),
    (r"POST", r"/api/1\.2/contexts/destroy", h_empty_ok),
    (r"POST", r"/api/1\.2/commands/execute", h_commands_execute),
    (r"GET", r"/api/1\.2/commands/status", h_commands_status),
    (r"POST", r"/api/1\.2/commands/cancel", h_empty_ok),
    (r"GET", r"/api/2\.0/serving-endpoints", h_serving_list),
    (r"GET", r"/api/2\.0/serving-endpoints/(?P<name>[^/]+)", h_serving_get),
    (r"PUT", r"/api/2\.0/serving-endpoints/(?P<name>[^/]+)/(config|rate-limits|ai-gateway)", h_serving_config),
    (r"PATCH", r"/api/2\.0/serving-endpoints/(?P<name>[^/]+)/tags", h_empty_ok),
    (r"POST", r"/serving-endpoints/(?P<name>[^/]+)/invocations", h_serving_invocations),
    (r"GET", r"/api/2\.0/preview/scim/v2/Me", h_scim_me),
    (r"GET", r"/api/2\.0/secrets/get", h_secrets_get),
    (r"POST", r"/api/2\.[01]/unity-catalog/temporary-(table|path|volume|service)-credentials", h_temp_credentials),
]
_COMPILED = [(re.compile(mth), re.compile(pth), h) for mth, pth, h in ROUTES]


def route(req: Request) -> Response:
    for mre, pre, handler in _COMPILED:
        m = pre.fullmatch(req.path)
        if m and mre.fullmatch(req.method):
            return handler(req, m)
    return _error(404, "ENDPOINT_NOT_FOUND", f"stand-in has no route for {req.method} {req.path}")


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a pooled upstream client expects
    server_version = "standin"
    sys_version = ""

    def log_message(self, fmt: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _handle(self) -> None:
        body = self._read_body()
        headers = [(k.lower(), v) for k, v in self.headers.items()]
        req = Request(self.command, self.path, headers, body)
        self.server.standin._record(req, self.client_address)  # type: ignore[attr-defined]
        resp = route(req)
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StandIn:
    """A recording stand-in upstream. Thread-safe; start() returns self."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, record_file: Optional[str] = None):
        self._host, self._port = host, port
        self._record_file = record_file
        self._lock = threading.Lock()
        self._records: List[Dict[str, Any]] = []
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle
    def start(self) -> "StandIn":
        self._server = _Server((self._host, self._port), _Handler)
        self._server.standin = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "stand-in not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- recording
    def _record(self, req: Request, client: Tuple[str, int]) -> None:
        rec = {
            "ts": time.time(),
            "client": f"{client[0]}:{client[1]}",
            "method": req.method,
            "target": req.target,
            "path": req.path,
            "query": req.query,
            "params": req.params,
            "headers": [[k, v] for k, v in req.headers],
            "body_len": len(req.body),
            "body": req.body[:MAX_RECORDED_BODY].decode("utf-8", "replace"),
        }
        with self._lock:
            self._records.append(rec)
            if self._record_file:
                with open(self._record_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                    f.flush()

    def requests(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


def load_records(path: str) -> List[Dict[str, Any]]:
    """Records a stand-in in another process appended to `path` (missing file: none yet)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def header(rec: Dict[str, Any], name: str) -> Optional[str]:
    """First value of header `name` in a record, or None."""
    name = name.lower()
    for k, v in rec["headers"]:
        if k == name:
            return v
    return None


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--record", default=None, help="append every request as a JSON line here")
    args = ap.parse_args(argv)
    s = StandIn(args.host, args.port, args.record).start()
    print(f"standin listening {args.host}:{s.port}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
