"""The AWS CLI (awscli 1.46.2) and boto3 (1.44.5) through the real gateway's S3 side, in front
of moto 5.2.5 in server mode (which does not check signatures).

Two gateways run for the module, one plaintext and one TLS with the development CA; each test
that talks to the gateway runs against both (`[http]`, `[tls]`). Clients use path style through
`--endpoint-url` / `endpoint_url`. Buckets and objects are created directly in moto, never
through the gateway.

What reached the upstream is read from moto's request recorder (see s3harness.py), emptied
before every test. `test_recorder_sees_every_request_kind` sends each denied request kind
straight to moto and checks the recorder sees it, so "the recorder saw nothing" in a denial test
means the gateway forwarded nothing.

Every denial must be the gateway's S3 XML error (403, AccessDenied, the rule and request id in
the message), reach nothing upstream, and leave a deny decision in the trail under the S3
operation name. Allowed traffic must reach moto with the client's Host, path, query, signed
headers and body unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence
from urllib.parse import parse_qs, urlsplit

import pytest

import harness
import s3harness
from harness import Gateway, TokenMinter, dig, read_audit
from s3harness import (LAB, PROD_OUT, RAW, UNLISTED, AccessKey, AwsCli, MotoServer, UpstreamRequest,
                       lifecycle, lifecycle_days, object_exists, s3_client, s3_error, sha256_file,
                       summarize_upstream)

MiB = 1024 * 1024
BIG = 20 * MiB  # multipart: the CLI and boto3 split at 8 MiB
DENY_TEXT = "Gatehouse denied this request (rule "
# A denied request is answered at once; a client taking longer has retried or waited.
PROMPT_S = 15.0

# botocore's error line. With AWS_MAX_ATTEMPTS=1 (standard retry mode) it inserts
# " (reached max retries: 0)" after the operation name.
_RETRIES = r"(?: \(reached max retries: \d+\))?"


def cli_error_re(code: str, operation: str, message: str) -> "re.Pattern[str]":
    return re.compile(rf"An error occurred \({re.escape(code)}\) when calling the {operation} operation"
                      rf"{_RETRIES}: {re.escape(message)}")


# The AWS CLI cannot show an error code for a HEAD request: the response has no body, so
# botocore reports "An error occurred (403) when calling the HeadObject operation: Forbidden".
HEAD_DENIAL = cli_error_re("403", "HeadObject", "Forbidden")

S3_OPERATIONS = {
    "GetObject", "HeadObject", "PutObject", "CopyObject", "ListObjectsV2", "ListObjects",
    "DeleteBucketLifecycle", "PutBucketLifecycleConfiguration", "PutBucketVersioning",
    "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "AbortMultipartUpload",
    "ListBuckets", "HeadBucket", "DeleteObject", "DeleteObjects", "GetBucketLifecycleConfiguration",
}


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_process_env(tmp_path_factory: pytest.TempPathFactory) -> Iterable[Path]:
    """boto3 runs in this process: drop every inherited AWS_*, CA-bundle and proxy variable for
    the module and point the AWS config and credentials files at nothing."""
    home = tmp_path_factory.mktemp("s3-process-home")
    mp = pytest.MonkeyPatch()
    scrub = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY",
             "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    for k in list(os.environ):
        if k.upper().startswith(("AWS_", "BOTO_")) or k.upper() in scrub:
            mp.delenv(k, raising=False)
    mp.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    mp.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    mp.setenv("no_proxy", "127.0.0.1,localhost,::1")
    try:
        yield home
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def moto(s3_process_env: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterable[MotoServer]:
    m = MotoServer(tmp_path_factory.mktemp("moto")).start()
    try:
        s3harness.seed(m)
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def keys() -> Dict[str, AccessKey]:
    return s3harness.make_keys()


@pytest.fixture(scope="module")
def s3_gateways(tmp_path_factory: pytest.TempPathFactory, gateway_binary: Path, certs: Path,
                minter: TokenMinter, moto: MotoServer, keys: Dict[str, AccessKey]) -> Iterable[Dict[str, Gateway]]:
    with s3harness.gateways_http_and_tls(tmp_path_factory, "s3", binary=gateway_binary, certs=certs,
                                         jwks=minter.jwks_path, s3_upstream=moto.url, keys=keys,
                                         exceptions=True) as gws:
        yield gws


@pytest.fixture(params=["http", "tls"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def gw(s3_gateways: Dict[str, Gateway], transport: str) -> Gateway:
    return s3_gateways[transport]


@pytest.fixture
def ca(certs: Path) -> Path:
    return certs / "ca.crt"


@pytest.fixture
def up(moto: MotoServer) -> MotoServer:
    """moto with an empty request recording for this test."""
    moto.reset_recording()
    return moto


@pytest.fixture
def aws(gw: Gateway, ca: Path, tmp_path: Path) -> AwsCli:
    return AwsCli(gw.url, tmp_path / "aws-home", ca)


@pytest.fixture
def boto(gw: Gateway, ca: Path, s3_process_env: Path) -> Callable[..., Any]:
    def make(key: AccessKey, signature_version: Optional[str] = None) -> Any:
        return s3_client(gw.url, key, ca, signature_version=signature_version)
    return make


@pytest.fixture
def uid() -> str:
    return "t-" + uuid.uuid4().hex[:12]


class Trail:
    """The records a gateway wrote after this object was made."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.mark = len(read_audit(gw.audit_dir))

    def records(self) -> List[Dict[str, Any]]:
        return read_audit(self.gw.audit_dir)[self.mark:]

    def wait(self, until: Callable[[List[Dict[str, Any]]], bool], timeout: float = harness.AUDIT_WAIT
             ) -> List[Dict[str, Any]]:
        got = harness.wait_for(lambda: (lambda rs: rs if until(rs) else None)(self.records()), timeout=timeout)
        return got or self.records()


@pytest.fixture
def trail(gw: Gateway) -> Trail:
    return Trail(gw)


# ---------------------------------------------------------------------------------------------
# Assertion helpers
# ---------------------------------------------------------------------------------------------

def decisions(recs: Sequence[Dict[str, Any]], action: Optional[str] = None, effect: Optional[str] = None,
              bucket: Optional[str] = None, key: Optional[str] = None) -> List[Dict[str, Any]]:
    out = []
    for r in recs:
        if r.get("phase") != "decision":
            continue
        if action is not None and dig(r, "action.name") != action:
            continue
        if effect is not None and dig(r, "decision.effect") != effect:
            continue
        if bucket is not None and dig(r, "asset.bucket") != bucket:
            continue
        if key is not None and dig(r, "asset.key") != key:
            continue
        out.append(r)
    return out


