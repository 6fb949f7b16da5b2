"""A throwaway system user for the tests of run_as_user, and a folder it can reach.

`task_user()` creates the user `raftflow-test-task` (useradd --system
--no-create-home) if it is missing; a test that needs it is skipped, saying why,
when the tests do not run as root (only root may start processes as another user).
`reachable_dir()` is a fresh folder under the system temp dir that the user can pass
through (pytest's tmp_path is root's alone, 0700), removed afterwards.

`task_python(user)` is a Python the user can run with this checkout's raftflow:
sys.executable if the user can reach it; else (a pyenv under /root, 0700) a venv,
made once per checkout under the temp dir, of the system's python3.X of the same
version, that imports this checkout's site-packages (and so its editable raftflow)
through a .pth line. When the user cannot reach the checkout either (a clone in a
0700 folder, such as `mktemp -d` makes), the venv holds a copy of the site-packages
(made once) and of the checkout's raftflow and raftflow_cli (made again by each test
session, so it is the code under test). Nothing on the machine is loosened for it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import raftflow
import raftflow_cli
from raftflow.config import TaskUser
from raftflow.worker.worker import unreachable

NAME = "raftflow-test-task"
_FRESH: set[Path] = set()     # venvs whose raftflow copy this test session made


def task_user() -> TaskUser:
    if os.geteuid() != 0:
        pytest.skip("run_as_user needs the tests to run as root (only root starts processes as another user)")
    try:
        return TaskUser.named(NAME)
    except ValueError:
        pass
    if shutil.which("useradd") is None:
        pytest.skip(f"no user {NAME} and no useradd to create it")
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME],
                          capture_output=True, text=True)
    if made.returncode not in (0, 9):   # 9: made meanwhile by another test run
        pytest.fail(f"useradd {NAME} failed: {made.stderr}")
    return TaskUser.named(NAME)


@contextmanager
def reachable_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="raftflow-test-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def task_python(user: TaskUser) -> str:
    if unreachable(Path(sys.executable).resolve(), user) is None:
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = Path("/usr/bin") / version
    if not system.exists() or unreachable(system.resolve(), user) is not None:
        pytest.skip(f"{user.name} cannot run {sys.executable} and there is no {system} it can run")
    site_packages = sysconfig.get_paths()["purelib"]
    tag = hashlib.sha256(site_packages.encode()).hexdigest()[:10]
    venv = Path(tempfile.gettempdir()) / f"raftflow-test-python-{tag}"
    python = venv / "bin" / "python"
    if os.path.lexists(venv):   # a predictable name in a shared folder: it must be this user's own
        st = os.lstat(venv)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            pytest.fail(f"{venv} is not a folder of this user's that only it can write: remove it")
    packages = {"raftflow": Path(raftflow.__file__).resolve().parent,     # (the nodes run raftflow_cli.main)
                "raftflow_cli": Path(raftflow_cli.__file__).resolve().parent}
    copied = unreachable(Path(site_packages), user) is not None or \
        any(unreachable(path, user) is not None for path in packages.values())
    if not python.exists():
        building = Path(tempfile.mkdtemp(prefix=f"{venv.name}-", dir=venv.parent))
        shutil.rmtree(building)
        subprocess.run([str(system), "-m", "venv", "--without-pip", str(building)], check=True, capture_output=True)
        own = building / "lib" / version / "site-packages"
        if copied:    # (the editable install's finder points into the checkout: left out)
            shutil.copytree(site_packages, own, dirs_exist_ok=True, symlinks=True,
                            ignore=shutil.ignore_patterns("__editable__*", "mypy*", *packages))
        else:
            (own / "raftflow-checkout.pth").write_text(f"import site; site.addsitedir({site_packages!r})\n")
        os.chmod(building, 0o755)
        try:
            building.rename(venv)
        except OSError:   # made meanwhile by another run
            shutil.rmtree(building, ignore_errors=True)
    if copied and venv not in _FRESH:
        for name, path in packages.items():
            _fresh_copy(path, venv / "lib" / version / "site-packages" / name)
        _FRESH.add(venv)
    probe = subprocess.run([str(python), "-c", "import raftflow.worker.renderer, jinja2"], capture_output=True,
                           text=True, user=user.uid, group=user.gid, extra_groups=[], cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"{python} (for {user.name}) cannot import raftflow: {probe.stderr.strip()[-300:]}")
    return str(python)


def _fresh_copy(source: Path, target: Path) -> None:
    """Replace `target` with a copy of `source` (readable by all, like the venv)."""
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
    shutil.copytree(source, staging / target.name, ignore=shutil.ignore_patterns("__pycache__"))
    os.chmod(staging, 0o755)
    if target.exists():
        shutil.rmtree(target)
    (staging / target.name).rename(target)
    shutil.rmtree(staging, ignore_errors=True)
