"""keep_checkpoints: a job's worker keeps the last N epoch checkpoints and the best, removes the
others' files as training goes on, and keeps every epoch's metrics. Real app, real runner, real files."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import select

from service.platform.db import alembic_config, current_revision, head_revision
from service.platform.models import Epoch
from service.platform.states import Outcome
from service.queue import leases
from tests.support.training import CPU

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.databases]  # on SQLite and PostgreSQL
PROBLEM = "application/problem+json"


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"keep_checkpoints": 2})


def run_next(settings, db) -> dict[str, Outcome]:
    """Claim the oldest queued job and run it with the worker's own runner, in this process."""
    from workers.data_cache import DataCache
    from workers.runner import JobRunner

    with db.write() as session:
        claims = leases.claim(session, "worker-1", settings.lease_seconds)
    assert claims, "a job to run"
    return JobRunner(settings, db, "worker-1", CPU, DataCache(settings, CPU)).run(claims)


def test_a_job_keeps_its_last_checkpoints_and_its_best_and_every_epochs_metrics(client, settings, db):
    job = client.post("/v1/jobs", json={"architecture": "fc", "epochs": 6, "n_hidden": 16}).json()
    assert run_next(settings, db) == {job["id"]: "succeeded"}
    served = client.get(f"/v1/jobs/{job['id']}").json()

    metrics = served["metrics"]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6], "every epoch's metrics remain"
    best = max(metrics, key=lambda m: (m["test_accuracy"], m["epoch"]))["epoch"]
    kept = sorted({5, 6, best})

    listed = served["result"]["checkpoints"]
    assert [c["epoch"] for c in listed] == kept
    with db.read() as session:
        rows = session.scalars(select(Epoch).where(Epoch.job_id == job["id"]).order_by(Epoch.epoch)).all()
        paths = {row.epoch: row.checkpoint_path for row in rows}
    assert [epoch for epoch, path in paths.items() if path is not None] == kept
    on_disk = {p.relative_to(settings.artifacts_dir).as_posix() for p in settings.artifacts_dir.rglob("*.pt")}
    assert on_disk == {paths[epoch] for epoch in kept}, "exactly the kept epochs' files are on disk"
    for checkpoint in listed:
        assert client.get(checkpoint["url"]).status_code == 200
    latest = client.get(f"/v1/jobs/{job['id']}/checkpoint")
    assert latest.headers["content-disposition"].endswith('-epoch006.pt"')

    pruned = next(epoch for epoch in range(1, 7) if epoch not in kept)
    response = client.get(f"/v1/jobs/{job['id']}/checkpoint?epoch={pruned}")
    assert response.status_code == 404 and response.headers["content-type"] == PROBLEM
    detail = response.json()["detail"]
    assert f"epoch {pruned} was pruned" in detail and "keep_checkpoints" in detail
    assert f"saved: {', '.join(map(str, kept))}" in detail

    # Revision 0003 needs a file for every epoch: the downgrade says so and changes nothing.
    with pytest.raises(RuntimeError, match=rf"of 1 job\(s\) had their checkpoint pruned .*{job['id']}"):
        command.downgrade(alembic_config(settings.database_url), "0003")
    assert current_revision(settings.database_url) == head_revision()
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    command.downgrade(alembic_config(settings.database_url), "0003")
    assert current_revision(settings.database_url) == "0003"
