"""S3 pieces for the real-client tests: moto's server mode as the upstream (with its request
recorder as the record of what reached the upstream), the gateway config with `[s3]`,
`[[s3.access_key]]` and `[[bucket]]`, the AWS CLI as a subprocess in a scrubbed environment,
boto3 clients, and small S3 helpers.

What reached the upstream: moto's recorder (`moto.moto_api` Recorder). With recording started
(`POST /moto-api/recorder/start-recording`), moto appends one JSON line per request that reaches
any of its handlers — method, `url` built from the Host header and the raw (undecoded) path and
query, every header, and the body when the request has a Content-Length — to the file named by
`MOTO_RECORDER_FILEPATH`. moto routes every request without an `x-amz-target` to S3 (SigV4 by
its credential scope, SigV2 and presigned ones by default), so every S3 request the gateway
forwards lands in the file; `test_s3.py::test_recorder_sees_every_request_kind` proves it for
each request kind the denial tests send. `POST /moto-api/recorder/reset-recording` empties it.
The file is read directly (the same content `GET /moto-api/recorder/download-recording` serves).

The AWS CLI (awscli 1.46) vendors its own botocore and, once anything imports `awscli`, installs
an import hook that makes `import botocore` resolve to that copy: never import awscli in the
pytest process; run `aws` as a subprocess (as here).

Secrets (the S3 secret keys, session tokens) are `harness.Secret`s and go to clients through the
environment or keyword arguments, never on a command line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import harness
from harness import HarnessError, Secret

START_TIMEOUT = 60.0  # moto imports a lot on first start
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 30.0
CLI_TIMEOUT = 120.0  # one `aws` command, 20 MiB transfers included
CLI_CONNECT_TIMEOUT_S = 10
CLI_READ_TIMEOUT_S = 60

REGION = "us-east-1"

# Buckets of the contract (DESIGN.md classes).
LAB = "buk-aiml-lab"
RAW = "buk-raw-landing"
PROD_OUT = "buk-aiml-prod-output"
# Exists in moto, named in no [[bucket]]: a request that leaked would succeed there.
UNLISTED = "buk-unlisted-scratch"
LAB_RETENTION_DAYS = 90

# Members approve exceptions (`[exceptions] approver_groups`).
EXCEPTION_APPROVERS = "cdao-approvers"

# Workspace hosts: the S3 hosts here are localhost/127.0.0.1, so the workspaces get others.
ANALYTICS_HOST = "analytics.dbx.test"
PROD_HOST = "prod.dbx.test"

_MOTO_RUNNING_RE = re.compile(r"Running on (https?)://([0-9.]+):(\d+)")


# ---------------------------------------------------------------------------------------------
# Access keys
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AccessKey:
    id: str
    secret: Secret
    principal: Optional[str] = None  # None: not in the gateway's config
    workspace: Optional[str] = None
    session_token: Optional[Secret] = None

    def __repr__(self) -> str:
        return f"AccessKey({self.id}, principal={self.principal})"


def _secret_key() -> Secret:
    # 40 characters like a real secret access key; unique per run so a leak is recognisable.
    return Secret(base64.b64encode(os.urandom(30)).decode().replace("+", "A").replace("/", "B"))


def make_keys() -> Dict[str, AccessKey]:
    return {
        "lab": AccessKey("AKIALABEXAMPLE0001", _secret_key(), "sp-aiml-lab", "prod-analytics"),
        "prod": AccessKey("AKIAPRODEXAMPLE001", _secret_key(), "sp-aiml-prod", "prod"),
        "unknown": AccessKey("AKIAUNKNOWNEXAMPLE01", _secret_key()),
        # STS-style temporary credentials that no config names: denied, and the session
        # token must not reach the trail.
        "temp": AccessKey("ASIATEMPEXAMPLE00001", _secret_key(),
                          session_token=Secret("FwoGZXIvYXdzE" + uuid.uuid4().hex * 4)),
    }


# ---------------------------------------------------------------------------------------------
# moto in server mode
# ---------------------------------------------------------------------------------------------

# Requests signed with this key are the tests' own direct look-ups in moto (seeding, checking
# what moto holds): `records()` leaves them out.
ADMIN_KEY_ID = "AKIAMOTOADMIN0000001"


class MotoServer:
    """moto's server (`moto.server.main`, as `python -m moto.server -H 127.0.0.1 -p 0`) in its
    own process, recording every request. `stop()` sends SIGTERM, then SIGKILL after
    STOP_TIMEOUT. Safe to call twice."""

    def __init__(self, workdir: Path, python: Optional[str] = None):
        self.workdir = workdir
        self.python = python or sys.executable
        self.record_file = workdir / "moto-recording.jsonl"
        self.log_path = workdir / "moto.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None

    @property
    def url(self) -> str:
        assert self.port, "moto not started"
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> "MotoServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = harness.client_env(self.workdir / "home", None)
        env.update({"MOTO_RECORDER_FILEPATH": str(self.record_file), "PYTHONUNBUFFERED": "1"})
        env.pop("MOTO_ENABLE_RECORDING", None)
        self._log = open(self.log_path, "wb")
        argv = [self.python, str(Path(__file__).resolve()), "--moto", "-H", "127.0.0.1", "-p", "0"]
        self.proc = subprocess.Popen(argv,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(self.workdir))
        deadline = time.monotonic() + timeout
        try:
            while self.port is None:
                if self.proc.poll() is not None:
                    raise HarnessError(f"moto exited with {self.proc.returncode}:\n{self.log_tail()}")
                m = _MOTO_RUNNING_RE.search(self.log_path.read_text(errors="replace"))
                if m:
                    self.port = int(m.group(3))
                    break
                if time.monotonic() > deadline:
                    raise HarnessError(f"moto did not report its port within {timeout}s:\n{self.log_tail()}")
                time.sleep(0.1)
            while True:  # the port is printed just before it serves
                try:
                    self.api("POST", "/moto-api/recorder/start-recording")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            self.reset_recording()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=STOP_TIMEOUT)
        self._log.close()
        self.proc = None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def api(self, method: str, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with harness._no_proxy_opener().open(req, timeout=HTTP_TIMEOUT) as r:
            return r.read()

    # -- the recording
    def reset_recording(self) -> None:
        self.api("POST", "/moto-api/recorder/reset-recording")

    def records(self) -> List["UpstreamRequest"]:
        """What moto received since the last reset, oldest first, except the tests' own direct
        requests (signed with ADMIN_KEY_ID). A line that does not parse (one being written)
        is returned as a request with method "?" so that it is never mistaken for nothing."""
        out: List[UpstreamRequest] = []
        try:
            with open(self.record_file, encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                r = UpstreamRequest.from_recording(json.loads(line))
            except (ValueError, KeyError):
                out.append(UpstreamRequest("?", "?", "?", "", {}, None))
                continue
            if ADMIN_KEY_ID not in (r.header("authorization") or ""):
                out.append(r)
        return out

    # -- direct access (not through the gateway): seeding and inspecting
    def client(self, key: Optional[AccessKey] = None) -> Any:
        return s3_client(self.url, key or AccessKey(ADMIN_KEY_ID, Secret("moto-admin")), None)


@dataclass
class UpstreamRequest:
    method: str
    host: str  # from the URL moto rebuilt from the Host header
    raw_path: str  # exactly as received, still percent-encoded
    query: str
    headers: Dict[str, str]  # names lower-cased
    body: Optional[bytes]  # None when moto did not record it (no Content-Length)

    @classmethod
    def from_recording(cls, e: Dict[str, Any]) -> "UpstreamRequest":
        parts = urlsplit(e["url"])
        body: Optional[bytes] = None
        if e.get("body_encoded"):
            body = base64.b64decode(e.get("body") or "")
        elif e.get("body"):
            body = str(e["body"]).encode()
        hdrs = {str(k).lower(): str(v) for k, v in (e.get("headers") or {}).items()}
        return cls(e["method"], parts.netloc, parts.path, parts.query, hdrs, body)

    @property
    def bucket(self) -> str:
        return self.raw_path.lstrip("/").split("/", 1)[0]

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def short(self) -> str:
        """For assertion messages: method, host, path and query minus signature values."""
        q = re.sub(r"(?i)(signature|x-amz-signature|x-amz-security-token)=[^&]*", r"\1=***", self.query)
        return f"{self.method} {self.host}{self.raw_path}{'?' + q if q else ''}"


def summarize_upstream(recs: Sequence[UpstreamRequest]) -> List[str]:
    return [r.short() for r in recs]


# ---------------------------------------------------------------------------------------------
# The gateway's config
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def gateways_http_and_tls(tmp_path_factory: Any, name: str, *, binary: Path, certs: Path, jwks: Path,
                          s3_upstream: str, keys: Dict[str, "AccessKey"],
                          **config: Any) -> Iterator[Dict[str, harness.Gateway]]:
    """Two gateways in front of `s3_upstream`, one plaintext and one over TLS, keyed by transport;
    both stopped on the way out. `config`: more `write_s3_config` arguments, and `exceptions=True`
    for an `[exceptions]` store of each gateway's own."""
    gws: Dict[str, harness.Gateway] = {}
    with_exceptions = config.pop("exceptions", False)
    try:
        for transport in ("http", "tls"):
            d = tmp_path_factory.mktemp(f"gatehouse-{name}-{transport}")
            audit_dir = d / "audit"
            audit_dir.mkdir()
            exceptions_db = d / "exceptions.db" if with_exceptions else None
            cfg = write_s3_config(d / "gatehouse.toml", jwks=jwks, audit_dir=audit_dir, s3_upstream=s3_upstream,
                                  keys=keys, certs=certs if transport == "tls" else None,
                                  gateway_id=f"gw-{name}-{transport}", exceptions_db=exceptions_db, **config)
            gw = harness.Gateway(cfg, audit_dir, d / "gatehouse.log", binary=binary,
                                 env=harness.client_env(d / "home", None))
            gws[transport] = gw
            gw.start()
            assert gw.tls == (transport == "tls"), f"{transport} gateway reports tls={gw.tls}"
        yield gws
    finally:
        for gw in gws.values():
            gw.stop()


