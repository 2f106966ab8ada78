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
bash "$here/venv.sh"

GATEHOUSE_BIN="${GATEHOUSE_BIN:-$root/target/debug/gatehouse}"
export GATEHOUSE_BIN="$(realpath -m -- "$GATEHOUSE_BIN")"  # relative to the caller's directory
if [[ ! -x "$GATEHOUSE_BIN" ]]; then
    echo "run.sh: gateway binary $GATEHOUSE_BIN not found; run 'cargo build' first" >&2
    exit 2
fi

cd "$root"
exec "$venv/bin/python" -m pytest tests/clients -q -rs -p no:cacheprovider "$@"
