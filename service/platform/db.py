"""Engine and sessions. SQLite gets WAL, a busy timeout, foreign keys, and BEGIN IMMEDIATE for writes.

Write transactions start with BEGIN IMMEDIATE so that two processes never both read a row and then
race to update it (SQLite would answer the loser "database is locked" instead of waiting). Reads use
a plain deferred BEGIN, so status reads never queue behind writers in WAL mode.

PostgreSQL (postgresql+psycopg://...) uses plain READ COMMITTED transactions: the claim locks its
rows with FOR UPDATE SKIP LOCKED and every later write is fenced (service.queue.leases), so nothing there
needs a wider lock. Its leases run on the server's clock (db_now). A worker's engine waits out a
server that is briefly unreachable (`reconnect_seconds`): a restart costs it no job.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from service.platform.errors import SchemaOutOfDate
from service.storage.store import private_file

BUSY_TIMEOUT_MS = 30_000
# PostgreSQL ends a session that sits inside a transaction doing nothing for this long, which frees
# its row locks: a worker paused (SIGSTOP) or hung mid-transaction must not block the reaper, and so
# its job, for as long as its connection stays open. Every transaction of ours takes milliseconds.
IDLE_IN_TRANSACTION_MS = 10_000
SESSION_OPTIONS = f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
READ_ONLY = "mnist_jobs_read_only"  # execution option: begin a deferred (read) transaction
RECONNECT_MAX_DELAY_S = 2.0  # the longest pause between two tries to reach the server
RETRY_PAUSE_S = 0.1  # between a write the connection broke under and its next try

log = logging.getLogger("mnist_jobs.db")
T = TypeVar("T")


@dataclass(frozen=True)
class Pool:
    """Connections one process keeps open (`size`) and may open past them at busy moments
    (`overflow`, closed once returned): docs/postgresql.md adds them up for max_connections."""

    size: int = 5  # SQLAlchemy's defaults: the API (its request threads, the event reader, upkeep)
    overflow: int = 10


# A worker's real needs: its main loop (claim, training's writes) and its heartbeat thread; one
# spare for the moment both overlap with the loop's reap. Its LISTEN is not in it (service/queue/wakeup.py).
WORKER_POOL = Pool(size=2, overflow=1)


def make_engine(
    url: str, reconnect_seconds: float = 0.0, pool: Pool = Pool(), transaction_pooler: bool = False
) -> Engine:
    """The engine for `url`. On PostgreSQL, with `reconnect_seconds`, opening a connection waits
    out a server that refuses connections (restarting, failing over) for up to that long. Behind a
    pooler in transaction mode (`transaction_pooler`) a client's statements may reach a different
    server session each transaction: psycopg then prepares no statements (PgBouncer before 1.21
    would run them on a session that never saw them) and no session option is sent at connect
    (PgBouncer refuses an unknown startup parameter): the idle-in-transaction limit is then the
    pooler's or the role's (docs/postgresql.md)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        connect: dict[str, Any] = {"prepare_threshold": None} if transaction_pooler else {"options": SESSION_OPTIONS}
        engine = create_engine(
            url, pool_pre_ping=True, pool_size=pool.size, max_overflow=pool.overflow, connect_args=connect
        )
        if reconnect_seconds > 0:
            _wait_for_server(engine, reconnect_seconds)
        return engine
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        private_file(Path(parsed.database))
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver's own is always DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _wait_for_server(engine: Engine, seconds: float) -> None:
    """Every new connection (pool_pre_ping replaces the ones a restart broke) retries while the
    server is unreachable, with growing pauses, for up to `seconds`; then the error is raised."""

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Dialect, _record: object, cargs: list[object], cparams: dict[str, object]) -> object:
        deadline, delay, failures = time.monotonic() + seconds, 0.1, 0
        while True:
            try:
                connection = dialect.loaded_dbapi.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as error:
                if time.monotonic() + delay > deadline:
                    raise
                if not failures:
                    log.warning("database unreachable (%s); retrying for up to %.0f s", str(error).strip(), seconds)
                failures += 1
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
                continue
            if failures:
                log.warning("database reachable again after %d failed tries", failures)
            return connection


def lost_connection(error: BaseException) -> bool:
    """Whether `error` means the database could not be reached or the connection broke (a restart,
    a network cut; on SQLite, a lock held past the busy timeout): not the job's fault."""
    if not isinstance(error, DBAPIError):
        return False
    return error.connection_invalidated or isinstance(error, (OperationalError, InterfaceError))


