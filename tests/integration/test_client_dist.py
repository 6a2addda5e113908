"""The client distribution on its own, as a laptop gets it: a fresh venv (no system site packages)
where `pip install ./clients/python` brings httpx, pydantic and click from the package index and
nothing of the server; its `mnist-jobs` lists only the remote commands and drives a live server."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import REPO
from tests.support.settings import settings_env

pytestmark = pytest.mark.slow
SERVER_ONLY = ("torch", "fastapi", "sqlalchemy", "service", "api", "workers", "cli", "uvicorn", "scipy")
REMOTE_COMMANDS = {"submit", "jobs", "workers", "compare"}
SERVER_COMMANDS = {"serve", "worker", "data", "db", "tokens"}
BUILT = ("build", "*.egg-info", "__pycache__")
OFFLINE = ("Could not find a version", "No matching distribution", "Failed to establish a new connection")


def commands(help_text: str) -> set[str]:
    """The names under "Commands:" in Click's help."""
    section = help_text.split("Commands:", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.split()}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("client-only") / "venv"
    # a copy: pip builds in the source folder, and a build/ left in the checkout could carry stale files
    source = shutil.copytree(REPO / "clients" / "python", venv.parent / "src", ignore=shutil.ignore_patterns(*BUILT))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    started = time.monotonic()
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    install = subprocess.run([*pip, str(source)], capture_output=True, text=True, timeout=900, check=False)
    if install.returncode != 0 and any(sign in install.stdout + install.stderr for sign in OFFLINE):
        pytest.skip(f"the package index is not reachable from here: {install.stderr.strip()[-300:]}")
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    size = subprocess.run(["du", "-sh", str(venv)], capture_output=True, text=True, check=True).stdout.split()[0]
    print(f"client-only venv: {size}, installed in {time.monotonic() - started:.1f} s")  # shown with -s
    return venv


def test_the_client_installs_without_the_server_and_lists_only_its_commands(client_venv):
    python = str(client_venv / "bin" / "python")
    probe = f"import importlib.util as u; print([m for m in {SERVER_ONLY!r} if u.find_spec(m)])"
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd="/", check=True, timeout=60)
    assert found.stdout.strip() == "[]", found.stdout
    imported = subprocess.run(
        [python, "-c", "from mnist_jobs_client import Client; from mnist_jobs_client.schemas import JobRead"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    shown = subprocess.run(
        [str(client_venv / "bin" / "mnist-jobs"), "--help"], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert shown.returncode == 0 and commands(shown.stdout) == REMOTE_COMMANDS, shown.stdout
    assert "exit codes" in shown.stdout and not SERVER_COMMANDS & commands(shown.stdout)


def test_the_client_only_cli_submits_waits_and_downloads_by_prefix(client_venv, settings, live_server, tmp_path):
    server = live_server(workers=1)
    env = {**settings_env(settings), "MNIST_JOBS_URL": server.url.removeprefix("http://")}
    cli = str(client_venv / "bin" / "mnist-jobs")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    done = run("submit", "fc", "--wait")
    assert done.returncode == 0 and " succeeded: " in done.stdout, done.stderr
    job_id = done.stdout.split()[1]
    got = run("jobs", "download", job_id[:8], "--format", "checkpoint")
    assert got.returncode == 0, got.stderr
    saved = tmp_path / f"{job_id}-epoch001.pt"
    assert tmp_path / got.stdout.strip() == saved and saved.stat().st_size > 0, "named as the server names it"
    sha256 = server.client.get(f"/v1/jobs/{job_id}").json()["result"]["checkpoints"][-1]["sha256"]
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == sha256
