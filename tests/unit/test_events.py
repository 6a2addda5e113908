"""Live events (server-sent events): the outbox rows each queue change writes in its own transaction,
and the streams that the API's one reader fans out, through the real app (Starlette's TestClient
streams as the app sends), on a migrated SQLite file, with jobs moved by the queue's fenced calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import inspect, update

from api.events import GAP_WAIT_SECONDS, Broadcaster
from service.jobs import lifecycle
from service.jobs.reuse import ReusePolicy
from service.jobs.schemas import EpochRecord, Progress, StepMetrics, job_spec_adapter
from service.platform import events
from service.platform.db import Database, alembic_config, make_engine, upgrade
from service.platform.errors import LeaseLost
from service.platform.events import StatusEvent, StoredEvent
from service.platform.models import Event, Job, utcnow
from service.platform.states import JobStatus
from service.platform.upkeep import tidy
from service.queue import leases, reaper
from service.queue.leases import Claim
from service.storage.store import StoredFile, open_store
from tests.support.queue import result
from tests.support.settings import migrate

pytestmark = pytest.mark.databases  # each test once on SQLite, once on PostgreSQL

PING_SECONDS = 0.25
BACKOFF = {"base_seconds": 10.0, "max_seconds": 10_000.0}
PROGRESS = Progress(fraction=0.5, epoch=1, step=5, steps=10, loss=0.7)


@pytest.fixture
def fast(settings):
    return settings.model_copy(update={"events_poll_seconds": 0.02, "events_ping_seconds": PING_SECONDS})


@pytest.fixture
def app(fast):
    from api.app import create_app

    migrate(fast.database_url)
    return create_app(fast)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def db(fast) -> Iterator[Database]:
    migrate(fast.database_url)
    database = Database(fast.database_url)
    yield database
    database.dispose()


# Moving jobs as a worker does, through the queue's fenced calls.


def submit(db: Database, **fields: Any) -> str:
    spec = job_spec_adapter.validate_python({"architecture": "fc", "seed": 1, **fields})
    with db.write() as session:
        job, _ = lifecycle.enqueue(session, spec, default_max_attempts=3)
        return job.id


def claim(db: Database) -> Claim:
    with db.write() as session:
        claims = leases.claim(session, "worker-1", 60)
    assert len(claims) == 1
    return claims[0]


def train(db: Database, lease: Claim) -> None:
    """A heartbeat with progress and step losses, then an epoch recorded."""
    with db.write() as session:
        leases.heartbeat(session, lease, 60, PROGRESS)
        leases.record_steps(session, lease, [StepMetrics(step=5, epoch=1, samples=320, loss=0.7)])
    with db.write() as session:
        record = EpochRecord(epoch=1, train_loss=0.6, test_loss=0.5, test_accuracy=0.9, correct=180)
        leases.record_epoch(session, lease, record, StoredFile("jobs/x/1.pt", "a" * 64, 10))


def finish(db: Database, lease: Claim) -> None:
    last = [StepMetrics(step=10, epoch=1, samples=600, loss=0.4)]
    with db.write() as session:
        leases.finish(session, lease, result(0.9), PROGRESS.model_copy(update={"fraction": 1.0}), steps=last)


def stored(db: Database, job_id: str | None = None, after: int = 0) -> list[StoredEvent]:
    with db.read() as session:
        return events.after(session, after, limit=10_000, job_id=job_id)


def statuses(db: Database, job_id: str) -> list[tuple[str, bool]]:
    return [
        (e.payload.status.value, e.payload.cancel_requested)
        for e in stored(db, job_id)
        if isinstance(e.payload, StatusEvent)
    ]


# Reading a stream.


@dataclass
class Message:
    event: str
    id: int | None
    data: Any


@dataclass
class Reader:
    """Events and comments of a text/event-stream, read as they come; a deadline guards each read
    against a hang (the keep-alive comments keep lines coming)."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    last_id: int | None = None
    ended: bool = False

    def __post_init__(self) -> None:
        self.lines = self.response.iter_lines()

    def next(self, timeout: float = 30) -> Message | None:
        """The next event, or None once the stream has ended."""
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in self.lines:
            assert time.monotonic() < deadline, "no event within the deadline"
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line:
                name, _, value = line.partition(":")
                if name == "data":
                    data.append(value.removeprefix(" "))
                else:
                    fields[name] = value.removeprefix(" ")
            else:
                if "id" in fields:
                    self.last_id = int(fields["id"])
                if data:
                    return Message(fields.get("event", "message"), self.last_id, json.loads("\n".join(data)))
                fields.clear()
        self.ended = True
        return None

    def started(self) -> int:
        """The id a stream of all jobs starts after (its first comment but keep-alives, which on a busy
        machine may go out before it): the events after it come."""
        first = next(line for line in self.lines if line not in ("", ": keep-alive"))
        assert first.startswith(": live events after id "), first
        return int(first.rsplit(" ", 1)[1])

    def event(self) -> Message:
        """The next event, which must come."""
        message = self.next()
        assert message is not None, "the stream ended"
        return message

    def rest(self) -> list[Message]:
        """Every event to the stream's end."""
        found = []
        while (message := self.next()) is not None:
            found.append(message)
        return found


