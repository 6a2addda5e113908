"""The schema comes from Alembic only, the models agree with it, and migrations keep every row.

tests/support/data/jobs_0001.sql is a database written by revision 0001's code (real workers:
succeeded, packed, permuted, failed, cancelled, resumed after a SIGKILL, handed back, left running,
idempotent), and jobs_0001.json is what that code's API answered for each job. See README.txt there.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, inspect, select, text

from service.jobs import lifecycle
from service.jobs.cost import estimate
from service.jobs.reuse import spec_sha256
from service.jobs.schemas import job_spec_adapter
from service.platform.db import Database, alembic_config, current_revision, head_revision, make_engine, upgrade
from service.platform.errors import SchemaOutOfDate
from service.platform.models import Base, Job
from service.queue import leases
from service.queue.leases import Lease

pytestmark = pytest.mark.databases  # each test once on SQLite, once on PostgreSQL

FIXTURE = Path(__file__).resolve().parents[1] / "support" / "data"


def test_models_and_migrations_agree(settings):
    url = settings.database_url
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


def test_upgrade_creates_tables_in_wal_mode_and_is_idempotent(tmp_path):  # PRAGMAs: SQLite's alone
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url)
    upgrade(url)
    assert current_revision(url) == head_revision()
    engine = make_engine(url)
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        assert {"jobs", "epochs", "attempts", "workers", "alembic_version"} <= tables
        assert "checkpoints" not in tables
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        busy_timeout = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
        assert busy_timeout is not None and busy_timeout >= 1000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        connection.execute(text("SELECT 1"))
    engine.dispose()


def test_the_api_refuses_a_database_that_is_not_at_head_and_says_what_to_run(settings):
    from api.app import create_app

    upgrade(settings.database_url, "0001")
    with pytest.raises(SchemaOutOfDate, match="run `mnist-jobs db upgrade`"):
        with TestClient(create_app(settings)):
            pass


def load_fixture(settings, tmp_path: Path) -> str:
    """The settings' database holding revision 0001's rows, exactly as that code wrote them: the
    SQLite file the fixture's SQL makes, or on PostgreSQL those rows copied (SQLAlchemy Core) into
    a database that `upgrade` brought to 0001, as 0001's code would have written them there."""
    path = tmp_path / "jobs_0001.db"
    connection = sqlite3.connect(path)
    connection.executescript((FIXTURE / "jobs_0001.sql").read_text())
    connection.close()
    if settings.database_url.startswith("sqlite"):
        return f"sqlite:///{path}"
    url = settings.database_url
    upgrade(url, "0001")
    source, target = make_engine(f"sqlite:///{path}"), make_engine(url)
    old, new = MetaData(), MetaData()
    old.reflect(source)
    new.reflect(target)
    with source.connect() as reading, target.begin() as writing:
        for table in new.sorted_tables:
            if table.name != "alembic_version" and (rows := reading.execute(select(old.tables[table.name])).all()):
                writing.execute(table.insert(), [row._asdict() for row in rows])
    source.dispose()
    target.dispose()
    return url


