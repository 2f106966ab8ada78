"""Fixtures for the real-client tests: a stand-in upstream, the real `gatehouse` binary in front
of it (TLS with the dev CA), signing keys and tokens, an isolated client environment, and
helpers to read what reached the upstream and what the audit trail recorded.

The gateway binary comes from `GATEHOUSE_BIN` (default: target/debug/gatehouse under the repo
root). These tests never build it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import Gateway, TokenMinter  # noqa: E402
from standin import StandIn  # noqa: E402

# No test may hang: every test gets this hard limit (pytest-timeout) on top of the timeouts
# inside the harness and the clients.
TEST_TIMEOUT = int(os.environ.get("GATEHOUSE_CLIENT_TEST_TIMEOUT", "180"))


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


# ---------------------------------------------------------------------------------------------
# Session-wide pieces
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def gateway_binary() -> Path:
    p = harness.gateway_bin()
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.fail(f"gateway binary {p} is missing: run `cargo build` first or set GATEHOUSE_BIN", pytrace=False)
    return p


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory, gateway_binary: Path) -> Path:
    return harness.make_certs(tmp_path_factory.mktemp("certs"), binary=gateway_binary)


@pytest.fixture(scope="session")
def minter(tmp_path_factory: pytest.TempPathFactory) -> TokenMinter:
    m = TokenMinter()
    m.write_jwks(tmp_path_factory.mktemp("idp") / "jwks.json")
    return m


@pytest.fixture(scope="session")
def _standin_server() -> Iterable[StandIn]:
    s = StandIn().start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def upstream(_standin_server: StandIn) -> StandIn:
    """The stand-in, with an empty request log for this test."""
    _standin_server.clear()
    return _standin_server


@pytest.fixture(scope="session")
def gatehouse(tmp_path_factory: pytest.TempPathFactory, gateway_binary: Path, certs: Path,
              minter: TokenMinter, _standin_server: StandIn) -> Iterable[Gateway]:
    """The real gateway, TLS on 127.0.0.1:<ephemeral>, routing to the stand-in."""
    d = tmp_path_factory.mktemp("gatehouse")
    audit_dir = d / "audit"
    audit_dir.mkdir()
    cfg = harness.write_config(d / "gatehouse.toml", certs=certs, jwks=minter.jwks_path,
                               upstream=_standin_server.url, audit_dir=audit_dir)
    gw = Gateway(cfg, audit_dir, d / "gatehouse.log", binary=gateway_binary,
                 env=harness.client_env(d / "home", None))
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


# ---------------------------------------------------------------------------------------------
# Per-test helpers
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def principal(request: pytest.FixtureRequest) -> str:
    """A subject unique to this test, so its audit records can be told apart."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")
    return f"{name[:60]}@bank.example"


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, certs: Path) -> Path:
    """The SDK reads its configuration from the process environment and ~/.databrickscfg:
    scrub both so a developer's own setup cannot steer it, and trust the dev CA."""
    env = harness.client_env(tmp_path / "home", certs / "ca.crt")
    for k in list(os.environ):
        if k not in env:
            monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return tmp_path / "home"
