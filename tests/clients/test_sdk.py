"""databricks-sdk (Python) 0.162.0 through the real gateway.

Each blocked call must raise the SDK's own error at once, never reach the stand-in upstream,
and leave a deny decision in the audit trail under the action the catalog names. Allowed calls
must reach the upstream with the forwarding headers and the caller's token, which is what makes
the denials meaningful: the stand-in would have answered them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config
from databricks.sdk.errors import PermissionDenied, Unauthenticated
from databricks.sdk.service.compute import Language
from databricks.sdk.service.sql import Disposition

import harness
from harness import Gateway, TokenMinter, audit_for, dig, same_secret, seen, summarize
from standin import CLUSTER, FILE_CONTENT, NOTEBOOK_SOURCE, RUN_RESULT, StandIn, header

# Small enough that a retried failure cannot make a test take minutes (the SDK default is 300 s).
RETRY_TIMEOUT_S = 10
HTTP_TIMEOUT_S = 10
# A denial is answered at once; anything near the retry budget means the SDK retried it.
PROMPT_S = 5.0

# Action names the gateway's catalog gives these requests (the audit trail's `action.name`).
A_DBFS_READ = "dbfs.read"
A_FS_DOWNLOAD_URL = "files.create_download_url"
A_FS_FILES_GET = "files.download"
A_WS_EXPORT = "workspace.export"
A_RUN_OUTPUT = "jobs.runs.get_output"
# Inspected requests are named after what their body asks for.
A_SQL_EXTERNAL_LINKS = "sql.statements.external_links"
A_COMMAND_FS = "commands.execute_fs"


@pytest.fixture
def client(gatehouse: Gateway, sdk_env: Path) -> Callable[[str], WorkspaceClient]:
    def make(token: str) -> WorkspaceClient:
        cfg = Config(host=gatehouse.url, token=token, auth_type="pat",
                     retry_timeout_seconds=RETRY_TIMEOUT_S, http_timeout_seconds=HTTP_TIMEOUT_S,
                     config_file=str(sdk_env / "no-databrickscfg"))
        return WorkspaceClient(config=cfg)
    assert gatehouse.url.startswith("https://"), "the gateway must serve TLS with the dev certificate"
    return make


def _api(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Upstream records minus the unauthenticated discovery call the SDK makes on start."""
    return [r for r in records if r["path"] != "/.well-known/databricks-config"]


def _deny_decisions(recs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in recs if r.get("phase") == "decision" and dig(r, "decision.effect") == "deny"]


def _completion(recs: List[Dict[str, Any]], request_id: str) -> Optional[Dict[str, Any]]:
    for r in recs:
        if r.get("phase") == "completion" and r.get("request_id") == request_id:
            return r
    return None


# ---------------------------------------------------------------------------------------------
# Allowed traffic reaches the upstream, as the upstream expects it
# ---------------------------------------------------------------------------------------------