def s3_summary(recs: Sequence[Dict[str, Any]]) -> List[str]:
    return [f"{r.get('phase')} {dig(r, 'request.method')} {dig(r, 'request.path')} action={dig(r, 'action.name')} "
            f"asset={r.get('asset')} principal={dig(r, 'principal.id')} effect={dig(r, 'decision.effect')} "
            f"rule={dig(r, 'decision.rule')} status={r.get('status')}" for r in recs]


def expect_deny(trail: Trail, action: str, bucket: str, key: Optional[str] = None,
                principal: Optional[AccessKey] = None, rule_prefix: Optional[str] = None) -> Dict[str, Any]:
    """The trail holds one deny decision for (action, bucket[, key]); returns it."""
    recs = trail.wait(lambda rs: bool(decisions(rs, action, "deny", bucket, key)))
    found = decisions(recs, action, "deny", bucket, key)
    assert len(found) == 1, f"want one deny {action} on {bucket}/{key}; trail: {s3_summary(recs)}"
    r = found[0]
    assert dig(r, "asset.kind") == "s3", r.get("asset")
    if principal is not None and principal.principal:
        assert dig(r, "principal.id") == principal.principal, s3_summary([r])
        assert r.get("workspace") == principal.workspace, s3_summary([r])
    if rule_prefix is not None:
        assert str(dig(r, "decision.rule") or "").startswith(rule_prefix), s3_summary([r])
    return r


def expect_allow(trail: Trail, action: str, bucket: str, key: Optional[str] = None,
                 principal: Optional[AccessKey] = None, at_least: int = 1) -> List[Dict[str, Any]]:
    recs = trail.wait(lambda rs: len(decisions(rs, action, "allow", bucket, key)) >= at_least)
    found = decisions(recs, action, "allow", bucket, key)
    assert len(found) >= at_least, f"want {at_least}+ allow {action} on {bucket}/{key}; trail: {s3_summary(recs)}"
    for r in found:
        assert dig(r, "asset.kind") == "s3", r.get("asset")
        if principal is not None:
            assert dig(r, "principal.id") == principal.principal, s3_summary([r])
            assert r.get("workspace") == principal.workspace, s3_summary([r])
    return found


def assert_cli_access_denied(res: s3harness.CliResult, operation: str) -> None:
    assert res.returncode != 0, f"the command succeeded: {res}"
    want = cli_error_re("AccessDenied", operation, DENY_TEXT)
    assert want.search(res.stderr), f"want /{want.pattern}/ in stderr; {res}"
    assert "Request id:" in res.stderr, f"the message names no request id; {res}"
    assert res.seconds < PROMPT_S, f"the denial took {res.seconds:.1f}s; {res}"


def assert_cli_head_denied(res: s3harness.CliResult) -> None:
    assert res.returncode != 0, f"the command succeeded: {res}"
    assert HEAD_DENIAL.search(res.stderr), f"want /{HEAD_DENIAL.pattern}/ in stderr; {res}"
    assert res.seconds < PROMPT_S, f"the denial took {res.seconds:.1f}s; {res}"


def assert_nothing_upstream(up: MotoServer, settle: float = 0.3) -> None:
    time.sleep(settle)  # a forwarded request is recorded before moto answers; this is slack only
    recs = up.records()
    assert recs == [], f"the upstream received {summarize_upstream(recs)}"


def assert_forwarded_as_sent(r: UpstreamRequest, gw: Gateway) -> None:
    """Host kept (signatures depend on it), X-Forwarded-For added."""
    assert r.host == f"127.0.0.1:{gw.port}", f"Host reaching the upstream: {r.host!r}"
    xff = r.header("x-forwarded-for") or ""
    assert "127.0.0.1" in [p.strip() for p in xff.split(",")], f"x-forwarded-for={xff!r} on {r.short()}"


def assert_xml_denial(status: int, headers: Dict[str, str], body: bytes) -> Dict[str, str]:
    assert status == 403, f"status {status}: {body[:500]!r}"
    err = s3_error(body)
    assert err.get("Code") == "AccessDenied", f"not an S3 AccessDenied error: {body[:500]!r}"
    msg = err.get("Message", "")
    assert DENY_TEXT in msg and "Request id:" in msg, msg
    rid = err.get("RequestId", "")
    assert rid, f"no RequestId: {body[:500]!r}"
    assert rid in msg, f"RequestId {rid!r} not in the message {msg!r}"
    if headers.get("x-request-id"):
        assert headers["x-request-id"] == rid, (headers["x-request-id"], rid)
    return err


def client_error(fn: Callable[[], Any]) -> Dict[str, Any]:
    from botocore.exceptions import ClientError

    t0 = time.monotonic()
    try:
        fn()
    except ClientError as e:
        took = time.monotonic() - t0
        assert took < PROMPT_S, f"the denial took {took:.1f}s"
        return {"code": e.response["Error"].get("Code"), "message": e.response["Error"].get("Message", ""),
                "status": e.response["ResponseMetadata"].get("HTTPStatusCode"),
                "request_id": e.response["Error"].get("RequestId") or e.response["ResponseMetadata"].get("RequestId")}
    raise AssertionError("the call succeeded; it must be denied")


def assert_boto_denied(err: Dict[str, Any]) -> None:
    assert err["status"] == 403 and err["code"] == "AccessDenied", err
    assert DENY_TEXT in err["message"] and "Request id:" in err["message"], err


# ---------------------------------------------------------------------------------------------
# The lab bucket: allowed traffic reaches moto intact
# ---------------------------------------------------------------------------------------------

