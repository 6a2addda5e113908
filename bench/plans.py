"""The plan of every statement the service sends for the work done every few seconds (a worker's
claim, heartbeat and upkeep, a scrape of /metrics, list pages, a job read, a submit), captured as
the real code sends it on a filled history (bench.history) and explained on the database itself.

    python -m bench.plans [--jobs 100000] [--databases sqlite,postgresql]

prints each distinct statement with its plan (SQLite: EXPLAIN QUERY PLAN; PostgreSQL: EXPLAIN
ANALYZE, with the rows each node read). tests/unit/test_plans.py holds the same statements to
"no full scan or sort of finished history" on both databases.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from api import cursors
from api.app import create_app
from bench.history import History, databases
from service.platform import metrics, upkeep
from service.platform.config import Settings
from service.platform.db import Database, upgrade
from service.queue import leases, reaper, registry

SORT_ROWS_MAX = 200  # a sort of more rows than this, read from a history table, is a sort of history
HISTORY_TABLES = ("jobs", "epochs", "attempts", "step_chunks", "job_labels", "events")
STATEMENT = re.compile(r"^\s*(SELECT|UPDATE|DELETE|WITH|INSERT\s.*\bSELECT\b)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Statement:
    sql: str
    parameters: Any

    @property
    def tables(self) -> set[str]:
        return {table for table in HISTORY_TABLES if re.search(rf"\b{table}\b", self.sql)}


@contextmanager
def captured() -> Iterator[list[Statement]]:
    """Every single statement any engine of this process sends while the block runs."""
    seen: list[Statement] = []

    def record(_conn: object, _cursor: object, sql: str, parameters: Any, _context: object, many: bool) -> None:
        if not many and STATEMENT.match(sql):
            seen.append(Statement(sql, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def the_work(settings: Settings, history: History) -> list[Statement]:
    """What a worker, a scraper and a user do, as the service does it; the statements it sent."""
    oldest = cursors.encode(history.start + 50 * history.gap, str(uuid.UUID(int=51)))
    db = history.db
    with captured() as statements:
        with db.write() as session:
            registry.register(session, "plan-worker", host="h", pid=1, device="cpu", torch_version="t")
        with db.read() as session:
            leases.seconds_until_runnable(session)
        with db.write() as session:
            (claim,) = leases.claim(session, "plan-worker", 60.0)
        with db.write() as session:
            leases.heartbeat(session, claim, 60.0, None)
        with db.write() as session:
            reaper.reap(session, base_seconds=1, max_seconds=2)
            upkeep.tidy(session, 3600)
            registry.mark_gone(session, silent_seconds=60)
        with TestClient(create_app(settings)) as client:
            for path in (
                "/metrics",
                "/metrics",
                "/v1/jobs?limit=50",
                f"/v1/jobs?limit=50&cursor={oldest}",
                "/v1/jobs?status=queued&limit=50",
                "/v1/jobs?sort=test_accuracy&limit=50",
                f"/v1/jobs/{uuid.UUID(int=history.count // 3)}",
                f"/v1/jobs/{uuid.UUID(int=history.count // 3)}/metrics",
            ):
                assert client.get(path).status_code == 200, path
            assert client.post("/v1/jobs", json={"architecture": "fc", "epochs": 1}).status_code == 201
            page = client.get("/v1/jobs?sort=test_accuracy&limit=50").json()
            assert client.get(f"/v1/jobs?sort=test_accuracy&limit=50&cursor={page['next_cursor']}").status_code == 200
        with db.read() as session:
            metrics.live_workers(session)
    return [statement for statement in statements if statement.tables]


def sqlite_plan(db: Database, statement: Statement) -> list[str]:
    with _raw(db) as connection:
        rows = connection.execute(f"EXPLAIN QUERY PLAN {statement.sql}", statement.parameters).fetchall()
    return [str(row[3]) for row in rows]


def sqlite_work(db: Database, statement: Statement) -> int:
    """VM instructions (in thousands) the statement takes, rolled back after."""
    with _raw(db) as connection:
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        connection.execute("SAVEPOINT plan")
        connection.set_progress_handler(count, 1000)
        connection.execute(statement.sql, statement.parameters).fetchall()
        connection.set_progress_handler(None, 0)
        connection.execute("ROLLBACK TO plan")
        connection.execute("RELEASE plan")
    return steps[0]


def postgres_plan(db: Database, statement: Statement) -> dict[str, Any]:
    """EXPLAIN ANALYZE's tree (the statement runs, in a transaction rolled back after), planned as
    at scale: with sequential scans priced out, so a table of a few thousand rows, which a scan
    reads as cheaply as an index, still shows whether an index serves the statement (a Seq Scan
    left means none can)."""
    with _raw(db) as connection, connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement.sql}", statement.parameters)
        plan = cursor.fetchone()[0][0]["Plan"]
        connection.rollback()
    return dict(plan)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def rows_read(node: dict[str, Any]) -> float:
    removed = node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    return float((node.get("Actual Rows", 0) + removed) * node.get("Actual Loops", 1))


def postgres_work(plan: dict[str, Any]) -> float:
    return sum(rows_read(node) for node in nodes(plan) if node.get("Relation Name") in HISTORY_TABLES)


@contextmanager
def _raw(db: Database) -> Iterator[Any]:
    connection = db.engine.raw_connection()
    try:
        yield connection.driver_connection
    finally:
        connection.close()


def described(statement: Statement) -> str:
    return " ".join(statement.sql.split())[:400]


def plan_faults(db: Database, statement: Statement) -> list[str]:
    """What the statement's plan does to finished history: full scans and sorts of it."""
    if db.engine.dialect.name == "postgresql":
        tree = postgres_plan(db, statement)
        faults = [
            f"Seq Scan on {node['Relation Name']}"
            for node in nodes(tree)
            if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in HISTORY_TABLES
        ]
        faults += [
            f"Sort of {rows_read(node):.0f} rows"
            for node in nodes(tree)
            if node["Node Type"] == "Sort" and rows_read(node) > SORT_ROWS_MAX
        ]
        return faults
    plan = sqlite_plan(db, statement)
    stopped = re.search(r"\bLIMIT\b", statement.sql) is not None
    faults = []
    for detail in plan:
        scanned = re.match(r"SCAN (\w+)", detail)
        if scanned and scanned.group(1) in HISTORY_TABLES and not ("USING" in detail and stopped):
            faults.append(detail)
        # A sort under a LIMIT reads and sorts every matching row to return a page of them.
        if stopped and detail.startswith("USE TEMP B-TREE FOR ORDER BY"):
            faults.append(detail)
    return faults