def test_clusters_list_reaches_upstream_with_forwarding_headers(client, minter: TokenMinter, upstream: StandIn,
                                                                gatehouse: Gateway, principal: str) -> None:
    token = minter.mint(principal)
    clusters = list(client(token).clusters.list())
    assert [c.cluster_id for c in clusters] == [CLUSTER["cluster_id"]]

    calls = [r for r in upstream.requests() if r["path"] == "/api/2.1/clusters/list"]
    assert len(calls) == 1, f"upstream saw {seen(upstream.requests())}"
    rec = calls[0]
    assert rec["method"] == "GET"
    # Values are taken out first so that no assertion message can show the record (it holds the
    # token).
    token_forwarded = same_secret(header(rec, "authorization"), f"Bearer {token}")
    assert token_forwarded, "the caller's Authorization header did not reach the upstream unchanged"
    xff = header(rec, "x-forwarded-for") or ""
    proto = header(rec, "x-forwarded-proto")
    fwd_host = header(rec, "x-forwarded-host")
    request_id = header(rec, "x-request-id")
    assert "127.0.0.1" in [p.strip() for p in xff.split(",")], f"x-forwarded-for={xff!r}"
    assert proto == "https"
    assert fwd_host == f"127.0.0.1:{gatehouse.port}"
    assert request_id, "no x-request-id reached the upstream"

    # The trail holds the allow decision and the completion under the id the upstream saw.
    recs = audit_for(gatehouse, principal, lambda rs: _completion(rs, request_id) is not None)
    decisions = [r for r in recs if r.get("phase") == "decision" and r.get("request_id") == request_id]
    assert len(decisions) == 1, summarize(recs)
    d = decisions[0]
    assert dig(d, "decision.effect") == "allow", summarize(recs)
    assert dig(d, "decision.rule"), summarize(recs)
    assert dig(d, "request.path") == "/api/2.1/clusters/list"
    assert dig(d, "workspace") == "prod-analytics"
    assert dig(d, "principal.type") == "user"
    done = _completion(recs, request_id)
    assert done is not None and done.get("status") == 200, summarize(recs)
    # The SDK read the whole body: the completion must say so, not report an aborted exchange.
    assert done.get("bytes_out") == len(json.dumps({"clusters": [CLUSTER]})), done
    assert not done.get("error"), f"completion of a fully delivered response reports an error: {done.get('error')!r}"
    # Secrets never enter the trail.
    token_in_trail = token in repr(recs)
    assert not token_in_trail, "the bearer token was written to the audit trail"


def test_rs256_token_is_accepted(client, minter: TokenMinter, upstream: StandIn, principal: str) -> None:
    token = minter.mint(principal, alg="RS256")
    got = client(token).clusters.get(CLUSTER["cluster_id"])
    assert got.cluster_id == CLUSTER["cluster_id"]
    assert [r["path"] for r in _api(upstream.requests())] == ["/api/2.1/clusters/get"]


def test_inline_statement_is_forwarded(client, minter: TokenMinter, upstream: StandIn) -> None:
    """The SQL denial is about EXTERNAL_LINKS, decided from the body: INLINE results pass."""
    w = client(minter.mint("sql-inline@bank.example"))
    resp = w.statement_execution.execute_statement(statement="select 1", warehouse_id="wh1",
                                                   disposition=Disposition.INLINE, wait_timeout="5s")
    assert resp.statement_id
    posts = [r for r in upstream.requests() if r["method"] == "POST" and r["path"] == "/api/2.0/sql/statements"]
    assert len(posts) == 1, f"upstream saw {seen(upstream.requests())}"
    assert '"INLINE"' in posts[0]["body"], "the statement body did not reach the upstream intact"


# ---------------------------------------------------------------------------------------------
# Downloads are denied by the gateway, never by the upstream
# ---------------------------------------------------------------------------------------------

def _read_all(stream: Any) -> bytes:
    return stream.read()