def write_s3_config(path: Path, *, jwks: Path, audit_dir: Path, s3_upstream: str,
                    keys: Dict[str, AccessKey], certs: Optional[Path] = None,
                    s3_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
                    gateway_id: str = "gw-s3-test", source_cidrs: Optional[Dict[str, Sequence[str]]] = None,
                    exceptions_db: Optional[Path] = None) -> Path:
    """The contract's TOML (DESIGN.md key names), one key per line. `certs` None: plaintext
    listener. Workspaces get their own host names so `s3_hosts` route only to S3.
    `source_cidrs`: workspace name → its compute networks (none by default). `exceptions_db`:
    an `[exceptions]` store (SQLite) with `cdao-approvers` as the approvers."""
    s = harness._toml_str
    arr = lambda xs: "[" + ", ".join(s(x) for x in xs) + "]"  # noqa: E731
    tls = (f"tls_cert = {s(certs / 'gateway.crt')}\ntls_key = {s(certs / 'gateway.key')}\n"
           if certs is not None else "")
    key_tables = "".join(
        f"""
[[s3.access_key]]
id = {s(k.id)}
principal = {s(k.principal)}
principal_type = "service_principal"
workspace = {s(k.workspace)}
""" for k in keys.values() if k.principal)
    cidrs = lambda ws: (f"source_cidrs = {arr((source_cidrs or {}).get(ws, ()))}\n"  # noqa: E731
                        if (source_cidrs or {}).get(ws) else "")
    exceptions = (f"\n[exceptions]\nstore = {s('sqlite://' + str(exceptions_db))}\n"
                  f"approver_groups = {arr([EXCEPTION_APPROVERS])}\n" if exceptions_db is not None else "")
    text = f"""\
[server]
listen = "127.0.0.1:0"
{tls}admin_listen = "127.0.0.1:0"
gateway_id = {s(gateway_id)}

[identity]
jwks_file = {s(jwks)}
issuers = {arr([harness.ISSUER])}
audiences = {arr([harness.AUDIENCE])}
principal_type_claim = "principal_type"
groups_claim = "groups"
deny_groups = ["tenant-martech"]

[[workspace]]
name = "prod-analytics"
hosts = {arr([ANALYTICS_HOST])}
upstream = "http://127.0.0.1:9"
humans = "allow"
{cidrs("prod-analytics")}
[[workspace]]
name = "prod"
hosts = {arr([PROD_HOST])}
upstream = "http://127.0.0.1:9"
humans = "deny"
{cidrs("prod")}
[s3]
hosts = {arr(s3_hosts)}
upstream = {s(s3_upstream)}
{key_tables}
[[bucket]]
name = {s(LAB)}
class = "lab"
workspaces = ["prod-analytics"]
retention_days = {LAB_RETENTION_DAYS}

[[bucket]]
name = {s(RAW)}
class = "raw"

[[bucket]]
name = {s(PROD_OUT)}
class = "prod-output"
readers = ["sp-edp-sync"]

[policy]
unknown_api = "deny"

[audit]
dir = {s(audit_dir)}
durability = "group"
{exceptions}"""
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------------

