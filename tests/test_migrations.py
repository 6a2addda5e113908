"""The schema comes from Alembic only, and the models agree with it."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from service.db import current_revision, make_engine, upgrade
from service.models import Base


def test_models_and_migrations_agree(tmp_path):
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


def test_upgrade_creates_tables_in_wal_mode_and_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url)
    upgrade(url)
    assert current_revision(url) is not None
    engine = make_engine(url)
    with engine.connect() as connection:
        assert {"jobs", "checkpoints", "workers", "alembic_version"} <= set(inspect(connection).get_table_names())
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        connection.execute(text("SELECT 1"))
    engine.dispose()