def kinds(messages: list[Message]) -> list[str]:
    return [m.event if m.event != "status" else f"status:{m.data['status']}" for m in messages]


def label(event: StoredEvent) -> str:
    return f"status:{event.payload.status}" if isinstance(event.payload, StatusEvent) else event.kind.value


# The outbox


def test_each_change_writes_its_event_in_its_transaction_the_end_after_the_last_losses(db):
    job_id = submit(db)
    lease = claim(db)
    train(db, lease)
    finish(db, lease)
    found = stored(db, job_id)
    assert [label(e) for e in found] == [
        "status:queued", "status:running", "progress", "step", "epoch", "step", "status:succeeded",
    ]  # fmt: skip
    assert [e.id for e in found] == sorted(e.id for e in found)
    queued, running, progress, steps, epoch, last_steps, succeeded = (e.payload.model_dump() for e in found)
    assert queued == {
        "job_id": job_id, "status": "queued", "attempt": 0, "worker_id": None, "error": None, "cancel_requested": False,
    }  # fmt: skip
    assert running["status"] == "running" and running["attempt"] == 1 and running["worker_id"] == "worker-1"
    assert progress == {"job_id": job_id, **PROGRESS.model_dump()}
    assert steps == {"job_id": job_id, "steps": [{"step": 5, "epoch": 1, "samples": 320, "loss": 0.7}]}
    assert epoch == {"job_id": job_id, "epoch": 1, "train_loss": 0.6, "test_loss": 0.5, "test_accuracy": 0.9}
    assert last_steps["steps"][0]["step"] == 10
    assert succeeded["status"] == "succeeded" and succeeded["attempt"] == 1
    assert found[-1].ends_job and not any(e.ends_job for e in found[:-1])


def test_a_fenced_write_that_raises_lease_lost_leaves_no_event(db):
    first, second = submit(db), submit(db, seed=2)
    with db.write() as session:
        held, lost = leases.claim(session, "worker-1", 60, limit=2)
    with db.write() as session:  # another claim took `lost` since
        session.execute(update(Job).where(Job.id == lost.job_id).values(lease_token="someone-else"))
    before = stored(db)

    def steps_then_fail() -> None:  # the runner's last write: the step losses left, then the ending
        with db.write() as session:
            leases.record_steps(session, held, [StepMetrics(step=5, epoch=1, samples=320, loss=0.7)])
            leases.fail(session, lost, "boom")

    with pytest.raises(LeaseLost):
        steps_then_fail()
    with pytest.raises(LeaseLost), db.write() as session:
        leases.heartbeat(session, lost, 60, PROGRESS)
    assert stored(db) == before, "the step event written before the lost lease was rolled back with it"
    assert {e.job_id for e in before} == {first, second}


def test_every_status_change_has_its_event(db, fast):
    job_id = submit(db)
    lease = claim(db)
    with db.write() as session:
        leases.hand_back(session, lease, None)  # queued again
    lease = claim(db)
    with db.write() as session:  # the worker died: its lease expires, the reaper requeues the job
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        assert reaper.reap(session, **BACKOFF) == [job_id]
        session.execute(update(Job).where(Job.id == job_id).values(run_after=utcnow()))
    lease = claim(db)
    with db.write() as session:
        lifecycle.cancel(session, job_id)  # running: flagged
    with db.write() as session:
        leases.mark_cancelled(session, lease)
    assert statuses(db, job_id) == [
        ("queued", False), ("running", False), ("queued", False), ("running", False), ("queued", False),
        ("running", False), ("running", True), ("cancelled", True),
    ]  # fmt: skip

    queued = submit(db, seed=3)
    with db.write() as session:
        lifecycle.cancel(session, queued)
    assert statuses(db, queued) == [("queued", False), ("cancelled", True)]
    failing = submit(db, seed=4)
    lease = claim(db)
    with db.write() as session:
        leases.fail(session, lease, "boom")
    assert statuses(db, failing)[-1] == ("failed", False)

    original = submit(db, seed=5, reuse=True)
    finish(db, claim(db))
    with db.write() as session:  # the same spec again: answered by reuse, created succeeded
        spec = job_spec_adapter.validate_python({"architecture": "fc", "seed": 5, "reuse": True})
        copy, created = lifecycle.enqueue(
            session, spec, default_max_attempts=3, reuse=ReusePolicy.from_settings(fast, open_store(fast))
        )
        assert created and copy.reused_from == original
    assert statuses(db, copy.id) == [("succeeded", False)]