def test_cli_lab_multipart_upload_and_download_are_byte_identical(aws: AwsCli, gw: Gateway, up: MotoServer,
                                                                  trail: Trail, keys, uid: str,
                                                                  tmp_path: Path) -> None:
    lab = keys["lab"]
    src = tmp_path / "big.bin"
    digest = s3harness.random_file(src, BIG)
    key = f"{uid}/big.bin"

    res = aws.run(["s3", "cp", str(src), f"s3://{LAB}/{key}"], lab)
    assert res.returncode == 0, str(res)

    recs = up.records()
    parts = [r for r in recs if r.method == "PUT" and "partNumber=" in r.query]
    assert len(parts) >= 3, f"not a multipart upload: {summarize_upstream(recs)}"
    assert any(r.method == "POST" and r.query == "uploads" for r in recs), summarize_upstream(recs)
    assert any(r.method == "POST" and r.query.startswith("uploadId=") for r in recs), summarize_upstream(recs)
    for r in recs:
        assert r.raw_path == f"/{LAB}/{key}", r.short()
        assert_forwarded_as_sent(r, gw)
        assert f"Credential={lab.id}/" in (r.header("authorization") or ""), f"{r.short()} lost its signature"
    stored = hashlib.sha256(up.client().get_object(Bucket=LAB, Key=key)["Body"].read()).hexdigest()
    assert stored == digest, "moto holds different bytes than were uploaded"

    dst = tmp_path / "down.bin"
    res = aws.run(["s3", "cp", f"s3://{LAB}/{key}", str(dst)], lab)
    assert res.returncode == 0, str(res)
    assert dst.stat().st_size == BIG and sha256_file(dst) == digest, "the download differs from the upload"

    expect_allow(trail, "CreateMultipartUpload", LAB, key, lab)
    expect_allow(trail, "UploadPart", LAB, key, lab, at_least=3)
    expect_allow(trail, "CompleteMultipartUpload", LAB, key, lab)
    expect_allow(trail, "GetObject", LAB, key, lab)


def test_boto3_lab_multipart_upload_and_download_are_byte_identical(boto, gw: Gateway, up: MotoServer,
                                                                    trail: Trail, keys, uid: str,
                                                                    tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    lab = keys["lab"]
    src = tmp_path / "big.bin"
    digest = s3harness.random_file(src, BIG)
    key = f"{uid}/boto3-big.bin"
    tc = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4)
    c = boto(lab)
    c.upload_file(str(src), LAB, key, Config=tc)

    recs = up.records()
    parts = [r for r in recs if r.method == "PUT" and "partNumber=" in r.query]
    assert len(parts) == 3, f"want 3 parts of 8+8+4 MiB: {summarize_upstream(recs)}"
    for r in recs:
        assert_forwarded_as_sent(r, gw)

    dst = tmp_path / "down.bin"
    c.download_file(LAB, key, str(dst), Config=tc)
    assert sha256_file(dst) == digest, "the download differs from the upload"
    expect_allow(trail, "UploadPart", LAB, key, lab, at_least=3)


def test_cli_lab_ls_cp_sync(aws: AwsCli, up: MotoServer, trail: Trail, keys, uid: str, tmp_path: Path) -> None:
    lab = keys["lab"]
    tree = {"a.txt": b"alpha\n", "sub/b.csv": b"x,y\n1,2\n", "sub/deeper/c.json": b'{"c": 3}\n'}
    local = tmp_path / "up"
    for rel, data in tree.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)

    res = aws.run(["s3", "sync", str(local), f"s3://{LAB}/{uid}/"], lab)
    assert res.returncode == 0, str(res)
    for rel, data in tree.items():
        assert up.client().get_object(Bucket=LAB, Key=f"{uid}/{rel}")["Body"].read() == data, rel

    res = aws.run(["s3", "ls", "--recursive", f"s3://{LAB}/{uid}/"], lab)
    assert res.returncode == 0, str(res)
    listed = {line.split()[-1]: int(line.split()[-2]) for line in res.stdout.splitlines() if line.strip()}
    assert listed == {f"{uid}/{rel}": len(data) for rel, data in tree.items()}, res.stdout

    res = aws.run(["s3", "cp", f"s3://{LAB}/{uid}/a.txt", str(tmp_path / "a-copy.txt")], lab)
    assert res.returncode == 0, str(res)
    assert (tmp_path / "a-copy.txt").read_bytes() == tree["a.txt"]

    down = tmp_path / "down"
    res = aws.run(["s3", "sync", f"s3://{LAB}/{uid}/", str(down)], lab)
    assert res.returncode == 0, str(res)
    got = {str(p.relative_to(down)): p.read_bytes() for p in down.rglob("*") if p.is_file()}
    assert got == tree

    expect_allow(trail, "ListObjectsV2", LAB, None, lab)
    expect_allow(trail, "PutObject", LAB, f"{uid}/sub/b.csv", lab)
    expect_allow(trail, "GetObject", LAB, f"{uid}/sub/deeper/c.json", lab)


def test_boto3_signed_request_reaches_upstream_unchanged(boto, gw: Gateway, up: MotoServer, trail: Trail,
                                                         keys, uid: str, transport: str) -> None:
    """Host, raw path (percent-encoded key), query, every signed header — x-amz-meta-* names with
    underscores included — and the body reach moto as the client sent them."""
    lab = keys["lab"]
    key = f"{uid}/dir with space/a+b=c/ü_é%.txt"
    body = b"pass-through body\n" * 100
    sent: List[Dict[str, Any]] = []

    def capture(request: Any, **_: Any) -> None:
        hdrs = {k.lower(): (v.decode() if isinstance(v, bytes) else str(v)) for k, v in request.headers.items()}
        sent.append({"method": request.method, "url": request.url, "headers": hdrs})

    c = boto(lab)
    c.meta.events.register("before-send.s3.PutObject", capture)
    c.put_object(Bucket=LAB, Key=key, Body=body, Metadata={"data_owner": "aiml", "Run_ID": "r-42"},
                 ContentType="text/csv")
    assert len(sent) == 1
    s = sent[0]
    parts = urlsplit(s["url"])
    recs = [r for r in up.records() if r.method == "PUT"]
    assert len(recs) == 1, summarize_upstream(up.records())
    r = recs[0]
    assert_forwarded_as_sent(r, gw)
    assert r.raw_path == parts.path, (r.raw_path, parts.path)
    assert r.query == parts.query, (r.query, parts.query)
    assert r.host == parts.netloc
    auth = s["headers"]["authorization"]
    signed = re.search(r"SignedHeaders=([^,]+)", auth)
    assert signed, "not a SigV4 header signature"
    names = signed.group(1).split(";")
    assert "x-amz-meta-data_owner" in names and "x-amz-meta-run_id" in names, names
    same_auth = (r.header("authorization") or "") == auth
    assert same_auth, "the Authorization header changed on the way"
    for name in names:
        want = s["headers"].get(name) if name != "host" else parts.netloc
        assert r.header(name) == want, f"signed header {name}: sent {want!r}, upstream got {r.header(name)!r}"
    if transport == "http":  # plain HTTP: a Content-Length body, which moto's recorder keeps
        assert r.body == body, "the body changed on the way"
    else:  # HTTPS: botocore streams it aws-chunked with a checksum trailer (signed headers above)
        assert r.header("content-encoding") == "aws-chunked", r.headers.get("content-encoding")
    stored = up.client().get_object(Bucket=LAB, Key=key)
    assert stored["Body"].read() == body
    assert stored["Metadata"] == {"data_owner": "aiml", "run_id": "r-42"}, stored["Metadata"]

    found = expect_allow(trail, "PutObject", LAB, key, lab)
    assert dig(found[0], "asset.key") == key


