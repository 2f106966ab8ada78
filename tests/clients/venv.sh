#!/usr/bin/env bash
# Creates (or refreshes, when requirements.txt changed) the Python virtual environment with the
# real clients at the repo root: .venv. Used by run.sh, and by scripts/test before `cargo test`
# (the console's browser tests drive the AWS CLI from it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"

want="$(sha256sum "$req" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ ! -x "$venv/bin/python" || "$want" != "$have" ]]; then
    echo "venv.sh: installing client test requirements into $venv" >&2
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
fi