def db_now(session: Session) -> datetime:
    """Now, on the database's clock (aware UTC): what leases, their expiry and run_after are
    measured by, so workers on hosts whose clocks disagree never steal or lose a lease. On a server
    it is the server's clock_timestamp() (the moment of the statement; now() would be the same
    for a whole transaction); SQLite's file is local, so its clock is this host's."""
    if session.get_bind().dialect.name == "sqlite":
        return datetime.now(UTC)
    value = session.scalar(select(func.timezone("UTC", func.clock_timestamp())))
    assert isinstance(value, datetime), value
    return value.replace(tzinfo=UTC)


class unindexed(FunctionElement[Any]):  # used as a SQL function: unindexed(column)
    """`column` as a term SQLite's planner cannot serve from an index (its no-op unary plus: `+x`);
    the column itself elsewhere. The claim filters run_after on rows it walks in ix_jobs_status's
    order; left indexable, SQLite would rather range ix_jobs_run_after and sort every runnable job."""

    inherit_cache = True
    name = "unindexed"

    def __init__(self, column: QueryableAttribute[Any]) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(unindexed)
def _unindexed(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return f"+{compiler.process(element.clauses, **kw)}"


class Database:
    """One engine and the two kinds of session made from it."""

    def __init__(
        self, url: str, *, reconnect_seconds: float = 0.0, pool: Pool = Pool(), transaction_pooler: bool = False
    ) -> None:
        self.url, self.reconnect_seconds = url, reconnect_seconds
        self.engine = make_engine(url, reconnect_seconds, pool, transaction_pooler)
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)
        # SQLite has one writer at a time, and a connection that finds the lock taken sleeps in
        # growing steps (1, 2, 5, 10 ... 100 ms) before it retries. Threads of one process queue
        # here instead, and are woken the moment the writer before them commits.
        self._write_lock = threading.Lock() if self.engine.dialect.name == "sqlite" else nullcontext()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any exception. It begins
        before the body runs (on SQLite, BEGIN IMMEDIATE takes the write lock there): a "now" the
        body reads (db_now) is then never older than the lock, so a claim that waited for it
        grants a full lease."""
        with self._write_lock, self._writer() as session, session.begin():
            session.connection()
            yield session

    def write_again_if_cut(self, body: Callable[[Session], T]) -> T:
        """`body` in one write transaction; when the connection broke under it (a server restart, a
        network cut), run again in a new one, for up to `reconnect_seconds`. Only for writes that
        are safe to repeat: the worker's fenced writes, which a lost lease refuses. A transaction
        whose commit reached the server but whose answer was lost is repeated too: `body` must
        then see its own earlier write (an ending finds its attempt already closed)."""
        deadline = time.monotonic() + self.reconnect_seconds
        while True:
            try:
                with self.write() as session:
                    return body(session)
            except DBAPIError as error:
                if not lost_connection(error) or time.monotonic() + RETRY_PAUSE_S > deadline:
                    raise
                cause = str(error.orig).strip().partition("\n")[0] or type(error.orig).__name__
                log.warning("write cut off (%s); trying it again", cause)
                time.sleep(RETRY_PAUSE_S)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session, session.begin():
            yield session

    def ping(self) -> None:
        """One round trip to the database (a readiness check); raises SQLAlchemyError when it fails."""
        with self.read() as session:
            session.execute(select(1))

    def dispose(self) -> None:
        self.engine.dispose()


def sqlite_file(database_url: str) -> Path | None:
    """The SQLite database file of `database_url`; None for another database or an in-memory one."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def alembic_config(url: str, transaction_pooler: bool = False) -> Config:

    config = Config()
    config.set_main_option("script_location", str(resources.files("migrations")))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["transaction_pooler"] = transaction_pooler  # for migrations/env.py's engine
    return config


def upgrade(url: str, revision: str = "head", transaction_pooler: bool = False) -> None:
    """Bring the schema to `revision`; safe when several processes do it at once."""
    from alembic import command

    command.upgrade(alembic_config(url, transaction_pooler), revision)


def current_revision(url: str, reconnect_seconds: float = 0.0, transaction_pooler: bool = False) -> str | None:
    engine = make_engine(url, reconnect_seconds, Pool(size=1, overflow=0), transaction_pooler)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "the migrations folder has no revision"
    return head


def require_head(url: str, reconnect_seconds: float = 0.0, transaction_pooler: bool = False) -> None:
    """Refuse to start on a database that is not at the migration head (migrations run in one
    place, `mnist-jobs db upgrade` or `mnist-jobs serve`), saying what to run. `reconnect_seconds`:
    as Database's (a worker started while the server restarts waits for it)."""
    current, head = current_revision(url, reconnect_seconds, transaction_pooler), head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"the database is at revision {current or 'none (empty)'}, this code needs {head}: "
            "run `mnist-jobs db upgrade` (with the same MNIST_JOBS_DATABASE_URL)"
        )
