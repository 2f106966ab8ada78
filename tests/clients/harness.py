"""Runs the real `gatehouse` binary for the client tests: certificates, signing keys and
tokens, a config file, the process itself, and its audit trail.

Used by conftest.py (in the pytest process) and by netns_cli.py (inside a private network
namespace), so it imports nothing from pytest. Every wait here has a deadline.
"""

from __future__ import annotations

import glob
import hmac
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

REPO_ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://idp.test"
AUDIENCE = "gatehouse"

START_TIMEOUT = 30.0  # listening lines + /readyz
STOP_TIMEOUT = 10.0  # SIGTERM grace before SIGKILL
CMD_TIMEOUT = 60.0  # any one helper command (certs dev, …)
AUDIT_WAIT = 5.0  # "group" durability may flush a moment after the response

_LISTEN_RE = re.compile(r"gatehouse listening (data|admin)=(\S+)(?:\s+tls=(\w+))?")


class HarnessError(RuntimeError):
    pass


def gateway_bin() -> Path:
    """`GATEHOUSE_BIN`, or target/debug/gatehouse under the repo root (relative to this file)."""
    raw = os.environ.get("GATEHOUSE_BIN")
    p = Path(raw) if raw else REPO_ROOT / "target" / "debug" / "gatehouse"
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


def make_certs(out_dir: Path, hosts: Sequence[str] = (), binary: Optional[Path] = None) -> Path:
    """`gatehouse certs dev --out DIR [--host H …]`; returns DIR. Checks the files exist."""
    binary = binary or gateway_bin()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(binary), "certs", "dev", "--out", str(out_dir)]
    for h in hosts:
        cmd += ["--host", h]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT)
    if res.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr[-2000:]}")
    for name in ("ca.crt", "gateway.crt", "gateway.key"):
        if not (out_dir / name).is_file():
            raise HarnessError(f"`gatehouse certs dev` did not write {name} in {out_dir}")
    return out_dir


# ---------------------------------------------------------------------------------------------
# Signing keys and tokens
# ---------------------------------------------------------------------------------------------

class Secret(str):
    """A credential. Behaves as the string it holds, but its repr (which pytest prints in
    assertion messages and fixture values) never shows it."""

    def __repr__(self) -> str:
        return f"<secret {len(self)} chars>"


