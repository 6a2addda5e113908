"""The quick start and command-line examples, run as printed against a live server.

Each `mnist-jobs ...` line of the `sh` blocks in the README's "Quick start" and "The experiment in
five commands" and in docs/cli.md runs through bash with the venv's bin folder on PATH, as a user
who followed the quick start runs it. The only changes are the ones a reader makes: an example job
id (`ID`, or hex such as `728f`) becomes a real job's prefix of the same length. A documented
command or flag that stops working fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO
from tests.support.settings import settings_env

pytestmark = pytest.mark.slow

# (file, section title); None: the whole page
SECTIONS = (("README.md", "Quick start"), ("README.md", "The experiment in five commands"), ("docs/cli.md", None))
EXAMPLE_ID = re.compile(r"^(ID|[0-9a-f]{4,32})$")
EXIT_CONFLICT = 7  # the CLI's code for a call that does not fit the job's state (cancel of an ended job)


def section(readme: str, title: str) -> str:
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def documented_commands() -> list[str]:
    """Every `mnist-jobs` command of the sections' sh blocks, comments dropped; a line holding
    several commands side by side (separated by two or more spaces) gives each one."""
    commands: list[str] = []
    for file, title in SECTIONS:
        text = (REPO / file).read_text()
        for block in re.findall(r"```sh\n(.*?)```", text if title is None else section(text, title), flags=re.S):
            for line in block.splitlines():
                code = line.split(" # ", 1)[0].strip()
                if code.startswith("mnist-jobs "):
                    commands += [part.strip() for part in re.split(r"\s{2,}(?=mnist-jobs )", code)]
    return commands


def job_verb(command: str) -> str | None:
    """`show` for `mnist-jobs jobs show 728f ...`: the verb of a command that names an example job id."""
    words = command.split()
    if len(words) > 3 and words[1] == "jobs" and EXAMPLE_ID.match(words[3]):
        return words[2]
    return None


def with_job(command: str, job_id: str) -> str:
    """The command with its example job id replaced by the real job's prefix of the same length
    (`ID`: 8 characters, as `jobs list` shows)."""
    words = command.split()
    words[3] = job_id.replace("-", "")[: 8 if words[3] == "ID" else len(words[3])]
    return " ".join(words)


def test_the_quick_start_and_command_line_examples_work_as_printed(settings, live_server, tmp_path):
    commands = documented_commands()
    assert len(commands) >= 12, commands  # both sections were found and read
    server = live_server(workers=1)
    bin_dir = Path(sys.executable).parent
    env = {**settings_env(settings), "MNIST_JOBS_URL": server.url, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    (tmp_path / "job.json").write_text(json.dumps({"architecture": "fc", "epochs": 1}))

    deleted: list[str] = []
    for command in commands:
        verb = job_verb(command)
        if verb is not None:
            # The examples act on the first job submitted; `delete` on the newest, once it has ended.
            jobs = server.client.get("/v1/jobs").json()["items"]
            assert jobs, f"no job exists before {command!r}: the examples must submit one first"
            job = jobs[0] if verb == "delete" else jobs[-1]
            server.wait_for_status(job["id"], {"succeeded", "failed", "cancelled"})
            deleted += [job["id"]] if verb == "delete" else []
            command = with_job(command, job["id"])
        run = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        expected = {0, EXIT_CONFLICT} if verb == "cancel" else {0}
        assert run.returncode in expected, f"{command!r} exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
        assert "Traceback" not in run.stderr, command

    assert (tmp_path / "cnn.onnx").stat().st_size > 0 and (tmp_path / "cnn.pt").stat().st_size > 0
    assert deleted, "the examples show `jobs delete`"
    assert all(server.client.get(f"/v1/jobs/{job_id}").status_code == 404 for job_id in deleted)


def test_the_quick_start_activation_line_puts_mnist_jobs_on_path():
    """`source .venv/bin/activate` then `mnist-jobs` finds the venv's command (as `make serve` says)."""
    venv = REPO / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve():
        pytest.skip(f"the tests run from {sys.prefix}, not the checkout's .venv that the quick start activates")
    assert "source .venv/bin/activate" in section((REPO / "README.md").read_text(), "Quick start")
    found = subprocess.run(
        ["bash", "-c", "source .venv/bin/activate && command -v mnist-jobs && mnist-jobs --help"],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0] == str(venv / "bin" / "mnist-jobs")
    assert all(command in found.stdout for command in ("serve", "submit", "jobs", "worker")), found.stdout


def test_an_example_id_is_replaced_by_a_prefix_of_its_length():
    job_id = "728fd5c0-aaaa-4bbb-8ccc-0123456789ab"
    assert job_verb("mnist-jobs jobs show 3f2a9c1e") == "show"
    assert job_verb("mnist-jobs submit fc --batch-size 1000") is None
    assert with_job("mnist-jobs jobs show 3f2a9c1e", job_id) == "mnist-jobs jobs show 728fd5c0"
    assert with_job("mnist-jobs jobs delete ID", job_id) == "mnist-jobs jobs delete 728fd5c0"
    assert (
        with_job("mnist-jobs jobs download 3f2a --format onnx", job_id) == "mnist-jobs jobs download 728f --format onnx"
    )
