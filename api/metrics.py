"""GET /metrics: the service in Prometheus' text format (prometheus-client, one registry per app).

Two sources:
- HttpMetrics, an ASGI middleware: every answer counted by method, route template (e.g.
  `/v1/jobs/{job_id}`, never the raw path, so the series stay few) and status, with its latency.
- DatabaseCollector, read at scrape time from the database the workers write (service/platform/metrics.py
  holds the SQL): jobs by status, the queue, the workers' heartbeats, and two figures fed from
  what changed since the previous scrape: the job duration histogram (jobs that ended since) and
  the training samples counter (how far each job's recorded steps moved).

With API tokens configured a scrape needs a read token (Prometheus: `authorization: {credentials:
...}` in the scrape config); open mode answers anyone, like the rest of the API.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import require
from service.platform import metrics as queries
from service.platform.auth import Role
from service.platform.db import Database
from service.platform.models import utcnow

PREFIX = "mnist_jobs"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other: "OTHER"
UNMATCHED = "unmatched"  # the route label of a path no route answers (bounded: never the raw path)
JOB_SECONDS_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))
# A job's finished_at is stamped inside its worker's write transaction, a moment before the commit
# makes it visible: each scrape looks back this far past its high-water mark, and skips the ids it
# already counted, so a row that commits late is still counted once.
LATE_COMMIT = timedelta(seconds=60)
RATE_WINDOW_SECONDS = 60.0  # samples/s is averaged over about the last minute of scrapes


class Metrics:
    """One app's registry and the HTTP families its middleware feeds."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer, by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(DatabaseCollector(app))

    def route_of(self, scope: Scope) -> str:
        """The template of the route that answered (or would have: a guard may answer first)."""
        route = scope.get("route")
        if route is not None:
            return str(getattr(route, "path", UNMATCHED))
        return template(self.app.router.routes, scope)


def template(routes: Iterable[BaseRoute], scope: Scope) -> str:
    partial = None
    for route in flat(routes):
        match, _ = route.matches(scope)
        path = getattr(route, "path", None)
        if match is Match.FULL:
            return str(path or UNMATCHED)
        if match is Match.PARTIAL and partial is None:  # the path matched, the method did not (405)
            partial = path
    return str(partial or UNMATCHED)


def flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes, with an included router's own routes (which carry the full path) in its place."""
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        yield from flat(inner) if inner is not None else (route,)