class TokenMinter:
    """An ES256 and an RS256 signing key, their public JWKS, and tokens signed with them."""

    def __init__(self) -> None:
        self.keys: Dict[str, Any] = {
            "ES256": ec.generate_private_key(ec.SECP256R1()),
            "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        }
        self.kids = {"ES256": "test-es256", "RS256": "test-rs256"}
        self.jwks_path: Optional[Path] = None

    def jwks(self) -> Dict[str, Any]:
        keys = []
        for alg, priv in self.keys.items():
            algo = ECAlgorithm if alg.startswith("ES") else RSAAlgorithm
            jwk = json.loads(algo.to_jwk(priv.public_key()))
            jwk.update({"kid": self.kids[alg], "alg": alg, "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks(), indent=2))
        self.jwks_path = path
        return path

    def mint(self, sub: str = "alice@bank.example", *, principal_type: str = "user",
             groups: Iterable[str] = ("data-science",), alg: str = "ES256", lifetime: int = 600,
             issued_offset: int = -5, issuer: str = ISSUER, audience: str = AUDIENCE,
             extra: Optional[Dict[str, Any]] = None) -> Secret:
        """A signed token. `issued_offset` shifts iat/nbf from now; a token whose
        `issued_offset + lifetime` is well below zero is expired."""
        now = int(time.time())
        iat = now + issued_offset
        claims: Dict[str, Any] = {
            "iss": issuer, "aud": audience, "sub": sub, "iat": iat, "nbf": iat, "exp": iat + lifetime,
            "jti": uuid.uuid4().hex, "principal_type": principal_type, "groups": list(groups),
        }
        claims.update(extra or {})
        return Secret(jwt.encode(claims, self.keys[alg], algorithm=alg, headers={"kid": self.kids[alg]}))

    def expired(self, **kw: Any) -> Secret:
        # exp one hour ago: far beyond any clock-skew leeway.
        return self.mint(issued_offset=-7200, lifetime=3600, **kw)


def fake_pat() -> Secret:
    """A personal-access-token-shaped credential (`dapi` + 32 hex)."""
    return Secret("dapi" + uuid.uuid4().hex)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

def _toml_str(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a valid TOML basic string


def write_config(path: Path, *, certs: Path, jwks: Path, upstream: str, audit_dir: Path,
                 listen: str = "127.0.0.1:0", admin_listen: str = "127.0.0.1:0",
                 hosts: Sequence[str] = ("localhost", "127.0.0.1"), gateway_id: str = "gw-test",
                 deny_groups: Sequence[str] = ("tenant-martech",), humans: str = "allow",
                 durability: str = "group", signing_key: Optional[Path] = None,
                 extra: str = "") -> Path:
    """The TOML config of the contract (DESIGN.md key names). `durability` is the audit
    trail's: "every", "group" or "none"; `signing_key` signs its digests; `extra` is appended
    (whole sections, e.g. `[limits]`)."""
    arr = lambda xs: "[" + ", ".join(_toml_str(x) for x in xs) + "]"  # noqa: E731
    text = f"""\
[server]
listen = {_toml_str(listen)}
tls_cert = {_toml_str(certs / "gateway.crt")}
tls_key = {_toml_str(certs / "gateway.key")}
admin_listen = {_toml_str(admin_listen)}
gateway_id = {_toml_str(gateway_id)}

[identity]
jwks_file = {_toml_str(jwks)}
issuers = {arr([ISSUER])}
audiences = {arr([AUDIENCE])}
principal_type_claim = "principal_type"
groups_claim = "groups"
deny_groups = {arr(deny_groups)}

[[workspace]]
name = "prod-analytics"
hosts = {arr(hosts)}
upstream = {_toml_str(upstream)}
humans = {_toml_str(humans)}

[policy]
unknown_api = "deny"

[audit]
dir = {_toml_str(audit_dir)}
durability = {_toml_str(durability)}
"""
    if signing_key is not None:
        text += f"signing_key = {_toml_str(signing_key)}\n"
    text += extra
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# The gateway process
# ---------------------------------------------------------------------------------------------

class Gateway:
    """`gatehouse serve --config FILE`, waited on until both listeners are up and /readyz says
    200. `stop()` sends SIGTERM and, after STOP_TIMEOUT, SIGKILL. Safe to call twice."""

    def __init__(self, config: Path, audit_dir: Path, log_path: Path, binary: Optional[Path] = None,
                 env: Optional[Dict[str, str]] = None):
        self.config = config
        self.audit_dir = audit_dir
        self.log_path = log_path
        self.binary = binary or gateway_bin()
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.data_addr: Optional[str] = None
        self.admin_addr: Optional[str] = None
        self.admin_tls: bool = False
        self.tls: Optional[bool] = None
        self.stdout_lines: List[str] = []
        self._reader: Optional[threading.Thread] = None
        self._cond = threading.Condition()
        self.exit_code: Optional[int] = None

    # -- lifecycle
    def start(self, timeout: float = START_TIMEOUT) -> "Gateway":
        if not self.binary.is_file():
            raise HarnessError(f"gateway binary not found: {self.binary} (run `cargo build` or set GATEHOUSE_BIN)")
        self._log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, env=self.env,
            )
        except OSError:
            self._log.close()
            raise
        self._reader = threading.Thread(target=self._read_stdout, name="gatehouse-stdout", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        try:
            with self._cond:
                while not (self.data_addr and self.admin_addr):
                    if self.proc.poll() is not None:
                        raise HarnessError(f"gateway exited with {self.proc.returncode} before listening; "
                                           f"log tail:\n{self.log_tail()}")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise HarnessError(f"gateway did not print both listening lines within {timeout}s; "
                                           f"stdout={self.stdout_lines[-5:]!r}; log tail:\n{self.log_tail()}")
                    self._cond.wait(min(left, 0.2))
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.stdout_lines.append(line)
                m = _LISTEN_RE.search(line)
                if m:
                    if m.group(1) == "data":
                        self.data_addr = m.group(2)
                        self.tls = (m.group(3) or "").lower() == "true"
                    else:
                        self.admin_addr = m.group(2)
                        self.admin_tls = (m.group(3) or "").lower() == "true"
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def admin_ca(self) -> Optional[Path]:
        """The CA that signed the gateway's certificate: `ca.crt` beside `tls_cert` (what
        `gatehouse certs dev` writes)."""
        import tomllib
        cert = tomllib.loads(Path(self.config).read_text()).get("server", {}).get("tls_cert")
        return Path(cert).parent / "ca.crt" if cert else None

    def admin_url(self, path: str) -> str:
        scheme = "https" if self.admin_tls else "http"
        port = str(self.admin_addr).rsplit(":", 1)[1]
        return f"{scheme}://localhost:{port}{path}"

    def _wait_ready(self, deadline: float) -> None:
        url = self.admin_url("/readyz")
        context = None
        if self.admin_tls:
            import ssl
            context = ssl.create_default_context(cafile=str(self.admin_ca()))
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"gateway exited with {self.proc.returncode}; log tail:\n{self.log_tail()}")
            try:
                with _no_proxy_opener(context).open(url, timeout=2) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        raise HarnessError(f"{url} not 200 before the deadline (last: {last}); log tail:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        p = self.proc
        if p is None:
            return self.exit_code
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=timeout)
        self.exit_code = p.returncode
        if self._reader is not None:
            self._reader.join(timeout=2)
        if p.stdout is not None:
            p.stdout.close()
        self._log.close()
        self.proc = None
        return self.exit_code

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- addresses
    @property
    def port(self) -> int:
        assert self.data_addr, "gateway not started"
        return int(self.data_addr.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        """The data listener as clients should name it (https://127.0.0.1:PORT)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    # -- audit trail
    def audit_records(self) -> List[Dict[str, Any]]:
        return read_audit(self.audit_dir)


def _no_proxy_opener(context: Any = None) -> urllib.request.OpenerDirector:
    """Straight to loopback, whatever proxy the environment names; `context` for TLS."""
    handlers: List[Any] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def read_audit(audit_dir: Path) -> List[Dict[str, Any]]:
    """Every JSON record in `*.jsonl` files under `audit_dir`, in file then line order. A
    partially written last line (a writer mid-flush) is skipped."""
    out: List[Dict[str, Any]] = []
    for f in sorted(glob.glob(os.path.join(str(audit_dir), "**", "*.jsonl"), recursive=True)):
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Polls `predicate` until it returns something truthy or `timeout` passes; returns the
    last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def dig(rec: Dict[str, Any], dotted: str) -> Any:
    """`dig(r, "decision.effect")` → r["decision"]["effect"], or None."""
    cur: Any = rec
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


# ---------------------------------------------------------------------------------------------
# Client environment
# ---------------------------------------------------------------------------------------------

# Variables through which a developer's own setup could steer a client away from the gateway,
# to another credential, or off certificate verification.
_SCRUB_PREFIXES = ("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_", "MLFLOW_", "AWS_")
_SCRUB_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                "NETRC", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
                "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "SYSTEM_ACCESSTOKEN"}


def client_env(home: Path, ca_bundle: Optional[Path], base: Optional[Dict[str, str]] = None,
               **extra: str) -> Dict[str, str]:
    """An environment for a real client: the caller's environment minus anything Databricks,
    cloud (AWS_* too: these machines export AWS_CA_BUNDLE), proxy or CA related, with an empty
    HOME (no ~/.databrickscfg, no ~/.netrc), a config file path that does not exist, and
    `REQUESTS_CA_BUNDLE` = the dev CA."""
    env = dict(os.environ if base is None else base)
    for k in list(env):
        if k.startswith(_SCRUB_PREFIXES) or k in _SCRUB_NAMES:
            del env[k]
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["DATABRICKS_CONFIG_FILE"] = str(home / "no-databrickscfg")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    if ca_bundle is not None:
        env["REQUESTS_CA_BUNDLE"] = str(ca_bundle)
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# Assertion helpers (never put a token in a message)
# ---------------------------------------------------------------------------------------------

def same_secret(a: Optional[str], b: str) -> bool:
    """Constant-time equality that never puts either value in an assertion message."""
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


def seen(records: List[Dict[str, Any]]) -> List[str]:
    """What the upstream saw, for assertion messages: "METHOD path" only (no headers, which
    carry tokens)."""
    return [f"{r['method']} {r['path']}" for r in records]


def audit_for(gw: "Gateway", principal_id: str, until: Callable[[List[Dict[str, Any]]], bool],
              timeout: float = AUDIT_WAIT) -> List[Dict[str, Any]]:
    """The trail's records for one principal, polled until `until(records)` holds or the
    timeout passes (then returned as they are, for the assertion to report)."""
    def attempt() -> Any:
        recs = records_of(read_audit(gw.audit_dir), principal_id)
        return recs if until(recs) else None
    got = wait_for(attempt, timeout=timeout)
    if got:
        return got
    return records_of(read_audit(gw.audit_dir), principal_id)


def records_of(trail: List[Dict[str, Any]], principal_id: str) -> List[Dict[str, Any]]:
    """One principal's records: its decision records, and the completion records that share a
    request_id with them (a completion need not repeat the principal)."""
    ids = {r.get("request_id") for r in trail
           if r.get("phase") == "decision" and dig(r, "principal.id") == principal_id}
    return [r for r in trail if dig(r, "principal.id") == principal_id or
            (r.get("phase") == "completion" and r.get("request_id") in ids)]


def summarize(recs: List[Dict[str, Any]]) -> List[str]:
    """Audit records as short strings for assertion messages."""
    return [f"{r.get('phase')} {dig(r, 'request.method')} {dig(r, 'request.path')} action={dig(r, 'action.name')} "
            f"effect={dig(r, 'decision.effect')} rule={dig(r, 'decision.rule')} status={r.get('status')}"
            for r in recs]