def test_localhost_endpoint_routes_to_s3(gw: Gateway, ca: Path, up: MotoServer, trail: Trail, keys, uid: str,
                                         s3_process_env: Path) -> None:
    """`localhost`, the other exact name in `[s3] hosts`, reaches moto with its Host kept."""
    lab = keys["lab"]
    endpoint = gw.url.replace("127.0.0.1", "localhost")
    c = s3_client(endpoint, lab, ca)
    c.put_object(Bucket=LAB, Key=f"{uid}/via-localhost.txt", Body=b"l")
    assert c.get_object(Bucket=LAB, Key=f"{uid}/via-localhost.txt")["Body"].read() == b"l"
    recs = up.records()
    assert [r.method for r in recs] == ["PUT", "GET"], summarize_upstream(recs)
    assert all(r.host == f"localhost:{gw.port}" for r in recs), summarize_upstream(recs)
    expect_allow(trail, "PutObject", LAB, f"{uid}/via-localhost.txt", lab)


@pytest.mark.parametrize("sig", ["s3v4", "s3"])
def test_lab_presigned_get_is_allowed(boto, gw: Gateway, ca: Path, up: MotoServer, trail: Trail, keys,
                                      uid: str, sig: str) -> None:
    """The counterpart of the raw denials: a presigned GET (SigV4 and SigV2 query) of a lab
    object is attributed to the lab key and served."""
    lab = keys["lab"]
    key = f"{uid}/presigned.txt"
    data = b"lab data for a presigned read\n"
    up.client().put_object(Bucket=LAB, Key=key, Body=data)
    up.reset_recording()
    url = boto(lab, signature_version=sig).generate_presigned_url(
        "get_object", Params={"Bucket": LAB, "Key": key}, ExpiresIn=600)
    assert ("X-Amz-Credential=" in url) == (sig == "s3v4") and ("AWSAccessKeyId=" in url) == (sig == "s3"), url
    status, _, body = s3harness.http_get(url, ca)
    assert status == 200 and body == data, (status, body[:300])
    recs = up.records()
    assert len(recs) == 1 and recs[0].method == "GET", summarize_upstream(recs)
    assert recs[0].query == urlsplit(url).query, "the presigned query changed on the way"
    assert_forwarded_as_sent(recs[0], gw)
    expect_allow(trail, "GetObject", LAB, key, lab)


def test_sigv2_header_is_attributed(boto, up: MotoServer, trail: Trail, keys, uid: str) -> None:
    """`Authorization: AWS AKID:sig` (boto3 signature_version "s3"): the lab key is allowed on
    the lab bucket, an unknown key is denied."""
    lab = keys["lab"]
    out = boto(lab, signature_version="s3").list_objects(Bucket=LAB, Prefix=uid)
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 200
    recs = up.records()
    assert len(recs) == 1 and (recs[0].header("authorization") or "").startswith(f"AWS {lab.id}:"), \
        summarize_upstream(recs)
    expect_allow(trail, "ListObjects", LAB, None, lab)

    up.reset_recording()
    err = client_error(lambda: boto(keys["unknown"], signature_version="s3").list_objects(Bucket=LAB, Prefix=uid))
    assert_boto_denied(err)
    assert_nothing_upstream(up)
    expect_deny(trail, "ListObjects", LAB)


# ---------------------------------------------------------------------------------------------
# Denials: never upstream, S3's own error, on record
# ---------------------------------------------------------------------------------------------

# name → (access key, argv builder (uid → argv), S3 operation the gateway sees first,
#         bucket and key of the decision, how the CLI shows it: "AccessDenied" or "head")
DENIED_CLI: Dict[str, Any] = {
    "raw-cp-download": ("lab", lambda u: ["s3", "cp", f"s3://{RAW}/x", "./x"], "HeadObject", RAW, "x", "head"),
    "raw-ls": ("lab", lambda u: ["s3", "ls", f"s3://{RAW}/"], "ListObjectsV2", RAW, None, "AccessDenied"),
    "raw-cp-to-lab": ("lab", lambda u: ["s3", "cp", f"s3://{RAW}/x", f"s3://{LAB}/{u}/x"], "HeadObject", RAW, "x",
                      "head"),
    "raw-get-object": ("lab", lambda u: ["s3api", "get-object", "--bucket", RAW, "--key", "x", "./x"], "GetObject",
                       RAW, "x", "AccessDenied"),
    "raw-copy-object-to-lab": ("lab", lambda u: ["s3api", "copy-object", "--copy-source", f"{RAW}/x",
                                                 "--bucket", LAB, "--key", f"{u}/x"],
                               "CopyObject", LAB, "{u}/x", "AccessDenied"),
    "lab-delete-lifecycle": ("lab", lambda u: ["s3api", "delete-bucket-lifecycle", "--bucket", LAB],
                             "DeleteBucketLifecycle", LAB, None, "AccessDenied"),
    "prod-output-put-with-lab-key": ("lab", lambda u: ["s3", "cp", "./payload.json", f"s3://{PROD_OUT}/{u}.json"],
                                     "PutObject", PROD_OUT, "{u}.json", "AccessDenied"),
    "lab-put-object-locked": ("lab", lambda u: ["s3api", "put-object", "--bucket", LAB, "--key", f"{u}/locked",
                                                "--body", "./payload.json", "--object-lock-mode", "COMPLIANCE",
                                                "--object-lock-retain-until-date", "2099-01-01T00:00:00Z"],
                              "PutObject", LAB, "{u}/locked", "AccessDenied"),
    "unknown-key-lab-ls": ("unknown", lambda u: ["s3", "ls", f"s3://{LAB}/"], "ListObjectsV2", LAB, None,
                           "AccessDenied"),
    "unknown-bucket-ls": ("lab", lambda u: ["s3", "ls", f"s3://{UNLISTED}/"], "ListObjectsV2", UNLISTED, None,
                          "AccessDenied"),
    "unknown-bucket-get": ("lab", lambda u: ["s3api", "get-object", "--bucket", UNLISTED, "--key", "y", "./y"],
                           "GetObject", UNLISTED, "y", "AccessDenied"),
}
# Denials whose rule must come from the bucket rules (`buckets.…`).
BUCKET_RULE_CASES = {"raw-cp-download", "raw-ls", "raw-cp-to-lab", "raw-get-object", "raw-copy-object-to-lab",
                     "lab-delete-lifecycle", "prod-output-put-with-lab-key", "lab-put-object-locked"}