class HttpMetrics:
    """Counts each answer and times it; outside the guards, so their 400/413/415s are counted too."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the server's error handler answers when the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            route = self.metrics.route_of(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)


class DatabaseCollector(Collector):
    """The queue's figures, read through the app's Database at each scrape."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.started = utcnow()  # jobs that ended before this process started are not counted
        self._lock = threading.Lock()  # two scrapes at once must not count one ending twice
        self.durations = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "Seconds from a job's (last) start to its end, for jobs that ended while this API process "
            "ran, by final status and architecture",
            ["status", "architecture"],
            buckets=JOB_SECONDS_BUCKETS,
            registry=None,  # fed and yielded by collect(), so a scrape shows what it just fed
        )
        self.samples = Counter(
            f"{PREFIX}_training_samples",
            "Training samples trained by all workers, summed over jobs, since this API process started "
            "(from each job's recorded steps; a packed job counts its own samples)",
            registry=None,
        )
        self._mark = self.started  # high-water mark of the finished_at values counted
        self._counted: dict[str, datetime] = {}  # ids counted with finished_at within LATE_COMMIT of the mark
        self._seen: dict[str, int] | None = None  # samples per unfinished job at the last scrape
        self._total = 0  # the samples counter's value
        self._totals: deque[tuple[float, int]] = deque()  # (monotonic s, samples counter) per scrape

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query the database (the app may not have started)

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_database_up", "1 when the scrape could read the database, else 0")
        db: Database | None = getattr(self.app.state, "db", None)
        if db is None:
            up.add_metric([], 0)
            return [up]
        try:
            with self._lock, db.read() as session:
                families = self._read(session)
        except SQLAlchemyError:
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]

    def _read(self, session: Session) -> list[Metric]:
        now = utcnow()
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs in the database, by status", labels=["status"])
        for status, count in queries.jobs_by_status(session).items():
            jobs.add_metric([str(status)], count)
        queue = queries.queue_summary(session, now)
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Queued jobs a worker may claim now (backoff passed)")
        depth.add_metric([], queue.runnable)
        oldest = GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_age_seconds", "Age of the oldest queued job (since submission); 0 when none"
        )
        oldest.add_metric(
            [], 0.0 if queue.oldest_created_at is None else (now - queue.oldest_created_at).total_seconds()
        )
        ended = self._feed_durations(session)
        return [
            jobs,
            depth,
            oldest,
            *self._workers(session, now),
            *self.durations.collect(),
            *self._rates(session, ended),
        ]

    def _workers(self, session: Session, now: datetime) -> list[Metric]:
        alive = queries.live_workers(session)
        count = GaugeMetricFamily(f"{PREFIX}_workers", "Worker processes alive (registered, not stopped or gone)")
        count.add_metric([], len(alive))
        age = GaugeMetricFamily(
            f"{PREFIX}_worker_heartbeat_age_seconds",
            "Seconds since each live worker was last seen (a busy one beats every heartbeat, an idle one "
            "every MNIST_JOBS_REAP_SECONDS; past MNIST_JOBS_LEASE_SECONDS it is marked gone)",
            labels=["worker", "host", "device"],
        )
        for worker in alive:
            age.add_metric([worker.id, worker.host, worker.device], (now - worker.last_seen_at).total_seconds())
        return [count, age]

    def _feed_durations(self, session: Session) -> list[str]:
        """Observe each job that ended since the last scrape once; returns their ids."""
        ended = []
        for job in queries.ended_since(session, self._mark - LATE_COMMIT):
            if job.id in self._counted or job.finished_at <= self.started:
                continue
            self.durations.labels(job.status, job.architecture).observe(max(job.seconds, 0.0))
            self._counted[job.id] = job.finished_at
            self._mark = max(self._mark, job.finished_at)
            ended.append(job.id)
        horizon = self._mark - LATE_COMMIT
        self._counted = {job_id: at for job_id, at in self._counted.items() if at > horizon}
        return ended

    def _rates(self, session: Session, ended: list[str]) -> list[Metric]:
        """Feed the samples counter with how far each job's recorded steps moved since the last
        scrape; the samples/s gauge is the counter's rise over about the last minute of scrapes."""
        current = queries.samples_seen(session, set(self._seen or ()) | set(ended))
        if self._seen is not None:  # the first scrape only takes the baseline
            # A job first seen now started since (it ran and ended in between, or was claimed); a
            # retried attempt that re-trains steps lowers its figure: the steps trained again count.
            rise = sum(max(0, job.samples - self._seen.get(job_id, 0)) for job_id, job in current.items())
            self.samples.inc(rise)
            self._total += rise
        self._seen = {job_id: job.samples for job_id, job in current.items() if not job.status.is_final}
        total = self._total
        mono = time.monotonic()
        self._totals.append((mono, total))
        while len(self._totals) > 2 and self._totals[1][0] <= mono - RATE_WINDOW_SECONDS:
            self._totals.popleft()
        families = list(self.samples.collect())
        if len(self._totals) >= 2 and mono > self._totals[0][0]:
            rate = GaugeMetricFamily(
                f"{PREFIX}_training_samples_per_second",
                "Training samples per second over about the last minute of scrapes (all workers)",
            )
            rate.add_metric([], (total - self._totals[0][1]) / (mono - self._totals[0][0]))
            families.append(rate)
        return families


def install(app: FastAPI) -> Metrics:
    """Add GET /metrics to `app`; the caller adds HttpMetrics (its place among the middleware matters)."""
    metrics = Metrics(app)
    app.state.metrics = metrics

    @app.get(
        "/metrics",
        tags=["health"],
        dependencies=[require(Role.read)],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}, "description": "Prometheus text format"}},
    )
    def scrape_metrics(request: Request) -> Response:
        """The service's metrics in Prometheus' text format (OpenMetrics when the Accept header asks
        for it); a read token when tokens are configured."""
        encode, media_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(metrics.registry), media_type=media_type)

    return metrics
