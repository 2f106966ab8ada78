"""The legacy `databricks-cli` 0.18.0 through the real gateway.

That CLI ignores any port in DATABRICKS_HOST and always connects to 443, so the stand-in, the
gateway (listening on 127.0.0.1:443) and the CLI all run inside a private network namespace
(`unshare -n`, root only) driven by netns_cli.py. All commands run in one namespace session;
each test below checks one of them. Each command's token has its own subject, which ties its
audit records to it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

import harness
from harness import TokenMinter, dig, read_audit, records_of, same_secret, seen, summarize, wait_for
from standin import FILE_CONTENT, NOTEBOOK_SOURCE, RUN_RESULT, header, load_records

HERE = Path(__file__).resolve().parent
NETNS_TIMEOUT = 240  # the whole namespace session; each command has its own 60 s limit
CMD_TIMEOUT = 60

# Action names as in test_sdk.py; the legacy CLI reaches the same endpoints (jobs via 2.0).
A_DBFS_READ = "dbfs.read"
A_WS_EXPORT = "workspace.export"
A_RUN_OUTPUT = "jobs.runs.get_output"


def _netns_unavailable() -> str:
    """Why this machine cannot run the namespace tests, or "" if it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root: the legacy CLI needs the gateway on port 443 inside a private network namespace"
    for tool in ("unshare", "ip", "sh"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    try:
        p = subprocess.run(["unshare", "-n", "--", "sh", "-c", "ip link set lo up"], capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`unshare -n` failed: {e}"
    if p.returncode != 0:
        return f"`unshare -n` failed ({p.returncode}): {p.stderr.strip()[:300]}"
    return ""


def _subject(name: str) -> str:
    return f"legacy-cli-{name}@bank.example"


# name -> (argv after `databricks`, token kind)
COMMANDS: Dict[str, Any] = {
    "ls": (["fs", "ls", "dbfs:/tmp"], "jwt"),
    "cp": (["fs", "cp", "dbfs:/tmp/x.txt", "./x.txt"], "jwt"),
    "cat": (["fs", "cat", "dbfs:/tmp/x.txt"], "jwt"),
    "workspace-export": (["workspace", "export", "/Users/alice@bank.example/nb", "./nb.py"], "jwt"),
    "runs-get-output": (["runs", "get-output", "--run-id", "5"], "jwt"),
    "ls-with-pat": (["fs", "ls", "dbfs:/tmp"], "pat"),
}


@pytest.fixture(scope="module")
def cli_session(tmp_path_factory: pytest.TempPathFactory, gateway_binary: Path) -> Dict[str, Any]:
    why = _netns_unavailable()
    if why:
        pytest.skip(f"legacy CLI tests skipped: {why}")
    databricks = Path(sys.executable).parent / "databricks"
    if not databricks.is_file():
        pytest.fail(f"legacy CLI not installed in this environment: {databricks}", pytrace=False)

    work = tmp_path_factory.mktemp("netns")
    certs = harness.make_certs(work / "certs", binary=gateway_binary)
    minter = TokenMinter()
    jwks = minter.write_jwks(work / "jwks.json")
    tokens = {name: (minter.mint(_subject(name)) if kind == "jwt" else harness.fake_pat())
              for name, (_, kind) in COMMANDS.items()}

    env = harness.client_env(work / "home", certs / "ca.crt", DATABRICKS_HOST="https://127.0.0.1")
    commands = []
    for i, (name, (args, _)) in enumerate(COMMANDS.items()):
        var = f"GH_TEST_TOKEN_{i}"
        env[var] = tokens[name]
        commands.append({"name": name, "argv": [str(databricks)] + args, "cwd": str(work / "cwd" / name),
                         "timeout": CMD_TIMEOUT, "token_env": var})
    spec = {"workdir": str(work), "certs": str(certs), "jwks": str(jwks), "gateway_bin": str(gateway_binary),
            "audit_dir": str(work / "audit"), "record_file": str(work / "standin.jsonl"),
            "results": str(work / "results.json"), "standin_port": 8080, "commands": commands}
    (work / "spec.json").write_text(json.dumps(spec, indent=2))

    argv = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
            sys.executable, str(HERE / "netns_cli.py"), "--spec", str(work / "spec.json")]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=NETNS_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, the gateway and any CLI left running
        proc.communicate(timeout=10)
        pytest.fail(f"the network-namespace session did not finish within {NETNS_TIMEOUT}s", pytrace=False)
    results_path = Path(spec["results"])
    if not results_path.is_file():
        pytest.fail(f"netns driver exited {proc.returncode} without results:\n{out.decode(errors='replace')[-3000:]}",
                    pytrace=False)
    results = json.loads(results_path.read_text())
    if not results["ok"]:
        pytest.fail(f"netns session failed: {results['error']}\ngateway log:\n"
                    f"{results['gateway'].get('log_tail', '')}", pytrace=False)
    records = load_records(spec["record_file"])
    by_name = {c["name"]: c for c in results["commands"]}
    return {"results": results, "records": records, "cmd": by_name, "tokens": tokens,
            "audit_dir": Path(spec["audit_dir"]), "cwd": {c["name"]: Path(c["cwd"]) for c in commands}}


def _records_of(session: Dict[str, Any], name: str) -> List[Dict[str, Any]]:
    lo, hi = session["cmd"][name]["records"]
    return session["records"][lo:hi]


def _output(c: Dict[str, Any]) -> str:
    return (c.get("stdout") or "") + (c.get("stderr") or "")


def _audit_of(session: Dict[str, Any], name: str, n_decisions: int) -> List[Dict[str, Any]]:
    sub = _subject(name)

    def attempt() -> Any:
        recs = records_of(read_audit(session["audit_dir"]), sub)
        return recs if sum(1 for r in recs if r.get("phase") == "decision") >= n_decisions else None
    # The gateway was stopped before the session returned, so the trail is complete already.
    return wait_for(attempt, timeout=1.0) or records_of(read_audit(session["audit_dir"]), sub)


def test_namespace_is_private(cli_session: Dict[str, Any]) -> None:
    """The namespace had loopback only: nothing the CLI sent could have left the machine, and
    the gateway really listened on 443."""
    assert cli_session["results"]["links"] == ["lo"]
    assert cli_session["results"]["gateway"]["data"] == "127.0.0.1:443"
    assert cli_session["results"]["gateway"]["tls"] is True
    assert cli_session["results"]["gateway"]["exit_code"] == 0, "gateway did not exit cleanly on SIGTERM"


def test_fs_ls_goes_through_the_gateway(cli_session: Dict[str, Any]) -> None:
    c = cli_session["cmd"]["ls"]
    assert c["rc"] == 0, f"`databricks fs ls` failed: {_output(c)[-1000:]}"
    assert "x.txt" in c["stdout"].split()
    recs = _records_of(cli_session, "ls")
    assert seen(recs) == ["GET /api/2.0/dbfs/list"]
    rec = recs[0]
    assert rec["params"].get("path") == "dbfs:/tmp"
    # Values are taken out first so that no assertion message can show the record (it holds the
    # token).
    token_forwarded = same_secret(header(rec, "authorization"), f"Bearer {cli_session['tokens']['ls']}")
    xff = header(rec, "x-forwarded-for") or ""
    proto = header(rec, "x-forwarded-proto")
    request_id = header(rec, "x-request-id")
    assert token_forwarded, "the caller's Authorization header did not reach the upstream unchanged"
    assert "127.0.0.1" in [p.strip() for p in xff.split(",")], f"x-forwarded-for={xff!r}"
    assert proto == "https"
    assert request_id, "no x-request-id reached the upstream"
    audit = _audit_of(cli_session, "ls", 1)
    allows = [r for r in audit if r.get("phase") == "decision" and dig(r, "decision.effect") == "allow"]
    assert [dig(r, "request.path") for r in allows] == ["/api/2.0/dbfs/list"], summarize(audit)
    assert allows[0].get("request_id") == request_id, "the upstream saw another request id than the trail"
    done = [r for r in audit if r.get("phase") == "completion" and r.get("request_id") == request_id]
    assert len(done) == 1 and done[0].get("status") == 200, summarize(audit)
    assert not done[0].get("error"), \
        f"completion of a fully delivered response reports an error: {done[0].get('error')!r}"


def test_fs_cp_download_is_denied(cli_session: Dict[str, Any]) -> None:
    c = cli_session["cmd"]["cp"]
    assert c["rc"] not in (0, None), f"`databricks fs cp` succeeded: {_output(c)[-1000:]}"
    # The CLI opens the local file before its first read, so an empty file may remain; not one
    # byte of the remote file may be in it.
    local = cli_session["cwd"]["cp"] / "x.txt"
    assert not local.exists() or local.stat().st_size == 0, "downloaded bytes were written locally"
    assert FILE_CONTENT.decode() not in _output(c)
    recs = _records_of(cli_session, "cp")
    assert "GET /api/2.0/dbfs/read" not in seen(recs), f"upstream saw {seen(recs)}"
    assert seen(recs) == ["GET /api/2.0/dbfs/get-status"], f"upstream saw {seen(recs)}"
    audit = _audit_of(cli_session, "cp", 2)
    denies = [r for r in audit if r.get("phase") == "decision" and dig(r, "decision.effect") == "deny"]
    assert [(dig(r, "request.path"), dig(r, "action.name")) for r in denies] == \
        [("/api/2.0/dbfs/read", A_DBFS_READ)], summarize(audit)
    assert dig(denies[0], "decision.rule"), summarize(audit)


@pytest.mark.parametrize("name,path,action,leak", [
    ("cat", "/api/2.0/dbfs/read", A_DBFS_READ, FILE_CONTENT),
    ("workspace-export", "/api/2.0/workspace/export", A_WS_EXPORT, NOTEBOOK_SOURCE),
    ("runs-get-output", "/api/2.0/jobs/runs/get-output", A_RUN_OUTPUT, RUN_RESULT),
], ids=["fs-cat", "workspace-export", "runs-get-output"])
def test_other_downloads_are_denied(cli_session: Dict[str, Any], name: str, path: str, action: str,
                                    leak: bytes) -> None:
    c = cli_session["cmd"][name]
    assert c["rc"] not in (0, None), f"`databricks {name}` succeeded: {_output(c)[-1000:]}"
    assert leak.decode() not in _output(c)
    for f in cli_session["cwd"][name].iterdir():
        assert leak not in f.read_bytes(), f"{f.name} holds downloaded data"
    recs = _records_of(cli_session, name)
    assert path not in [r["path"] for r in recs], f"upstream saw {seen(recs)}"
    audit = _audit_of(cli_session, name, 1)
    denies = [r for r in audit if r.get("phase") == "decision" and dig(r, "decision.effect") == "deny"]
    assert [(dig(r, "request.path"), dig(r, "action.name")) for r in denies] == [(path, action)], summarize(audit)


def test_personal_access_token_is_refused(cli_session: Dict[str, Any]) -> None:
    c = cli_session["cmd"]["ls-with-pat"]
    assert c["rc"] not in (0, None), f"a PAT was accepted: {_output(c)[-500:]}"
    recs = _records_of(cli_session, "ls-with-pat")
    assert recs == [], f"a PAT-authenticated request reached the upstream: {seen(recs)}"
