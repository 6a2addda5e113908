"""Jobs whose ids share a prefix, for the id prefix tests: random UUIDs would need hundreds of
jobs before two shared even 4 characters, so a test gives two real jobs chosen ids, in the database
the server reads, children and all (SQLite: foreign keys checked at the commit)."""

from __future__ import annotations

from sqlalchemy import text

from service.platform.db import Database

CHILDREN = ("job_labels", "step_chunks", "epochs", "attempts", "events")


def rename_job(db: Database, old: str, new: str) -> None:
    with db.write() as session:
        session.execute(text("PRAGMA defer_foreign_keys = ON"))
        for table in CHILDREN:
            session.execute(text(f"UPDATE {table} SET job_id = :new WHERE job_id = :old"), {"new": new, "old": old})
        session.execute(text("UPDATE jobs SET id = :new WHERE id = :old"), {"new": new, "old": old})