@pytest.mark.parametrize("case", list(DENIED_CLI))
def test_cli_denied(case: str, aws: AwsCli, up: MotoServer, trail: Trail, keys, uid: str, tmp_path: Path) -> None:
    key_name, argv, operation, bucket, obj, shown = DENIED_CLI[case]
    key = keys[key_name]
    (tmp_path / "payload.json").write_text('{"not": "allowed"}\n')
    res = aws.run(argv(uid), key, cwd=tmp_path)
    if shown == "head":
        assert_cli_head_denied(res)
    else:
        assert_cli_access_denied(res, operation)
    assert_nothing_upstream(up)
    rec = expect_deny(trail, operation, bucket, obj.format(u=uid) if obj else None, key,
                      rule_prefix="buckets." if case in BUCKET_RULE_CASES else None)
    if case == "raw-copy-object-to-lab":
        assert RAW in str(dig(rec, "asset.copy_source") or ""), f"copy_source: {rec.get('asset')}"
    if case == "raw-cp-to-lab" or case == "raw-copy-object-to-lab":
        assert not object_exists(up, LAB, f"{uid}/x"), "the raw object was copied into the lab bucket"
    if case == "lab-delete-lifecycle":
        assert lifecycle_days(up, LAB) == [30], "the lab bucket's lifecycle changed"
    if case == "lab-put-object-locked":
        assert not object_exists(up, LAB, f"{uid}/locked"), "the locked object was written"
    for local in ("x", "y"):
        assert not (tmp_path / local).exists() or (tmp_path / local).stat().st_size == 0, \
            f"the denied download wrote {local}"


@pytest.mark.parametrize("sig", ["s3v4", "s3"])
def test_raw_presigned_get_denied(sig: str, aws: AwsCli, boto, ca: Path, up: MotoServer, trail: Trail,
                                  keys) -> None:
    """A presigned GET of the raw bucket, made with the lab key: SigV4 query (boto3, s3v4) and
    SigV2 query (`aws s3 presign`, which signs SigV2 by default)."""
    lab = keys["lab"]
    if sig == "s3":
        res = aws.run(["s3", "presign", f"s3://{RAW}/x", "--expires-in", "600"], lab)
        assert res.returncode == 0, str(res)
        url = res.stdout.strip()
        assert "AWSAccessKeyId=" in url and "Signature=" in url, f"the CLI no longer presigns SigV2: {url}"
    else:
        url = boto(lab, signature_version="s3v4").generate_presigned_url(
            "get_object", Params={"Bucket": RAW, "Key": "x"}, ExpiresIn=600)
        assert "X-Amz-Credential=" in url, url
    status, headers, body = s3harness.http_get(url, ca)
    assert b"raw,row" not in body, "the raw object was served"
    assert_xml_denial(status, headers, body)
    assert_nothing_upstream(up)
    expect_deny(trail, "GetObject", RAW, "x", lab, rule_prefix="buckets.")


def test_lab_lifecycle_and_versioning_rules(boto, up: MotoServer, trail: Trail, keys) -> None:
    """Retention: a lifecycle that keeps objects longer than retention_days, or expires only
    part of the bucket or only its current objects, is denied; one expiring every object and
    every noncurrent version within it is forwarded; versioning cannot be suspended."""
    lab = keys["lab"]
    c = boto(lab)
    try:
        err = client_error(lambda: c.put_bucket_lifecycle_configuration(
            Bucket=LAB, LifecycleConfiguration=lifecycle(s3harness.LAB_RETENTION_DAYS * 4)))
        assert_boto_denied(err)
        assert_nothing_upstream(up)
        expect_deny(trail, "PutBucketLifecycleConfiguration", LAB, None, lab, rule_prefix="buckets.")
        assert lifecycle_days(up, LAB) == [30]

        # Within the retention, but for part of the bucket only, or for current objects only.
        partial = lifecycle(30, "tmp-only")
        partial["Rules"][0]["Filter"] = {"Prefix": "tmp/"}
        current_only = lifecycle(30, "current-only")
        del current_only["Rules"][0]["NoncurrentVersionExpiration"]
        for config in (partial, current_only):
            err = client_error(lambda: c.put_bucket_lifecycle_configuration(Bucket=LAB, LifecycleConfiguration=config))
            assert_boto_denied(err)
            assert "(rule buckets.lab_retention)" in err["message"], err
            assert_nothing_upstream(up)
        assert lifecycle_days(up, LAB) == [30]

        err = client_error(lambda: c.put_bucket_versioning(Bucket=LAB,
                                                           VersioningConfiguration={"Status": "Suspended"}))
        assert_boto_denied(err)
        assert_nothing_upstream(up)
        expect_deny(trail, "PutBucketVersioning", LAB, None, lab, rule_prefix="buckets.")
        assert up.client().get_bucket_versioning(Bucket=LAB).get("Status") == "Enabled"

        c.put_bucket_lifecycle_configuration(Bucket=LAB, LifecycleConfiguration=lifecycle(60))
        puts = [r for r in up.records() if r.method == "PUT" and r.query == "lifecycle"]
        assert len(puts) == 1, summarize_upstream(up.records())
        assert lifecycle_days(up, LAB) == [60]
        expect_allow(trail, "PutBucketLifecycleConfiguration", LAB, None, lab)
    finally:
        up.client().put_bucket_lifecycle_configuration(Bucket=LAB, LifecycleConfiguration=lifecycle(30))


def test_prod_output_written_by_prod_key_only(aws: AwsCli, boto, up: MotoServer, trail: Trail, keys, uid: str,
                                              tmp_path: Path) -> None:
    lab, prod = keys["lab"], keys["prod"]
    payload = tmp_path / "scores.json"
    payload.write_bytes(b'{"model": "m-1", "score": 0.93}\n')
    dest = f"s3://{PROD_OUT}/{uid}/scores.json"

    res = aws.run(["s3", "cp", str(payload), dest], lab)
    assert_cli_access_denied(res, "PutObject")
    assert_nothing_upstream(up)
    expect_deny(trail, "PutObject", PROD_OUT, f"{uid}/scores.json", lab, rule_prefix="buckets.")
    assert not object_exists(up, PROD_OUT, f"{uid}/scores.json")

    res = aws.run(["s3", "cp", str(payload), dest], prod)
    assert res.returncode == 0, str(res)
    puts = [r for r in up.records() if r.method == "PUT"]
    assert len(puts) == 1 and puts[0].raw_path == f"/{PROD_OUT}/{uid}/scores.json", summarize_upstream(up.records())
    assert up.client().get_object(Bucket=PROD_OUT, Key=f"{uid}/scores.json")["Body"].read() == payload.read_bytes()
    expect_allow(trail, "PutObject", PROD_OUT, f"{uid}/scores.json", prod)

    # Reads: the prod service principal may, the lab one may not.
    assert boto(prod).get_object(Bucket=PROD_OUT, Key=f"{uid}/scores.json")["Body"].read() == payload.read_bytes()
    up.reset_recording()
    assert_boto_denied(client_error(lambda: boto(lab).get_object(Bucket=PROD_OUT, Key=f"{uid}/scores.json")))
    assert_nothing_upstream(up)
    expect_deny(trail, "GetObject", PROD_OUT, f"{uid}/scores.json", lab, rule_prefix="buckets.")