# name, call, paths the upstream must never see, (method, path, action) the trail must deny,
# paths the upstream must see (allowed metadata calls on the way).
BLOCKED: List[Any] = [
    ("dbfs.download",
     lambda w: _read_all(w.dbfs.download("/tmp/x.txt")),
     ["/api/2.0/dbfs/read"],
     [("GET", "/api/2.0/dbfs/read", A_DBFS_READ)],
     ["/api/2.0/dbfs/get-status"]),
    ("files.download",
     lambda w: _read_all(w.files.download("/Volumes/main/default/vol/x.txt").contents),
     ["/api/2.0/fs/create-download-url", "/api/2.0/fs/files/Volumes/main/default/vol/x.txt"],
     [("POST", "/api/2.0/fs/create-download-url", A_FS_DOWNLOAD_URL),
      ("GET", "/api/2.0/fs/files/Volumes/main/default/vol/x.txt", A_FS_FILES_GET)],
     []),
    ("workspace.export",
     lambda w: w.workspace.export("/Users/alice@bank.example/nb"),
     ["/api/2.0/workspace/export"],
     [("GET", "/api/2.0/workspace/export", A_WS_EXPORT)],
     []),
    ("workspace.download",
     lambda w: _read_all(w.workspace.download("/Users/alice@bank.example/nb")),
     ["/api/2.0/workspace/export"],
     [("GET", "/api/2.0/workspace/export", A_WS_EXPORT)],
     []),
    ("jobs.get_run_output",
     lambda w: w.jobs.get_run_output(5),
     ["/api/2.2/jobs/runs/get-output"],
     [("GET", "/api/2.2/jobs/runs/get-output", A_RUN_OUTPUT)],
     []),
    ("statement_execution.external_links",
     lambda w: w.statement_execution.execute_statement(statement="select * from main.raw.customers",
                                                        warehouse_id="wh1",
                                                        disposition=Disposition.EXTERNAL_LINKS),
     ["/api/2.0/sql/statements"],
     [("POST", "/api/2.0/sql/statements", A_SQL_EXTERNAL_LINKS)],
     []),
    ("command_execution.dbutils_fs",
     lambda w: w.command_execution.execute(cluster_id=CLUSTER["cluster_id"], context_id="ctx1",
                                           language=Language.PYTHON,
                                           command="print(dbutils.fs.head('dbfs:/tmp/x.txt'))"),
     ["/api/1.2/commands/execute"],
     [("POST", "/api/1.2/commands/execute", A_COMMAND_FS)],
     []),
]


@pytest.mark.parametrize("name,call,never,denied,allowed", BLOCKED, ids=[b[0] for b in BLOCKED])
def test_download_is_denied_by_the_gateway(name: str, call: Callable[[WorkspaceClient], Any], never: Sequence[str],
                                           denied: Sequence[Any], allowed: Sequence[str], client,
                                           minter: TokenMinter, upstream: StandIn, gatehouse: Gateway,
                                           principal: str) -> None:
    w = client(minter.mint(principal))
    started = time.monotonic()
    with pytest.raises(PermissionDenied) as excinfo:
        result = call(w)
        # Reached only if nothing was raised: make sure no data leaked into the failure message.
        pytest.fail(f"{name} returned {type(result).__name__} instead of raising PermissionDenied")
    elapsed = time.monotonic() - started
    assert elapsed < PROMPT_S, f"{name}: the denial took {elapsed:.1f}s (did the SDK retry it?)"

    got = upstream.requests()
    reached = [p for p in never if any(r["path"] == p for r in got)]
    assert not reached, f"{name}: the upstream received a blocked request: {seen(got)}"
    for p in allowed:
        assert any(r["path"] == p for r in got), f"{name}: allowed call {p} did not reach the upstream: {seen(got)}"
    for leaked in (FILE_CONTENT, NOTEBOOK_SOURCE, RUN_RESULT):
        assert leaked.decode() not in str(excinfo.value)

    # One deny decision per blocked request, under the right action, each completed with 403.
    def complete(rs: List[Dict[str, Any]]) -> bool:
        ds = _deny_decisions(rs)
        return len(ds) >= len(denied) and all(_completion(rs, d.get("request_id", "")) for d in ds)
    recs = audit_for(gatehouse, principal, complete)
    denies = _deny_decisions(recs)
    want = sorted((m, p, a) for m, p, a in denied)
    have = sorted((dig(d, "request.method"), dig(d, "request.path"), dig(d, "action.name")) for d in denies)
    assert have == want, summarize(recs)
    for d in denies:
        rule, rid = dig(d, "decision.rule"), d.get("request_id")
        assert rule and rid, summarize(recs)
        done = _completion(recs, rid)
        assert done is not None and done.get("status") == 403, summarize(recs)
    # The client-facing message names the rule and the request id of the (last) denial.
    last = denies[-1]
    msg = str(excinfo.value)
    assert dig(last, "decision.rule") in msg, f"rule not named in the SDK error: {msg[:300]!r}"
    assert last["request_id"] in msg, f"request id not named in the SDK error: {msg[:300]!r}"
    assert getattr(excinfo.value, "error_code", None) == "PERMISSION_DENIED"


