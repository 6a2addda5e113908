"""The CLI's server commands as a user runs them: real `mnist-jobs` processes against a live server
with a real worker, their output, and their exit codes (0 succeeded, 1 failed, 2 usage, 3 cancelled,
4 unreachable, 6 not found; the others in test_cli_first_hour.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from tests.support.processes import REPO, free_port, mnist_jobs, run_cli, wait_until
from tests.support.settings import settings_env

cli = run_cli


@pytest.fixture
def served(settings, live_server):
    server = live_server(workers=1)
    return server, {**settings_env(settings), "MNIST_JOBS_URL": server.url}


def test_submit_wait_list_show_download_and_workers(served, tmp_path):
    server, env = served
    run = cli(
        env,
        "submit",
        "--architecture",
        "cnn",
        "--permutation-seed",
        "42",
        "--epochs",
        "2",
        "--label",
        "team=vision",
        "--wait",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("job ") and " succeeded: test accuracy " in run.stdout and "6,422 params" in run.stdout
    assert ": running" in run.stderr and ": succeeded" in run.stderr, "plain progress lines when piped"
    job_id = run.stdout.split()[1]

    listed = cli(env, "jobs", "list", "--label", "team=vision")
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].split()[:3] == ["ID", "STATUS", "ARCH"]
    assert listed.stdout.splitlines()[1].split()[:4] == [job_id[:8], "succeeded", "cnn", "42"]
    as_json = json.loads(cli(env, "jobs", "list", "--json").stdout)
    assert [job["id"] for job in as_json] == [job_id]

    shown = cli(env, "jobs", "show", job_id)
    assert shown.returncode == 0 and "EPOCH" in shown.stdout and '"permutation_seed": 42' in shown.stdout

    target = tmp_path / "cnn.pt"
    got = cli(env, "jobs", "download", job_id, "-o", str(target))
    assert got.returncode == 0 and target.exists()
    sha256 = server.client.get(f"/v1/jobs/{job_id}").json()["result"]["checkpoints"][-1]["sha256"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha256

    workers = cli(env, "workers")
    assert workers.returncode == 0 and "alive" in workers.stdout and "cpu" in workers.stdout


def test_exit_codes_say_how_it_ended(served):
    server, env = served
    failed = cli(env, "submit", "fc", "--dataset", "fashion-mnist", "--wait")  # no such data here: the job fails
    assert failed.returncode == 1 and " failed: " in failed.stdout

    long_job = subprocess.Popen(
        mnist_jobs("submit", "fc", "--epochs", "100", "--batch-size", "1", "--wait"),
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job_id = wait_until(
        lambda: next(iter(server.client.get("/v1/jobs", params={"status": "running"}).json()["items"]), None)
    )["id"]
    assert server.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    assert long_job.wait(timeout=120) == 3, long_job.communicate()

    invalid = cli(env, "submit", "fc", "--epochs", "0")
    assert invalid.returncode == 2 and "epochs" in invalid.stderr and "not sent" in invalid.stderr
    assert cli(env, "submit", "fc", "--no-such-flag").returncode == 2
    assert cli(env, "jobs", "show", "00000000-0000-4000-8000-000000000000").returncode == 6, "not found: 6, not 1"


def test_an_unreachable_server_is_exit_4_naming_the_url(settings):
    url = f"http://127.0.0.1:{free_port()}"
    run = cli({**settings_env(settings), "MNIST_JOBS_URL": url}, "jobs", "list")
    assert run.returncode == 4 and url in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.splitlines()) <= 2


def test_every_command_has_help_with_an_example(settings):
    env = settings_env(settings)
    for command in (
        ["submit"],
        ["jobs", "list"],
        ["jobs", "show"],
        ["jobs", "watch"],
        ["jobs", "cancel"],
        ["jobs", "delete"],
        ["jobs", "download"],
        ["workers"],
        ["compare"],
    ):
        run = cli(env, *command, "--help")
        assert run.returncode == 0 and "example" in run.stdout, command
    help_text = cli(env, "submit", "--help").stdout
    for field in (
        "--n-hidden",
        "--n-features",
        "--permutation-seed",
        "--batch-size",
        "--lr",
        "--momentum",
        "--max-attempts",
        "--reuse",
        "--name",
        "--dataset",
    ):
        assert field in help_text, field
