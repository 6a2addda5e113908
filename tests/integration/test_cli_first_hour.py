"""The CLI as a new user meets it, against a live server with a real worker behind API tokens: job
id prefixes (unique, ambiguous, too short), `--url` without a scheme, what `jobs cancel` says, a
distinct exit code for each kind of error, and `jobs download` in each format."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from service.platform.auth import Role, create
from service.platform.db import Database
from tests.support.job_ids import rename_job
from tests.support.processes import REPO, mnist_jobs, run_cli
from tests.support.settings import settings_env

pytestmark = pytest.mark.slow
NOBODY = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def served(settings, live_server, tmp_path):
    """A live server with one worker; env for the CLI with the admin token, and the read token."""
    tokens = tmp_path / "tokens"
    admin, _ = create(tokens, Role.admin)
    reader, _ = create(tokens, Role.read)
    server = live_server(workers=1, api_tokens_file=str(tokens))
    server.client.headers["Authorization"] = f"Bearer {admin}"
    env = {**settings_env(settings), "MNIST_JOBS_URL": server.url, "MNIST_JOBS_TOKEN": admin}
    return server, env, reader


def test_prefixes_scheme_less_urls_downloads_and_exit_codes(served, settings, tmp_path):
    server, env, reader = served
    done = run_cli(env, "submit", "fc", "--wait")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[1]

    shown = run_cli(env, "jobs", "show", job_id[:8])
    assert shown.returncode == 0 and shown.stdout.startswith(f"job {job_id} succeeded"), shown.stderr
    bare = {**env, "MNIST_JOBS_URL": server.url.removeprefix("http://")}
    assert run_cli(bare, "jobs", "show", job_id[:6]).returncode == 0, "127.0.0.1:PORT means http://"
    flag = run_cli({k: v for k, v in env.items() if k != "MNIST_JOBS_URL"}, "--url", bare["MNIST_JOBS_URL"], "workers")
    assert flag.returncode == 0 and "alive" in flag.stdout, flag.stderr

    for file_format, suffix in (("checkpoint", "pt"), ("onnx", "onnx"), ("safetensors", "safetensors")):
        got = run_cli(env, "jobs", "download", job_id[:8], "--format", file_format, "-o", str(tmp_path))
        assert got.returncode == 0, got.stderr
        saved = tmp_path / f"{job_id}-epoch001.{suffix}"
        assert got.stdout.strip() == str(saved)
        route = "checkpoint" if file_format == "checkpoint" else f"model?format={file_format}"
        etag = server.client.get(f"/v1/jobs/{job_id}/{route}").headers["ETag"]
        assert etag == f'"{hashlib.sha256(saved.read_bytes()).hexdigest()}"', file_format

    too_short = run_cli(env, "jobs", "show", job_id[:3])
    assert too_short.returncode == 2 and "4 or more hex" in too_short.stderr
    assert run_cli(env, "jobs", "show", NOBODY).returncode == 6, "404"
    assert run_cli(env, "jobs", "download", job_id[:8], "--epoch", "9").returncode == 6, "no such epoch"
    again = run_cli(env, "jobs", "cancel", job_id[:8])
    assert again.returncode == 7 and f"job {job_id} already succeeded" in again.stderr, again.stderr
    assert run_cli({**env, "MNIST_JOBS_TOKEN": ""}, "jobs", "list").returncode == 5, "401: no token"
    assert run_cli({**env, "MNIST_JOBS_TOKEN": reader}, "submit", "fc").returncode == 5, "403: a read token"
    assert run_cli({**env, "MNIST_JOBS_TOKEN": reader}, "jobs", "delete", job_id[:8]).returncode == 5, "403"

    other = run_cli(env, "submit", "fc", "--seed", "3", "--wait")
    assert other.returncode == 0, other.stderr
    db = Database(settings.database_url)
    try:
        rename_job(db, job_id, "abcdef01-0000-4000-8000-00000000000a")
        rename_job(db, other.stdout.split()[1], "abcdef01-1111-4000-8000-00000000000b")
    finally:
        db.dispose()
    ambiguous = run_cli(env, "jobs", "show", "abcdef")
    assert ambiguous.returncode == 2 and "ambiguous" in ambiguous.stderr
    assert "abcdef01-0000-4000-8000-00000000000a" in ambiguous.stderr
    assert "abcdef01-1111-4000-8000-00000000000b" in ambiguous.stderr
    assert run_cli(env, "jobs", "show", "abcdef01-1").stdout.startswith("job abcdef01-1111-"), "one match"


def test_cancel_says_what_happens_to_a_queued_and_a_running_job(served):
    server, env, _reader = served
    long_job = subprocess.Popen(
        mnist_jobs("submit", "fc", "--epochs", "100", "--batch-size", "1"),
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = long_job.communicate(timeout=120)
    running_id = out.split()[0]
    server.wait_for_status(running_id, {"running"})
    queued = run_cli(env, "submit", "cnn")  # the one worker is busy: this one waits in the queue
    queued_id = queued.stdout.split()[0]
    assert server.client.get(f"/v1/jobs/{queued_id}").json()["status"] == "queued"

    now = run_cli(env, "jobs", "cancel", queued_id[:8])
    assert now.returncode == 0 and now.stdout.strip() == f"{queued_id} cancelled", now.stderr
    later = run_cli(env, "jobs", "cancel", running_id[:8])
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip() == f"{running_id} cancel requested; the job stops at its next step"
    server.wait_for_status(running_id, {"cancelled"})
    assert run_cli(env, "jobs", "watch", running_id[:8]).returncode == 3, "cancelled"