# ---------------------------------------------------------------------------------------------
# Identity: tokens that must not pass
# ---------------------------------------------------------------------------------------------

def _call_clusters_list(w: WorkspaceClient) -> Any:
    return list(w.clusters.list())


@pytest.mark.parametrize("kind", ["expired", "pat", "unknown_key", "wrong_audience"])
def test_bad_credentials_are_refused_with_401(kind: str, client, minter: TokenMinter, upstream: StandIn) -> None:
    if kind == "expired":
        token = minter.expired(sub="expired@bank.example")
    elif kind == "pat":
        token = harness.fake_pat()
    elif kind == "unknown_key":
        token = TokenMinter().mint("forger@bank.example")  # same kid, a key the JWKS doesn't hold
    else:
        token = minter.mint("wrong-aud@bank.example", audience="someone-else")
    started = time.monotonic()
    with pytest.raises(Unauthenticated) as excinfo:
        _call_clusters_list(client(token))
    assert time.monotonic() - started < PROMPT_S, "a 401 must not be retried"
    assert getattr(excinfo.value, "error_code", None) == "UNAUTHENTICATED"
    api = _api(upstream.requests())
    assert api == [], f"a refused credential reached the upstream: {seen(api)}"
    forwarded = any(token in (header(r, "authorization") or "") for r in upstream.requests())
    assert not forwarded, "the refused credential was forwarded upstream"


def test_denied_group_is_refused(client, minter: TokenMinter, upstream: StandIn) -> None:
    """Tenant domains consume through the catalog only: no direct workspace access."""
    token = minter.mint("martech-bot@bank.example", groups=["tenant-martech"])
    with pytest.raises(PermissionDenied):
        _call_clusters_list(client(token))
    assert _api(upstream.requests()) == [], f"upstream saw {seen(upstream.requests())}"



# ---------------------------------------------------------------------------------------------
# Rate limits: the SDK backs off on 429 and gets through
# ---------------------------------------------------------------------------------------------

def test_the_sdk_backs_off_on_429_and_succeeds(tmp_path: Path, gateway_binary: Path, certs: Path,
                                               minter: TokenMinter, upstream: StandIn, sdk_env: Path,
                                               principal: str) -> None:
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    cfg = harness.write_config(tmp_path / "gatehouse.toml", certs=certs, jwks=minter.jwks_path,
                               upstream=upstream.url, audit_dir=audit_dir,
                               extra="\n[limits]\nper_principal_rps = 1\nburst = 1\n")
    with Gateway(cfg, audit_dir, tmp_path / "gatehouse.log", binary=gateway_binary,
                 env=harness.client_env(tmp_path / "home", None)) as gw:
        w = WorkspaceClient(config=Config(host=gw.url, token=minter.mint(principal), auth_type="pat",
                                          retry_timeout_seconds=30, http_timeout_seconds=HTTP_TIMEOUT_S,
                                          config_file=str(sdk_env / "no-databrickscfg")))
        for _ in range(3):
            assert [c.cluster_id for c in w.clusters.list()] == [CLUSTER["cluster_id"]]
        calls = [r for r in upstream.requests() if r["path"] == "/api/2.1/clusters/list"]
        assert len(calls) == 3, f"upstream saw {seen(upstream.requests())}"
        recs = audit_for(gw, principal, lambda rs: any(dig(r, "decision.rule") == "limits.rate" for r in rs))
        limited = [r for r in recs if dig(r, "decision.rule") == "limits.rate"]
        assert limited and all(dig(r, "decision.effect") == "deny" for r in limited), summarize(recs)
        allowed = [r for r in recs if r.get("phase") == "decision" and dig(r, "decision.effect") == "allow"]
        assert len(allowed) == 3, summarize(recs)
