"""Alembic environment: runs migrations on the URL set by service.platform.db.alembic_config (or alembic.ini)."""

from alembic import context

from service.platform.db import make_engine
from service.platform.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # The service's own engine: on SQLite its BEGIN IMMEDIATE serialises concurrent upgrades.
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no sqlalchemy.url: set it in alembic.ini or use service.platform.db.alembic_config")
    engine = make_engine(url, transaction_pooler=config.attributes.get("transaction_pooler", False))
    try:
        with engine.connect() as connection:
            # transactional_ddl: SQLite's DDL is transactional, but Alembic assumes it is not and
            # commits each migration apart; one transaction makes a multi-step upgrade or downgrade
            # all or nothing (a downgrade that 0004 refuses must not have undone 0005 first).
            context.configure(
                connection=connection, target_metadata=target_metadata, render_as_batch=True, transactional_ddl=True
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