def raw_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, JSON columns parsed, for comparing two databases."""
    if not url.startswith("sqlite"):
        return _rows_through_core(url)
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    connection.row_factory = sqlite3.Row
    tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    rows = {}
    for table in sorted(tables):
        found = [dict(row) for row in connection.execute(f"SELECT * FROM {table}")]  # our table names
        for row in found:
            for key in ("spec", "metrics", "history", "progress", "result"):
                if isinstance(row.get(key), str):
                    row[key] = json.loads(row[key])
        rows[table] = sorted(found, key=lambda row: json.dumps(row, sort_keys=True, default=str))
    connection.close()
    return rows


def _rows_through_core(url: str) -> dict[str, list[dict[str, Any]]]:
    """raw_rows on a server database: every table reflected, its JSON columns read as JSON."""
    engine, metadata = make_engine(url), MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        rows = {
            name: [row._asdict() for row in connection.execute(select(table))]
            for name, table in metadata.tables.items()
        }
    engine.dispose()
    return {
        name: sorted(found, key=lambda row: json.dumps(row, sort_keys=True, default=str))
        for name, found in rows.items()
    }


# Fields added to a job's JSON after revision 0001, and what a job migrated from it shows in each.
LATER_FIELDS: dict[str, object] = {
    "name": None,
    "labels": {},
    "submitted_by": None,
    "comparison_id": None,
    "reused_from": None,
}


def without_cost(job: dict[str, Any]) -> dict[str, Any]:
    """The job's JSON less the fields added after revision 0001: `cost`, checked to be its spec's
    estimate, and the others, checked to show what a migrated job has (nothing)."""
    job = dict(job)
    assert job.pop("cost") == estimate(job_spec_adapter.validate_python(job["spec"])).model_dump(mode="json")
    for name, value in LATER_FIELDS.items():
        assert job.pop(name) == value, name
    if job["result"] is not None:
        job["result"] = dict(job["result"])
        assert job["result"].pop("confusion") is None
    return job


def served(settings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from api.app import create_app

    with TestClient(create_app(settings)) as client:
        page = client.get("/v1/jobs", params={"limit": 200}).json()
        one_by_one = [client.get(f"/v1/jobs/{job['id']}").json() for job in page["items"]]
    page["items"] = [without_cost(job) for job in page["items"]]
    return sorted((without_cost(job) for job in one_by_one), key=lambda job: job["id"]), page


def test_upgrade_moves_every_job_metric_checkpoint_and_attempt_and_downgrade_moves_them_back(settings, tmp_path):
    url = load_fixture(settings, tmp_path)
    settings = settings.model_copy(update={"database_url": url})
    original = raw_rows(url)
    expected = json.loads((FIXTURE / "jobs_0001.json").read_text())
    assert current_revision(url) == "0001" and len(expected) == 16

    upgrade(url)
    assert current_revision(url) == head_revision()
    after, page = served(settings)
    assert after == expected, "every job's JSON is what revision 0001's API answered"
    assert page == json.loads((FIXTURE / "list_0001.json").read_text())

    database = Database(url)
    with database.read() as session:
        for job in session.scalars(select(Job)):  # queued jobs still pack with new ones
            assert job.pack_key == job_spec_adapter.validate_python(job.spec).pack_key
            # 0005 filled the filter, sort and reuse columns from the spec and result
            assert (job.seed, job.permutation_seed) == (job.spec["seed"], job.spec["permutation_seed"])
            assert job.test_accuracy == (job.result["test_accuracy"] if job.result else None)
            assert job.spec_sha256 == spec_sha256(job.spec)
        running = lifecycle.get(session, "45a824fc-2d09-4e77-b9c7-45881cd735c3")
        assert running.status == "running" and running.attempt_rows[-1].lease_token == running.lease_token
    with database.write() as session:  # the running attempt's worker can still write through its lease
        assert leases.heartbeat(session, Lease(running.id, running.lease_token), 60, None) is False
    database.dispose()

    command.downgrade(alembic_config(url), "0001")
    assert current_revision(url) == "0001"
    downgraded = raw_rows(url)
    for table in ("jobs", "checkpoints", "workers"):
        left, right = original[table], downgraded[table]
        if table == "jobs":  # the heartbeat above renewed one lease
            for row in left + right:
                row.pop("updated_at"), row.pop("lease_expires_at")
        assert left == right, f"{table} differs after upgrade + downgrade"

    upgrade(url)
    assert served(settings)[0] == expected, "and up again"


def test_a_worker_refuses_a_database_that_is_not_at_head(settings):
    from workers.main import run_worker

    upgrade(settings.database_url, "0001")
    with pytest.raises(SchemaOutOfDate, match=f"this code needs {head_revision()}"):
        run_worker(settings)


# SQLite only: 0001's code wrote the NaN token into a JSON text column, which only SQLite accepts
# (PostgreSQL's json type rejects it), so no PostgreSQL database can hold what this migrates.
@pytest.mark.databases("sqlite")
def test_a_job_whose_losses_went_nan_under_revision_0001_upgrades_with_null_losses(settings, tmp_path):
    """0001's code stored NaN for a diverged job (its API showed null); SQLite cannot keep NaN in a
    REAL column, so the upgrade keeps null there, as the old API showed, instead of failing."""
    url = load_fixture(settings, tmp_path)
    settings = settings.model_copy(update={"database_url": url})
    job_id = "132c177e-fa96-47a9-a1c9-b592037151c3"  # a succeeded FC job of the fixture
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    metrics, result = (
        json.loads(v) for v in connection.execute("SELECT metrics, result FROM jobs WHERE id = ?", (job_id,)).fetchone()
    )
    metrics[0]["train_loss"] = metrics[0]["test_loss"] = result["test_loss"] = float("nan")
    connection.execute(
        "UPDATE jobs SET metrics = ?, result = ? WHERE id = ?", (json.dumps(metrics), json.dumps(result), job_id)
    )  # json.dumps writes NaN, as 0001 did
    connection.commit()
    connection.close()
    expected = {job["id"]: job for job in json.loads((FIXTURE / "jobs_0001.json").read_text())}
    diverged = expected[job_id]
    diverged["metrics"][0]["train_loss"] = diverged["metrics"][0]["test_loss"] = None
    diverged["result"]["test_loss"] = None

    upgrade(url)
    after, _ = served(settings)
    assert {job["id"]: job for job in after} == expected, "null where 0001's API showed null, the rest intact"
    stored = raw_rows(url)["jobs"]
    assert "NaN" not in json.dumps([row["result"] for row in stored]), "no NaN token left in the database"
    command.downgrade(alembic_config(url), "0001")
    upgrade(url)
    assert {job["id"]: job for job in served(settings)[0]} == expected
