"""Costs that follow the work at hand, held by the plans: every statement the service runs for a
worker's claim and ending, a scrape, list pages, a job read, a submit and upkeep, on a history of
realistic shape (thousands of finished jobs, the newest 20 queued; bench.history fills it), is
captured as the real code sends it and explained on the database itself (bench.plans).

Two checks per statement, so a new query or index cannot bring back a cost that grows with history:
- the plan: no full scan of a history table (SQLite `SCAN t` other than an index walk that a LIMIT
  stops; PostgreSQL `Seq Scan`, planned with sequential scans priced out as at scale, so that
  one left means no index serves the statement), and no sort of rows read from one (SQLite: no
  sort under a LIMIT, which sorts every matching row for a page);
- the work: the rows each plan node reads (PostgreSQL, EXPLAIN ANALYZE: rows returned, removed by
  filter, times loops) or the VM instructions it takes (SQLite, progress handler), at four times
  the history, stay under twice their figure at one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from bench.history import History
from bench.plans import Statement, described, plan_faults, the_work, work
from service.platform import upkeep
from service.platform.config import Settings
from tests.support.settings import migrate

pytestmark = pytest.mark.databases()

HISTORY = 2000
QUEUED = 20  # the work at hand: the same at every size of history
GROWTH = 4  # the work is measured again at this many times the history


@pytest.fixture
def history(settings: Settings) -> Iterator[History]:
    migrate(settings.database_url)
    filled = History(settings.database_url, queued=QUEUED)
    filled.grow_to(HISTORY)
    with filled.db.write() as session:
        upkeep.tidy(session, 3600)  # as every process's upkeep does within seconds
    yield filled
    filled.db.dispose()


def test_no_statement_scans_or_sorts_finished_history(settings: Settings, history: History) -> None:
    statements = the_work(settings, history)
    assert len(statements) > 20, "the work ran the service's statements"
    faults = {described(s): found for s in statements if (found := plan_faults(history.db, s))}
    assert not faults, "\n".join(f"{sql}\n  -> {found}" for sql, found in faults.items())


def test_no_statement_does_more_work_as_history_grows(settings: Settings, history: History) -> None:
    statements = _distinct(the_work(settings, history))
    before = [work(history.db, s) for s in statements]
    history.grow_to(HISTORY * GROWTH)
    with history.db.write() as session:
        upkeep.tidy(session, 3600)
    after = [work(history.db, s) for s in statements]
    grown = {described(s): (a, b) for s, a, b in zip(statements, before, after, strict=True) if b > 2 * max(a, 2.0)}
    assert not grown, "\n".join(f"{sql}\n  -> {a:.0f} then {b:.0f}" for sql, (a, b) in grown.items())


def _distinct(statements: Sequence[Statement]) -> list[Statement]:
    """One of each SQL text, with its last parameters (run again at each size: the same rows asked
    for, the oldest job's page, the same job, a claim of the oldest queued job)."""
    by_sql = {statement.sql: statement for statement in statements}
    return list(by_sql.values())
