# Sourced by tools/*: make sure .venv exists and holds this project (with EXTRAS).
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
EXTRAS=${EXTRAS:-}
PYTHON_BIN=${PYTHON_BIN:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PYTHON_BIN" -m venv "$VENV"
fi
stamp="$VENV/.raftflow-installed${EXTRAS:+-$EXTRAS}"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing raftflow${EXTRAS:+[$EXTRAS]} into $VENV (first run takes a minute)" >&2
    log="$VENV/install.log"
    if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
           "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$ROOT${EXTRAS:+[$EXTRAS]}"; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "installing raftflow failed; the whole log is in $log" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