# Everything AWS-, CA- or proxy-related is dropped from the inherited environment: these
# machines export AWS_CA_BUNDLE, SSL_CERT_FILE, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE globally.
_AWS_SCRUB_PREFIXES = ("AWS_", "BOTO_", "S3_")


def aws_env(home: Path, ca_bundle: Path, key: AccessKey, base: Optional[Dict[str, str]] = None,
            config_text: str = "") -> Dict[str, str]:
    """The environment for one `aws` run or for boto3 in this process: harness.client_env
    (no proxies, no CA variables, empty HOME) minus every AWS_* variable, then the key, the
    region, AWS_CA_BUNDLE set explicitly to `ca_bundle`, a config file of our own, no shared
    credentials file, no instance metadata, one attempt per request."""
    env = harness.client_env(home, None, base=base)
    for k in list(env):
        if k.upper().startswith(_AWS_SCRUB_PREFIXES) or k.upper() in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                                                                       "SSL_CERT_FILE", "SSL_CERT_DIR"):
            del env[k]
    cfg = home / f"aws-config-{hashlib.sha256(config_text.encode()).hexdigest()[:12]}"
    cfg.write_text(config_text or "[default]\n")
    env.update({
        "AWS_ACCESS_KEY_ID": key.id,
        "AWS_SECRET_ACCESS_KEY": key.secret,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CA_BUNDLE": str(ca_bundle),
        "AWS_CONFIG_FILE": str(cfg),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
        "AWS_PAGER": "",
    })
    if key.session_token:
        env["AWS_SESSION_TOKEN"] = key.session_token
    return env