def test_temporary_credentials_of_no_configured_key_are_denied(boto, up: MotoServer, trail: Trail, keys,
                                                               uid: str) -> None:
    temp = keys["temp"]
    err = client_error(lambda: boto(temp).put_object(Bucket=LAB, Key=f"{uid}/t.txt", Body=b"t"))
    assert_boto_denied(err)
    assert_nothing_upstream(up)
    expect_deny(trail, "PutObject", LAB, f"{uid}/t.txt")


def test_cli_public_grants_are_refused_and_never_reach_the_upstream(aws: AwsCli, boto, up: MotoServer,
                                                                     trail: Trail, keys, uid: str,
                                                                     tmp_path: Path) -> None:
    """`aws s3 cp --acl public-read` and `aws s3api put-object-acl --acl public-read` would make a
    lab object readable by anyone straight from S3: refused in S3's XML shape naming
    buckets.public_grant, recorded, never forwarded. boto3's grant to AllUsers too."""
    lab = keys["lab"]
    src = tmp_path / "f.csv"
    src.write_bytes(b"lab\n")
    key = f"{uid}/f.csv"
    up.reset_recording()
    res = aws.run(["s3", "cp", str(src), f"s3://{LAB}/{key}", "--acl", "public-read"], lab, cwd=tmp_path)
    assert_cli_access_denied(res, "PutObject")
    assert "(rule buckets.public_grant)" in res.stderr, str(res)
    res = aws.run(["s3api", "put-object-acl", "--bucket", LAB, "--key", key, "--acl", "public-read"], lab)
    assert_cli_access_denied(res, "PutObjectAcl")
    assert "(rule buckets.public_grant)" in res.stderr, str(res)
    err = client_error(lambda: boto(lab).put_object(
        Bucket=LAB, Key=f"{uid}/g.csv", Body=b"x", GrantRead='uri="http://acs.amazonaws.com/groups/global/AllUsers"'))
    assert_boto_denied(err)
    assert_nothing_upstream(up)
    for operation in ("PutObject", "PutObjectAcl"):
        expect_deny(trail, operation, LAB, key, lab, rule_prefix="buckets.public_grant")
    # An owner-only ACL passes.
    res = aws.run(["s3", "cp", str(src), f"s3://{LAB}/{key}", "--acl", "bucket-owner-full-control"], lab,
                  cwd=tmp_path)
    assert res.returncode == 0, str(res)


# ---------------------------------------------------------------------------------------------
# The raw bucket under an approved exception
# ---------------------------------------------------------------------------------------------

def test_cli_copies_a_raw_object_under_a_read_only_exception(aws: AwsCli, gw: Gateway, ca: Path, up: MotoServer,
                                                             trail: Trail, keys, minter: TokenMinter,
                                                             gateway_binary: Path, tmp_path: Path) -> None:
    """`aws s3 cp s3://raw/landing/… .` under an approved `--ops read` exception, requested and
    approved with `gatehouse exceptions`: the CLI's first call, HeadObject, is let through as
    well as its GetObject. `read` is neither `list` nor another prefix."""
    lab = keys["lab"]
    key = "landing/2026/11/27/part-0000.csv"
    cp = ["s3", "cp", f"s3://{RAW}/{key}", "./part.csv"]
    assert_cli_head_denied(aws.run(cp, lab, cwd=tmp_path))

    workflow = s3harness.ExceptionsCli(gateway_binary, gw, ca, tmp_path / "approver-home")
    res = workflow.run(minter.mint("alice@bank.example"), "request", "--kind", "raw-bucket",
                       "--subject", str(lab.principal), "--bucket", RAW, "--prefix", "landing/", "--ops", "read",
                       "--reason", "reconcile the landing feed", "--ticket", "CHG-14", "--duration", "1h")
    assert res.returncode == 0, res.stderr
    exception = res.stdout.strip().splitlines()[-1]
    approvers = [minter.mint(who, groups=[s3harness.EXCEPTION_APPROVERS])
                 for who in ("carol@bank.example", "erin@bank.example")]
    try:
        for approver in approvers:  # raw data needs two
            res = workflow.run(approver, "approve", exception, "--comment", "checked with the data owner")
            assert res.returncode == 0, res.stderr
        up.reset_recording()
        res = aws.run(cp, lab, cwd=tmp_path)
        assert res.returncode == 0, str(res)
        assert (tmp_path / "part.csv").read_bytes() == b"raw\n"
        assert [(r.method, r.raw_path) for r in up.records()] == [("HEAD", f"/{RAW}/{key}"), ("GET", f"/{RAW}/{key}")], \
            summarize_upstream(up.records())
        for operation in ("HeadObject", "GetObject"):
            (rec,) = expect_allow(trail, operation, RAW, key, lab)
            assert dig(rec, "decision.exception") == exception, s3_summary([rec])

        up.reset_recording()
        assert_cli_access_denied(aws.run(["s3", "ls", f"s3://{RAW}/landing/"], lab), "ListObjectsV2")
        assert_cli_head_denied(aws.run(["s3", "cp", f"s3://{RAW}/x", "./x"], lab, cwd=tmp_path))
        assert_nothing_upstream(up)
        assert not (tmp_path / "x").exists()
    finally:
        res = workflow.run(approvers[0], "revoke", exception, "--comment", "feed reconciled")
        assert res.returncode == 0, res.stderr


