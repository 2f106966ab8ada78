"""Runs the stand-in, the gateway on 127.0.0.1:443 and a list of client commands, all inside the
network namespace this process was started in, and writes what happened to a JSON file.

The legacy databricks-cli drops any port from DATABRICKS_HOST and always talks to 443, so its
tests need the gateway on 443; a private namespace (`unshare -n`) gives them one without
touching the machine's own port 443. test_legacy_cli.py starts this as

    unshare -n -- sh -c 'ip link set lo up && exec "$0" "$@"' PYTHON netns_cli.py --spec SPEC

The spec (JSON) names the certificate dir, the JWKS file, the gateway binary, the audit dir, the
stand-in record file, the results file and the commands: {"name", "argv", "cwd", "timeout",
"token_env"}. A command runs with DATABRICKS_TOKEN taken from the environment variable its
`token_env` names, so tokens never appear on a command line or in the spec.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from standin import StandIn  # noqa: E402

TOKEN_ENV_PREFIX = "GH_TEST_TOKEN_"


def _sigterm(*_: Any) -> None:
    raise SystemExit(143)  # run the finally blocks: stop the gateway


def _links() -> List[str]:
    try:
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return [f"error: {e}"]
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def run(spec: Dict[str, Any]) -> Dict[str, Any]:
    results: Dict[str, Any] = {"ok": False, "error": None, "links": _links(), "commands": [], "gateway": {}}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(TOKEN_ENV_PREFIX)}
    gw_env = {k: v for k, v in base_env.items() if not k.startswith("DATABRICKS_")}

    standin = StandIn("127.0.0.1", int(spec.get("standin_port", 8080)), spec["record_file"]).start()
    gw = None
    try:
        audit_dir = Path(spec["audit_dir"])
        audit_dir.mkdir(parents=True, exist_ok=True)
        work = Path(spec["workdir"])
        cfg = harness.write_config(work / "gatehouse-netns.toml", certs=Path(spec["certs"]), jwks=Path(spec["jwks"]),
                                   upstream=standin.url, audit_dir=audit_dir, listen="127.0.0.1:443")
        gw = harness.Gateway(cfg, audit_dir, work / "gatehouse-netns.log", binary=Path(spec["gateway_bin"]),
                             env=gw_env)
        gw.start()
        results["gateway"].update({"data": gw.data_addr, "admin": gw.admin_addr, "tls": gw.tls})
        for cmd in spec["commands"]:
            env = dict(base_env)
            if cmd.get("token_env"):
                env["DATABRICKS_TOKEN"] = os.environ[cmd["token_env"]]
            cwd = Path(cmd["cwd"])
            cwd.mkdir(parents=True, exist_ok=True)
            before = len(standin.requests())
            started = time.monotonic()
            entry: Dict[str, Any] = {"name": cmd["name"], "argv": cmd["argv"], "cwd": str(cwd)}
            try:
                p = subprocess.run(cmd["argv"], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True, timeout=float(cmd.get("timeout", 60)))
                entry.update({"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "timed_out": False})
            except subprocess.TimeoutExpired as e:
                entry.update({"rc": None, "stdout": str(e.stdout or ""), "stderr": str(e.stderr or ""),
                              "timed_out": True})
            entry["elapsed"] = round(time.monotonic() - started, 3)
            entry["records"] = [before, len(standin.requests())]
            results["commands"].append(entry)
        results["ok"] = True
    except BaseException as e:  # reported to the test, which fails with it
        results["error"] = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]
    finally:
        if gw is not None:
            results["gateway"]["exit_code"] = gw.stop()
            results["gateway"]["log_tail"] = gw.log_tail()
        standin.stop()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description="run gateway + stand-in + client commands in this netns")
    ap.add_argument("--spec", required=True)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    spec = json.loads(Path(args.spec).read_text())
    results = run(spec)
    Path(spec["results"]).write_text(json.dumps(results, indent=2))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
