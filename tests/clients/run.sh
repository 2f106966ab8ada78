#!/usr/bin/env bash
# Runs the real-client tests (databricks-sdk, legacy databricks-cli; the AWS CLI and boto3 in
# front of moto's server mode) against the gateway binary.
# It does not build the gateway: run `cargo build` first, or point GATEHOUSE_BIN at a binary.
# The virtual environment (.venv at the repo root) is (re)created when requirements.txt changes.
# Extra arguments go to pytest. The exit code is pytest's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"

want="$(sha256sum "$req" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ ! -x "$venv/bin/python" || "$want" != "$have" ]]; then
    echo "run.sh: installing client test requirements into $venv" >&2
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
fi

GATEHOUSE_BIN="${GATEHOUSE_BIN:-$root/target/debug/gatehouse}"
export GATEHOUSE_BIN="$(realpath -m -- "$GATEHOUSE_BIN")"  # relative to the caller's directory
if [[ ! -x "$GATEHOUSE_BIN" ]]; then
    echo "run.sh: gateway binary $GATEHOUSE_BIN not found; run 'cargo build' first" >&2
    exit 2
fi

cd "$root"
exec "$venv/bin/python" -m pytest tests/clients -q -rs -p no:cacheprovider "$@"