def work(db: Database, statement: Statement) -> float:
    if db.engine.dialect.name == "postgresql":
        return postgres_work(postgres_plan(db, statement))
    return sqlite_work(db, statement)


def show(db: Database, statement: Statement) -> str:
    """The statement's plan as text: SQLite's details; PostgreSQL's nodes with the rows each read."""
    if db.engine.dialect.name == "postgresql":
        lines = []

        def walk(node: dict[str, Any], depth: int) -> None:
            relation = f" on {node['Relation Name']}" if "Relation Name" in node else ""
            index = f" using {node['Index Name']}" if "Index Name" in node else ""
            lines.append(f"{'  ' * depth}{node['Node Type']}{relation}{index}  (rows read {rows_read(node):.0f})")
            for child in node.get("Plans", ()):
                walk(child, depth + 1)

        walk(postgres_plan(db, statement), 0)
        return "\n".join(lines)
    return "\n".join(sqlite_plan(db, statement))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, help="also write {database: [[sql, plan], ...]} here")
    args = parser.parse_args()
    shown: dict[str, list[tuple[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="mnist-jobs-plans-") as folder:
        for name, url in databases(args.databases.split(","), Path(folder)):
            upgrade(url)
            history = History(url, queued=20)
            history.grow_to(args.jobs)
            settings = Settings(database_url=url, artifacts_dir=Path(folder) / f"artifacts-{name}")
            statements = {statement.sql: statement for statement in the_work(settings, history)}
            shown[name] = [(" ".join(sql.split()), show(history.db, s)) for sql, s in statements.items()]
            for sql, plan in shown[name]:
                print(f"--- {name}: {sql[:300]}\n{plan}\n", flush=True)
            history.db.dispose()
    if args.json:
        args.json.write_text(json.dumps(shown, indent=1))


if __name__ == "__main__":
    main()
