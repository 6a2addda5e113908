"""Files the service creates are its own (the database, its WAL and checkpoints 0600, folders 0700),
and a job's delete removes its artifacts and no other's."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from service.platform.db import Database, upgrade
from service.storage.store import LocalStore, sha256_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_and_its_wal_are_private(tmp_path):
    path = tmp_path / "new" / "dir" / "jobs.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    database = Database(url)
    with database.write() as session:
        session.execute(text("UPDATE alembic_version SET version_num = version_num"))
        wal = path.with_name("jobs.db-wal")
        assert wal.exists()
        assert mode(wal) == 0o600
    database.dispose()
    assert mode(path) == 0o600
    assert mode(path.parent) == mode(path.parent.parent) == 0o700


def test_checkpoints_are_written_private_and_whole(tmp_path):
    artifacts = tmp_path / "artifacts"
    stored = LocalStore(artifacts).put("jobs/abc/epoch-001-xyz.pt", b"weights")
    path = artifacts / stored.path
    assert path.read_bytes() == b"weights" and sha256_file(path) == stored.sha256 and stored.size_bytes == 7
    assert mode(path) == 0o600
    assert mode(path.parent) == mode(artifacts / "jobs") == mode(artifacts) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["epoch-001-xyz.pt"], "no temp file left behind"


def test_deleting_a_jobs_artifacts_leaves_every_other_jobs(tmp_path):
    store = LocalStore(tmp_path / "artifacts")
    kept = store.put("jobs/keep/epoch-001-a.pt", b"kept")
    store.put("jobs/gone/epoch-001-b.pt", b"gone")
    store.delete_job("gone")
    store.delete_job("never-had-files")
    assert not (tmp_path / "artifacts" / "jobs" / "gone").exists()
    assert store.get(kept.path) == b"kept"
    with pytest.raises(ValueError, match="leaves the artifacts dir"):
        store.get("jobs/../../etc/passwd")