def test_cli_rm_recursive_under_a_write_exception_deletes_per_key(aws: AwsCli, boto, gw: Gateway, ca: Path,
                                                                   up: MotoServer, trail: Trail, keys,
                                                                   minter: TokenMinter, gateway_binary: Path,
                                                                   tmp_path: Path, uid: str) -> None:
    """boto3's `delete_objects` under an approved `--ops list,write` exception for a prefix: the
    gateway decides on every key of its body (all under the prefix: let through, each key
    recorded, the body still verifying its Content-MD5 / checksum at moto), and `aws s3 rm
    --recursive` of the prefix works. A `delete_objects` naming one key outside the prefix is
    refused whole and never reaches moto; both keys stay."""
    lab = keys["lab"]
    prefix = f"landing/{uid}/"
    names = [f"{prefix}a.csv", f"{prefix}b/c d.csv", f"{prefix}e&f.csv"]
    direct = up.client()
    for name in names:
        direct.put_object(Bucket=RAW, Key=name, Body=b"raw\n")
    direct.put_object(Bucket=RAW, Key=f"pii/{uid}.csv", Body=b"pii\n")

    workflow = s3harness.ExceptionsCli(gateway_binary, gw, ca, tmp_path / "approver-home")
    res = workflow.run(minter.mint("alice@bank.example"), "request", "--kind", "raw-bucket",
                       "--subject", str(lab.principal), "--bucket", RAW, "--prefix", prefix, "--ops", "list,write",
                       "--reason", "clear a bad landing", "--ticket", "CHG-15", "--duration", "1h")
    assert res.returncode == 0, res.stderr
    exception = res.stdout.strip().splitlines()[-1]
    approvers = [minter.mint(who, groups=[s3harness.EXCEPTION_APPROVERS])
                 for who in ("carol@bank.example", "erin@bank.example")]
    try:
        for approver in approvers:
            res = workflow.run(approver, "approve", exception, "--comment", "ok")
            assert res.returncode == 0, res.stderr
        up.reset_recording()
        batch = {"Objects": [{"Key": n} for n in names]}
        out = boto(lab).delete_objects(Bucket=RAW, Delete=batch)
        assert sorted(d["Key"] for d in out.get("Deleted", [])) == sorted(names), out
        assert not any(s3harness.object_exists(up, RAW, n) for n in names)
        (rec,) = expect_allow(trail, "DeleteObjects", RAW, None, lab)
        assert dig(rec, "decision.exception") == exception, s3_summary([rec])
        assert dig(rec, "asset.keys") == names, s3_summary([rec])

        # The AWS CLI (v1 deletes key by key; v2 in batches) under the same exception.
        for name in names:
            direct.put_object(Bucket=RAW, Key=name, Body=b"raw\n")
        res = aws.run(["s3", "rm", "--recursive", f"s3://{RAW}/{prefix}"], lab, cwd=tmp_path)
        assert res.returncode == 0, str(res)
        assert not any(s3harness.object_exists(up, RAW, n) for n in names)

        direct.put_object(Bucket=RAW, Key=names[0], Body=b"raw\n")
        up.reset_recording()
        batch = {"Objects": [{"Key": names[0]}, {"Key": f"pii/{uid}.csv"}]}
        err = client_error(lambda: boto(lab).delete_objects(Bucket=RAW, Delete=batch))
        assert_boto_denied(err)
        assert_nothing_upstream(up)
        assert s3harness.object_exists(up, RAW, names[0]) and s3harness.object_exists(up, RAW, f"pii/{uid}.csv")
        rec = expect_deny(trail, "DeleteObjects", RAW, None, lab, rule_prefix="buckets.raw_blocked")
        assert dig(rec, "asset.keys") == [names[0], f"pii/{uid}.csv"], s3_summary([rec])
    finally:
        res = workflow.run(approvers[0], "revoke", exception, "--comment", "done")
        assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------------------------
# Attribution with workspace networks
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def networked_gateways(tmp_path_factory: pytest.TempPathFactory, gateway_binary: Path, certs: Path,
                       minter: TokenMinter, moto: MotoServer, keys: Dict[str, AccessKey]) -> Iterable[Dict[str, Gateway]]:
    """The module's configuration with networks for the workspaces: the clients here (loopback)
    are on prod-analytics' compute network, and never on prod's."""
    with s3harness.gateways_http_and_tls(tmp_path_factory, "s3-networks", binary=gateway_binary, certs=certs,
                                         jwks=minter.jwks_path, s3_upstream=moto.url, keys=keys,
                                         source_cidrs={"prod-analytics": ["127.0.0.0/8"],
                                                       "prod": ["192.0.2.0/24"]}) as gws:
        yield gws


def test_boto3_attribution_by_key_and_network(networked_gateways: Dict[str, Gateway], transport: str, ca: Path,
                                              up: MotoServer, keys, uid: str, s3_process_env: Path) -> None:
    """From prod-analytics' network: its own key and its compute's temporary credentials (an
    STS key with a session token, as an instance profile gives) are let in; an unmapped
    long-term key is refused, not taken for the compute; prod's key, which may read the
    production output, is refused here (reading it from a laptop is a download)."""
    gw = networked_gateways[transport]
    trail = Trail(gw)
    client = lambda key: s3_client(gw.url, key, ca)  # noqa: E731
    client(keys["lab"]).put_object(Bucket=LAB, Key=f"{uid}/own.txt", Body=b"own")
    client(keys["temp"]).put_object(Bucket=LAB, Key=f"{uid}/temp.txt", Body=b"temp")
    assert [r.method for r in up.records()] == ["PUT", "PUT"], summarize_upstream(up.records())
    expect_allow(trail, "PutObject", LAB, f"{uid}/own.txt", keys["lab"])
    (rec,) = expect_allow(trail, "PutObject", LAB, f"{uid}/temp.txt")
    assert (dig(rec, "principal.id"), dig(rec, "principal.auth"), rec.get("workspace")) == \
        ("compute:prod-analytics", "network", "prod-analytics"), s3_summary([rec])

    up.reset_recording()
    for key, bucket, obj, rule in (
        (keys["unknown"], LAB, f"{uid}/own.txt", "identity.s3_unknown_key"),
        (keys["prod"], PROD_OUT, "scores/latest.json", "identity.s3_wrong_network"),
    ):
        err = client_error(lambda: client(key).get_object(Bucket=bucket, Key=obj))
        assert_boto_denied(err)
        assert f"(rule {rule})" in err["message"], err
        assert_nothing_upstream(up)
        rec = expect_deny(trail, "GetObject", bucket, obj, rule_prefix=rule)
        assert dig(rec, "credential.access_key") == key.id, s3_summary([rec])


# ---------------------------------------------------------------------------------------------
# The trail: S3 operation names, and no signature or secret
# ---------------------------------------------------------------------------------------------

