"""`mnist-jobs db backup FILE`: a consistent copy of a live SQLite database.

SQLite's online backup API copies the database page by page under its own locking, so the copy is
one consistent state even while workers and the API write (WAL included): what a job's row says
and its epochs say always agree in the copy. The copy is written beside FILE and renamed onto it,
0600 like the database. PostgreSQL has its own tools (docs/postgresql.md gives the pg_dump command).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from service.platform.db import sqlite_file
from service.platform.errors import InvalidInput
from service.storage.store import PRIVATE_FILE_MODE, private_dirs

PAGES_PER_STEP = 1024  # pages copied per step: writers get the lock between steps


def sqlite_path(database_url: str) -> Path:
    path = sqlite_file(database_url)
    if path is None:
        backend = make_url(database_url).get_backend_name()
        raise InvalidInput(
            f"db backup copies SQLite files; {backend} has its own tools (docs/postgresql.md: pg_dump)",
            field="database_url",
        )
    return path


def backup(database_url: str, target: Path) -> int:
    """Copy the database at `database_url` to `target` (replaced atomically); returns its size in bytes."""
    source_path = sqlite_path(database_url)
    if not source_path.exists():
        raise InvalidInput(f"no database file at {source_path}", field="database_url")
    if target.resolve() == source_path.resolve():
        raise InvalidInput("the backup must not replace the database itself", field="file")
    private_dirs(target.parent)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temp = Path(temp_name)
    try:
        # uri=True + mode=ro: the backup never writes to (or creates) the source
        source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
        copy = sqlite3.connect(temp)
        try:
            source.backup(copy, pages=PAGES_PER_STEP)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            copy.close()
            source.close()
        os.chmod(temp, PRIVATE_FILE_MODE)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target.stat().st_size
