"""`mnist-jobs db backup FILE` while a worker trains, then a server started on the copy serves its jobs."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.engine import make_url

from tests.support.processes import run_cli, wait_until
from tests.support.settings import settings_env


def test_a_backup_taken_while_jobs_run_restores_and_serves_its_jobs(settings, live_server, tmp_path):
    server = live_server(workers=1)
    done = server.client.post("/v1/jobs", json={"architecture": "fc", "seed": 1}).json()
    server.wait_for_status(done["id"], {"succeeded"})
    running = server.client.post("/v1/jobs", json={"architecture": "fc", "epochs": 100, "batch_size": 4}).json()
    server.wait_for_status(running["id"], {"running"})

    target = tmp_path / "backups" / "jobs.db"
    run = run_cli(settings_env(settings), "db", "backup", str(target), timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"backed up to {target}" in run.stdout and (target.stat().st_mode & 0o777) == 0o600
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",), "one self-contained file"
    done_view = server.client.get(f"/v1/jobs/{done['id']}").json()
    server.client.post(f"/v1/jobs/{running['id']}/cancel")
    server.stop()

    restored = live_server(workers=0, database_url=f"sqlite:///{target}")
    jobs = {job["id"]: job for job in restored.client.get("/v1/jobs").json()["items"]}
    assert jobs[done["id"]]["status"] == "succeeded" and jobs[done["id"]]["result"] == done_view["result"]
    assert jobs[running["id"]]["status"] == "running", "the copy holds the state at the moment it was taken"
    checkpoint = restored.client.get(f"/v1/jobs/{done['id']}/checkpoint")
    assert checkpoint.status_code == 200, "the artifacts the copy points at are served"
    wait_until(lambda: restored.client.get("/healthz/ready").status_code == 200)


def test_backup_refuses_what_it_cannot_copy(settings, tmp_path):
    env = settings_env(settings, database_url="postgresql+psycopg://127.0.0.1:1/none")
    run = run_cli(env, "db", "backup", str(tmp_path / "x.db"), timeout=60)
    assert run.returncode == 1 and "pg_dump" in run.stderr and not (tmp_path / "x.db").exists()
    missing = run_cli(settings_env(settings), "db", "backup", timeout=60)
    assert missing.returncode == 2 and "FILE" in missing.stderr


@pytest.mark.databases("postgresql")
def test_db_upgrade_and_current_name_the_database_but_never_its_password(settings):
    url = make_url(settings.database_url).set(password="s3cret-word")  # the test server trusts and ignores it
    env = settings_env(settings, database_url=url.render_as_string(hide_password=False))
    for action in ("upgrade", "current"):
        run = run_cli(env, "db", action, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "s3cret-word" not in run.stdout + run.stderr and f"{url.database}: revision" in run.stdout