def test_trail_names_s3_operations_and_holds_no_signatures(aws: AwsCli, boto, gw: Gateway, ca: Path,
                                                           up: MotoServer, trail: Trail, keys, uid: str) -> None:
    lab, temp = keys["lab"], keys["temp"]
    signatures: List[str] = []

    # Presigned SigV4 with a session token (temporary credentials) and SigV2, both denied.
    v4 = boto(temp, signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": RAW, "Key": "x"}, ExpiresIn=600)
    q4 = parse_qs(urlsplit(v4).query)
    assert "X-Amz-Security-Token" in q4, v4.split("?")[0]
    signatures += q4["X-Amz-Signature"]
    v2 = boto(lab, signature_version="s3").generate_presigned_url(
        "get_object", Params={"Bucket": RAW, "Key": "x"}, ExpiresIn=600)
    signatures += parse_qs(urlsplit(v2).query)["Signature"]
    for url in (v4, v2):
        status, headers, body = s3harness.http_get(url, ca)
        assert_xml_denial(status, headers, body)

    # Header-signed: one allowed, one denied (raw), one with a session token.
    sent: List[str] = []
    def capture(request: Any, **_: Any) -> None:  # noqa: E306
        a = request.headers.get("Authorization")
        sent.append(a.decode() if isinstance(a, bytes) else str(a))
    c_lab, c_temp = boto(lab), boto(temp)
    for c in (c_lab, c_temp):
        c.meta.events.register("before-send.s3.*", capture)
    c_lab.put_object(Bucket=LAB, Key=f"{uid}/sig.txt", Body=b"sig")
    assert_boto_denied(client_error(lambda: c_lab.get_object(Bucket=RAW, Key="x")))
    assert_boto_denied(client_error(lambda: c_temp.put_object(Bucket=LAB, Key=f"{uid}/sig.txt", Body=b"sig")))
    assert_boto_denied(client_error(lambda: c_temp.get_object(Bucket=RAW, Key="x")))
    assert len(sent) == 4, len(sent)
    for a in sent:
        m = re.search(r"Signature=([0-9a-f]{64})", a) or re.search(r"^AWS [^:]+:(\S+)$", a)
        assert m, "unexpected Authorization shape"
        signatures.append(m.group(1))
    res = aws.run(["s3api", "delete-bucket-lifecycle", "--bucket", LAB], lab)
    assert_cli_access_denied(res, "DeleteBucketLifecycle")

    recs = trail.wait(lambda rs: len(decisions(rs, effect="deny")) >= 5)
    denies = decisions(recs, effect="deny")
    assert len(denies) >= 5, s3_summary(recs)
    names = {dig(r, "action.name") for r in decisions(recs)}
    assert names <= S3_OPERATIONS, f"not S3 operation names: {names - S3_OPERATIONS}"
    assert {"GetObject", "PutObject", "DeleteBucketLifecycle"} <= names, names
    for r in decisions(recs):
        assert dig(r, "asset.kind") == "s3" and dig(r, "asset.bucket") in (LAB, RAW), s3_summary([r])

    # Nothing secret in the trail files, nor in the gateway's log.
    texts = {"trail": "".join(p.read_text(errors="replace") for p in sorted(gw.audit_dir.rglob("*.jsonl"))),
             "gateway log": gw.log_tail(10 ** 8)}
    secrets = {"lab secret key": lab.secret, "temp secret key": temp.secret, "session token": temp.session_token,
               "session token (url-encoded)": str(temp.session_token).replace("/", "%2F").replace("+", "%2B")}
    for i, s in enumerate(signatures):
        secrets[f"signature #{i}"] = s
        secrets[f"signature #{i} (url-encoded)"] = s.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D")
    for where, text in texts.items():
        leaked = [name for name, value in secrets.items() if value and value in text]
        assert not leaked, f"the {where} holds: {leaked}"
        unmasked = re.findall(r"(?i)(x-amz-signature|x-amz-security-token|[?&]signature)=(?!\*)[^&\"\s]{8,}", text)
        assert not unmasked, f"the {where} holds unmasked {[u[0] for u in unmasked]}"


# ---------------------------------------------------------------------------------------------
# The observation itself: moto's recorder sees each kind of request the denial tests send
# ---------------------------------------------------------------------------------------------

def test_recorder_sees_every_request_kind(moto: MotoServer, keys, ca: Path, tmp_path: Path,
                                          s3_process_env: Path) -> None:
    """Each denied request of this module, sent straight to moto, shows up in the recording. So
    an empty recording after a denial means the gateway forwarded nothing (and not that moto
    failed to record a request it could not route)."""
    uid = "ctl-" + uuid.uuid4().hex[:10]
    cli = AwsCli(moto.url, tmp_path / "aws-home", ca)
    (tmp_path / "payload.json").write_text("{}\n")
    missing = []
    try:
        for case, (key_name, argv, operation, bucket, _, _) in DENIED_CLI.items():
            moto.reset_recording()
            res = cli.run(argv(uid), keys[key_name], cwd=tmp_path)
            recs = moto.records()
            if not any(r.bucket == bucket for r in recs):
                missing.append(f"{case}: rc={res.returncode}, recorded {summarize_upstream(recs)}")
        for sig in ("s3v4", "s3"):
            moto.reset_recording()
            url = s3_client(moto.url, keys["temp"] if sig == "s3v4" else keys["lab"], None,
                            signature_version=sig).generate_presigned_url(
                "get_object", Params={"Bucket": RAW, "Key": "x"}, ExpiresIn=600)
            status, _, body = s3harness.http_get(url, None)
            recs = moto.records()
            ok = len(recs) == 1 and recs[0].bucket == RAW and recs[0].query == urlsplit(url).query
            if not (status == 200 and ok):
                missing.append(f"presigned {sig}: status {status}, recorded {summarize_upstream(recs)}")
        moto.reset_recording()
        s3_client(moto.url, keys["lab"], None, signature_version="s3").list_objects(Bucket=LAB, Prefix=uid)
        if not any((r.header("authorization") or "").startswith("AWS ") for r in moto.records()):
            missing.append(f"SigV2 header: recorded {summarize_upstream(moto.records())}")
    finally:
        c = moto.client()
        c.put_bucket_lifecycle_configuration(Bucket=LAB, LifecycleConfiguration=lifecycle(30))
        for b, k in ((LAB, f"{uid}/x"), (PROD_OUT, f"{uid}.json")):
            c.delete_object(Bucket=b, Key=k)
        moto.reset_recording()
    assert not missing, "moto's recorder missed:\n" + "\n".join(missing)
