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

# install_debian_packages WHY PACKAGE... : install the missing system packages where we
# may (root with apt-get); otherwise say so and carry on (callers say what then skips).
install_debian_packages() {
    local why=$1; shift
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing $* for $why" >&2
        { apt-get update -qq &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } >/dev/null 2>&1 ||
            echo "could not install $*; $why will not work here" >&2
    else
        echo "missing $* (needed for $why); install them as root" >&2
    fi
}

# run_dev MODULE ARGS... : exec a development harness from tools/raftflow_dev (local
# clusters, sshd, bench, chaos), which `pip install raftflow` does not install.
run_dev() { exec "$VENV/bin/python" "$ROOT/tools/run_dev.py" "$@"; }

have_sshd() { command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; }