def test_tidy_prunes_old_events_and_ids_never_restart(db):
    old, recent = submit(db), submit(db, seed=2)
    with db.write() as session:
        session.execute(update(Event).where(Event.job_id == old).values(created_at=utcnow() - timedelta(hours=2)))
    with db.write() as session:
        tidy(session, events_keep_seconds=3600)
    assert [e.job_id for e in stored(db)] == [recent]
    with db.write() as session:
        newest = events.latest_id(session)
        assert events.prune(session, 0) == 1  # everything older than now
    assert stored(db) == []
    third = submit(db, seed=3)
    assert [(e.job_id, e.id > newest) for e in stored(db)] == [(third, True)], "ids continue (AUTOINCREMENT)"


def test_migration_0006_adds_the_events_table_and_its_downgrade_drops_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url, "0006")
    engine = make_engine(url)
    assert "events" in inspect(engine).get_table_names()
    command.downgrade(alembic_config(url), "0005")
    assert "events" not in inspect(engine).get_table_names()
    upgrade(url)
    assert "events" in inspect(engine).get_table_names()
    engine.dispose()


# The streams


def test_a_job_stream_from_snapshot_to_its_end(client, db):
    job_id = client.post("/v1/jobs", json={"architecture": "fc"}).json()["id"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = Reader(response)
        snapshot = reader.event()
        assert snapshot.event == "job"
        assert snapshot.data == client.get(f"/v1/jobs/{job_id}").json(), "the job as GET /v1/jobs/{id} shows it"
        assert snapshot.id == max(e.id for e in stored(db)), "its id: the newest event's"
        lease = claim(db)  # from here on, live
        train(db, lease)
        finish(db, lease)
        rest = reader.rest()
    assert reader.ended, "the stream ended by itself after the final status"
    assert kinds(rest) == ["status:running", "progress", "step", "epoch", "step", "status:succeeded"]
    assert [m.id for m in rest] == [e.id for e in stored(db, job_id)][1:], "the queued event was in the snapshot"
    assert rest[2].data["steps"] == [{"step": 5, "epoch": 1, "samples": 320, "loss": 0.7}]
    assert rest[3].data["test_accuracy"] == 0.9

    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:  # ended: the snapshot, then the end
        assert [m.event for m in Reader(response).rest()] == ["job"]


def test_last_event_id_resumes_with_exactly_the_events_after_it(client, db):
    job_id, other = submit(db), submit(db, seed=2)
    lease = claim(db)
    claim(db)  # the other job's events are in between, and never in this job's stream
    train(db, lease)
    finish(db, lease)
    mine = stored(db, job_id)
    after = mine[2].id  # queued, running, then from progress on
    expected = [(e.kind.value, e.id, e.payload.model_dump(mode="json")) for e in mine if e.id > after]

    def resumed(**kwargs: Any) -> list[tuple[str, int | None, Any]]:
        with client.stream("GET", f"/v1/jobs/{job_id}/events", **kwargs) as response:
            return [(m.event, m.id, m.data) for m in Reader(response).rest()]

    assert resumed(headers={"Last-Event-ID": str(after)}) == expected
    assert resumed(params={"last_event_id": after}) == expected
    assert resumed(params={"last_event_id": 0}, headers={"Last-Event-ID": str(after)}) == expected, "the header wins"
    assert resumed(headers={"Last-Event-ID": str(mine[-1].id)}) == [], "it had seen the end: the stream just ends"
    newest = stored(db)[-1].id
    assert [kind for kind, _, _ in resumed(headers={"Last-Event-ID": str(newest + 1)})] == ["job"], "not an id given"
    assert other in {e.job_id for e in stored(db)}

    with db.write() as session:  # the events after `after` are pruned: a resume starts over with a snapshot
        events.prune(session, 0)
    assert [kind for kind, _, _ in resumed(headers={"Last-Event-ID": str(after)})] == ["job"]


def test_an_unknown_job_is_a_404_problem_and_unknown_parameters_a_422(client):
    missing = client.get("/v1/jobs/00000000-0000-0000-0000-000000000001/events")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["field"] == "id"
    assert client.get("/v1/events", params={"job": "x"}).status_code == 422
    assert client.get("/v1/events", headers={"Last-Event-ID": "soon"}).status_code == 422


def test_the_stream_of_all_jobs_carries_every_jobs_events_and_keep_alives(client, db):
    with client.stream("GET", "/v1/events") as response:
        reader = Reader(response)
        reader.started()
        first, second = submit(db), submit(db, seed=2, architecture="cnn")
        lease = claim(db)
        seen = [reader.event() for _ in range(3)]
        with client.stream("GET", "/v1/events", headers={"Last-Event-ID": str(seen[0].id)}) as again:
            resumed = Reader(again)
            assert [resumed.event(), resumed.event()] == seen[1:], "a resume replays the stored events after it"
        with client.stream("GET", "/v1/events", headers={"Last-Event-ID": "999999"}) as elsewhere:
            newest = seen[-1].id
            assert next(elsewhere.iter_lines()) == f": live events after id {newest}", "an id not given out: live"
        time.sleep(PING_SECONDS * 3)  # idle: keep-alive comments only
        train(db, lease)
        assert reader.event().event == "progress"
    assert [(m.event, m.data["job_id"], m.data["status"]) for m in seen] == [
        ("status", first, "queued"), ("status", second, "queued"), ("status", first, "running"),
    ]  # fmt: skip
    assert "keep-alive" in reader.comments


def test_a_slow_client_is_dropped_and_holds_up_no_other(app, client, db):
    app.state.events.queue_max = 5
    submit(db)
    with client.stream("GET", "/v1/events") as slow, client.stream("GET", "/v1/events") as quick:
        slow_reader, quick_reader = Reader(slow), Reader(quick)
        assert slow_reader.started() == quick_reader.started()
        lease = claim(db)
        assert quick_reader.event().data["status"] == "running"
        for step in range(1, 21):  # the quick client reads each event; nobody reads the slow one
            with db.write() as session:
                leases.heartbeat(session, lease, 60, PROGRESS.model_copy(update={"step": step}))
            assert quick_reader.event().data["step"] == step
        behind = slow_reader.rest()  # only now is the slow stream read again
    assert slow_reader.ended, "the slow stream was ended"
    # What it had: the event it was sending when it stopped being read (the test client buffers
    # nothing), and the 5 its queue held.
    assert kinds(behind) == ["status:running", *["progress"] * 5]
    assert slow_reader.comments[-1].startswith("dropped: more than 5 events behind")


def test_a_missing_id_holds_back_the_later_ones_only_where_commits_may_lag(db, database_kind):
    def event(event_id: int) -> StoredEvent:
        fields = {"attempt": 0, "worker_id": None, "error": None, "cancel_requested": False}
        return StoredEvent(event_id, "j", StatusEvent(job_id="j", status=JobStatus.queued, **fields))

    hub = Broadcaster(db, poll_seconds=1, queue_max=10, hold_gaps=True)
    # SQLite commits in id order; on PostgreSQL a later id may commit before an earlier one
    assert Broadcaster(db, poll_seconds=1, queue_max=10).hold_gaps is (database_kind == "postgresql")

    def ready(ids: list[int], now: float) -> list[int]:
        return [e.id for e in hub._ready([event(i) for i in ids], now)]

    assert ready([1, 2, 4], now=100.0) == [1, 2]
    assert ready([4], now=100.0 + GAP_WAIT_SECONDS / 2) == [], "3 may still commit (PostgreSQL)"
    assert ready([3, 4], now=100.0 + GAP_WAIT_SECONDS / 2) == [3, 4]
    assert ready([6], now=200.0) == []
    assert ready([6, 7], now=200.0 + GAP_WAIT_SECONDS) == [6, 7], "past the wait, 5 counts as rolled back"
    assert hub.last_id == 7


def test_the_openapi_document_describes_both_streams(client):
    document = client.get("/openapi.json").json()
    for path, kinds_sent in (("/v1/jobs/{job_id}/events", 5), ("/v1/events", 4)):
        ok = document["paths"][path]["get"]["responses"]["200"]
        event = ok["content"]["text/event-stream"]["schema"]
        assert len(event["properties"]["event"]["enum"]) == kinds_sent
        assert len(event["properties"]["data"]["contentSchema"]["oneOf"]) == kinds_sent
    text = json.dumps(document)
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs <= set(document["components"]["schemas"]), "every schema referenced is there"
    assert "$defs" not in json.dumps(document["paths"]["/v1/events"])