@dataclass
class CliResult:
    argv: List[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return (f"`aws {' '.join(self.argv)}` exited {self.returncode} after {self.seconds:.1f}s\n"
                f"stdout: {self.stdout[-1500:]!r}\nstderr: {self.stderr[-1500:]!r}")


class AwsCli:
    """The venv's `aws` (awscli 1.46), run as a subprocess against one endpoint."""

    def __init__(self, endpoint: str, home: Path, ca_bundle: Path):
        self.endpoint = endpoint
        self.home = home
        self.ca_bundle = ca_bundle
        self.binary = Path(sys.executable).parent / "aws"
        if not self.binary.is_file():
            raise HarnessError(f"AWS CLI not installed in this environment: {self.binary}")

    def run(self, args: Sequence[str], key: AccessKey, cwd: Optional[Path] = None,
            config_text: str = "", timeout: float = CLI_TIMEOUT) -> CliResult:
        home = self.home
        home.mkdir(parents=True, exist_ok=True)
        env = aws_env(home, self.ca_bundle, key, config_text=config_text)
        argv = ["--endpoint-url", self.endpoint, "--cli-connect-timeout", str(CLI_CONNECT_TIMEOUT_S),
                "--cli-read-timeout", str(CLI_READ_TIMEOUT_S), *args]
        if args and args[0] == "s3" and len(args) > 1 and args[1] in ("cp", "sync", "mv", "rm"):
            argv.append("--only-show-errors")
        t0 = time.monotonic()
        try:
            p = subprocess.run([str(self.binary), *argv], env=env, cwd=str(cwd or home), capture_output=True,
                               text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise HarnessError(f"`aws {' '.join(args)}` did not finish within {timeout}s; "
                               f"stderr: {(e.stderr or b'')[-1500:]!r}") from None
        return CliResult(list(args), p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


class ExceptionsCli:
    """`gatehouse exceptions …`, the approvers' command line (the gateway binary), against one
    gateway's admin API. The token goes through the environment, never the command line."""

    def __init__(self, binary: Path, gw: harness.Gateway, ca_bundle: Path, home: Path):
        self.binary = binary
        self.admin = gw.admin_url("")
        self.ca_bundle = ca_bundle
        self.home = home

    def run(self, token: Secret, *args: str) -> subprocess.CompletedProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        env = harness.client_env(self.home, None)
        env.update({"GATEHOUSE_ADMIN": self.admin, "GATEHOUSE_TOKEN": token,
                    "GATEHOUSE_CACERT": str(self.ca_bundle)})
        return subprocess.run([str(self.binary), "exceptions", *args], env=env, capture_output=True, text=True,
                              timeout=HTTP_TIMEOUT, stdin=subprocess.DEVNULL)


def s3_client(endpoint: str, key: AccessKey, ca_bundle: Optional[Path], signature_version: Optional[str] = None,
              addressing_style: str = "path", total_max_attempts: Optional[int] = None) -> Any:
    """A boto3 S3 client with explicit credentials, region, endpoint and CA bundle (never the
    process's), at most one retry (below), short timeouts. The caller's process environment
    must already be scrubbed of AWS_* (test_s3.py does so for the module).

    botocore reads `retries={"max_attempts": 1}` as one *retry* (two attempts in all, sent as
    `amz-sdk-request: attempt=1; max=2`); `total_max_attempts=1` makes it a single attempt."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(aws_access_key_id=key.id, aws_secret_access_key=key.secret,
                                    aws_session_token=key.session_token, region_name=REGION)
    retries: Dict[str, Any] = {"max_attempts": 1, "mode": "standard"}
    if total_max_attempts is not None:
        retries = {"total_max_attempts": total_max_attempts, "mode": "standard"}
    cfg = Config(signature_version=signature_version, connect_timeout=CLI_CONNECT_TIMEOUT_S,
                 read_timeout=CLI_READ_TIMEOUT_S, retries=retries,
                 s3={"addressing_style": addressing_style})
    verify: Any = str(ca_bundle) if ca_bundle is not None else True
    return session.client("s3", endpoint_url=endpoint, config=cfg, verify=verify)


def http_get(url: str, ca_bundle: Optional[Path], timeout: float = HTTP_TIMEOUT) -> Tuple[int, Dict[str, str], bytes]:
    """GET without proxies, trusting only `ca_bundle` for https. Returns (status, headers
    with lower-cased names, body) for any status."""
    import ssl

    handlers: List[Any] = [urllib.request.ProxyHandler({})]
    if url.startswith("https:"):
        ctx = ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else ssl.create_default_context()
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


# ---------------------------------------------------------------------------------------------
# S3 helpers
# ---------------------------------------------------------------------------------------------

def s3_error(body: bytes) -> Dict[str, str]:
    """`<Error><Code>…</Code><Message>…</Message><RequestId>…</RequestId></Error>` → dict;
    {} if the body is not such a document."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return {}
    if root.tag.split("}")[-1] != "Error":
        return {}
    return {child.tag.split("}")[-1]: (child.text or "") for child in root}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def random_file(path: Path, size: int) -> str:
    """Writes `size` random bytes; returns their SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def seed(moto: MotoServer) -> None:
    """Buckets and objects created directly in moto, never through the gateway."""
    c = moto.client()
    for b in (LAB, RAW, PROD_OUT, UNLISTED):
        c.create_bucket(Bucket=b)
    c.put_object(Bucket=RAW, Key="x", Body=b"raw,row,1\nraw,row,2\n")
    c.put_object(Bucket=RAW, Key="landing/2026/11/27/part-0000.csv", Body=b"raw\n")
    c.put_object(Bucket=UNLISTED, Key="y", Body=b"unlisted\n")
    c.put_object(Bucket=PROD_OUT, Key="scores/latest.json", Body=b'{"score": 1}\n')
    c.put_bucket_versioning(Bucket=LAB, VersioningConfiguration={"Status": "Enabled"})
    c.put_bucket_lifecycle_configuration(Bucket=LAB, LifecycleConfiguration=lifecycle(30))


def lifecycle(days: int, rule_id: str = "expire-lab") -> Dict[str, Any]:
    """One rule for the whole bucket expiring current objects and noncurrent versions after
    `days`: what a lab bucket's retention asks for."""
    return {"Rules": [{"ID": rule_id, "Status": "Enabled", "Filter": {"Prefix": ""},
                       "Expiration": {"Days": days}, "NoncurrentVersionExpiration": {"NoncurrentDays": days}}]}


def lifecycle_days(moto: MotoServer, bucket: str) -> List[int]:
    rules = moto.client().get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    return [r["Expiration"]["Days"] for r in rules if "Expiration" in r]


def object_exists(moto: MotoServer, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        moto.client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return False
        raise


# ---------------------------------------------------------------------------------------------
# `python s3harness.py --moto ARGS…`: moto's server with a thread-safe recorder
# ---------------------------------------------------------------------------------------------

def _run_moto(argv: List[str]) -> None:
    """moto 5.2.5's recorder appends each request (an 8 MiB part is an 11 MB base64 line) with
    unsynchronised writes from the server's request threads, so concurrent multipart uploads
    interleave lines. Recording under one lock keeps every line whole; nothing else changes."""
    import threading

    from moto.moto_api._internal.recorder.models import Recorder
    from moto.server import main

    lock = threading.Lock()
    original = Recorder._record_request

    def record_request(self: Any, request: Any, body: Any = None) -> None:
        with lock:
            original(self, request, body)

    Recorder._record_request = record_request  # type: ignore[method-assign]
    main(argv)


if __name__ == "__main__" and sys.argv[1:2] == ["--moto"]:
    _run_moto(sys.argv[2:])
