"""`pip install raftflow` installs the node and the CLI and nothing else: the development
harnesses (local clusters, the sshd stand-in, bench, chaos, protogen) stay in tools/raftflow_dev.

Checked from pyproject.toml's explicit package list (what setuptools puts in the wheel)
and the files in those package directories, without building a wheel.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESSES = ("attempts", "bench", "bench_history", "bench_scale", "chaos", "compat", "local", "protogen", "sshd", "up")


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _installed_dirs() -> dict[str, Path]:
    """Each installed package name -> the directory its modules come from."""
    config = _setuptools()
    roots = config["package-dir"]
    dirs = {}
    for package in config["packages"]:
        top, _, rest = package.partition(".")
        dirs[package] = ROOT / roots[top] / rest.replace(".", "/")
    return dirs


def test_only_the_node_and_the_cli_are_installed():
    config = _setuptools()
    assert config["package-dir"] == {"raftflow": "node", "raftflow_cli": "tools/cli"}
    assert "find" not in str(config.get("packages")), "packages are listed, never discovered"
    for package in config["packages"]:
        assert package in ("raftflow", "raftflow_cli") or package.startswith(("raftflow.", "raftflow_cli.")), package
    for package, directory in _installed_dirs().items():
        assert (directory / "__init__.py").is_file(), f"{package}: no {directory}/__init__.py"


def test_the_cli_package_holds_no_dev_harness():
    cli = {p.stem for p in (ROOT / "tools" / "cli").glob("*.py")}
    assert {"main", "client", "loader"} <= cli
    assert cli.isdisjoint(HARNESSES), sorted(cli & set(HARNESSES))
    assert {p.stem for p in (ROOT / "tools" / "raftflow_dev").glob("*.py")} >= set(HARNESSES)


def test_no_installed_module_imports_the_dev_harnesses():
    offenders = []
    for directory in _installed_dirs().values():
        for path in directory.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str)
                         else [])   # a string too: `python -m raftflow_dev.up` in a subprocess
                offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                              if name.split(".")[0] == "raftflow_dev"]
    assert offenders == []


def test_the_node_and_the_cli_turn_grpc_fork_handlers_off_before_grpc_starts() -> None:
    """A task process forked from the node aborted in gRPC's fork handler under load
    (SIGABRT, epoll EBADF): both entry points set GRPC_ENABLE_FORK_SUPPORT=false first."""
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    for module in ("raftflow.main", "raftflow_cli.main"):
        code = f"import os, {module}; print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert out.stdout.strip() == "false", (module, out.stderr[-500:])
