"""Revocation and expiry reach open event streams: a live `mnist-jobs serve`, real httpx streams
held open in threads, and the tokens file changed by the real `mnist-jobs tokens` commands.

The deadlines here only guard against a hang; the measured seconds are printed (pytest -s), and the
budget they are held to (5 s) is the bench's business, not an assertion."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx

from service.platform import auth
from tests.support.processes import LiveServer, run_cli
from tests.support.settings import settings_env

HANG_GUARD_SECONDS = 120  # a stream that never ends fails here, not by a timer on its speed


class Stream(threading.Thread):
    """A GET of an event stream, read line by line to its end in a thread."""

    def __init__(self, server: LiveServer, path: str, token: str) -> None:
        super().__init__(daemon=True)  # one that never ends must not hold the test run open
        self.url, self.path, self.token = server.url, path, token
        self.status: int | None = None
        self.lines: list[str] = []
        self.opened = threading.Event()  # the first line arrived
        self.ended_at: float | None = None
        self.start()
        assert self.opened.wait(HANG_GUARD_SECONDS), "the stream sent nothing"
        assert self.status == 200, self.status

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            with (
                httpx.Client(base_url=self.url, timeout=httpx.Timeout(30, read=HANG_GUARD_SECONDS)) as http,
                http.stream("GET", self.path, headers=headers) as response,
            ):
                self.status = response.status_code
                for line in response.iter_lines():
                    self.lines.append(line)
                    self.opened.set()
        finally:
            self.ended_at = time.monotonic()
            self.opened.set()

    def ended_within(self, since: float) -> float:
        self.join(HANG_GUARD_SECONDS)
        assert not self.is_alive(), f"{self.path} did not end"
        assert self.ended_at is not None
        return self.ended_at - since

    @property
    def last_comment(self) -> str:
        return [line for line in self.lines if line.startswith(":") and "keep-alive" not in line][-1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_revoked_tokens_open_streams_end_and_the_others_stay(settings, live_server, tmp_path):
    path = tmp_path / "tokens"
    admin, _ = auth.create(path, auth.Role.admin)
    reader, reader_known = auth.create(path, auth.Role.read)
    # No worker: the job stays queued, so its stream would stay open for good.
    server = live_server(workers=0, api_tokens_file=str(path), events_ping_seconds=1)
    job = server.client.post("/v1/jobs", json={"architecture": "fc"}, headers=bearer(admin)).json()["id"]
    everything = Stream(server, "/v1/events", reader)
    one_job = Stream(server, f"/v1/jobs/{job}/events", reader)
    kept = Stream(server, "/v1/events", admin)

    revoked = run_cli(settings_env(settings), "tokens", "revoke", reader_known.id, "--file", str(path), timeout=120)
    assert revoked.returncode == 0, revoked.stderr
    since = time.monotonic()
    seconds = [everything.ended_within(since), one_job.ended_within(since)]
    print(f"\nrevoked token's streams ended {seconds[0]:.2f} s and {seconds[1]:.2f} s after `tokens revoke` returned")
    for stream in (everything, one_job):
        assert "ended: the bearer token is not known" in stream.last_comment, stream.lines[-3:]
    assert server.client.get("/v1/jobs", headers=bearer(reader)).status_code == 401

    # The admin's stream is still open and still delivers.
    assert kept.is_alive()
    cancelled = server.client.post(f"/v1/jobs/{job}/cancel", headers=bearer(admin))
    assert cancelled.status_code in (200, 202), cancelled.text
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not any(line == "event: status" for line in kept.lines):
        assert time.monotonic() < deadline and kept.is_alive(), kept.lines
        time.sleep(0.05)


def test_an_expired_tokens_streams_and_calls_end(live_server, tmp_path):
    path = tmp_path / "tokens"
    admin, _ = auth.create(path, auth.Role.admin)
    # Long enough to open the streams on a busy machine; how soon after it they end is printed.
    reader, known = auth.create(path, auth.Role.read, timedelta(seconds=8))
    assert known.expires is not None
    server = live_server(workers=0, api_tokens_file=str(path), events_ping_seconds=1)
    job = server.client.post("/v1/jobs", json={"architecture": "fc"}, headers=bearer(admin)).json()["id"]
    assert server.client.get(f"/v1/jobs/{job}", headers=bearer(reader)).status_code == 200
    streams = [Stream(server, "/v1/events", reader), Stream(server, f"/v1/jobs/{job}/events", reader)]

    expires_at = time.monotonic() + (known.expires - auth.now_utc()).total_seconds()
    seconds = [stream.ended_within(expires_at) for stream in streams]
    print(f"\nexpired token's streams ended {seconds[0]:.2f} s and {seconds[1]:.2f} s after its expiry")
    for stream in streams:
        assert "ended: the bearer token has expired" in stream.last_comment, stream.lines[-3:]
    refused = server.client.get(f"/v1/jobs/{job}", headers=bearer(reader))
    assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
    assert server.client.get(f"/v1/jobs/{job}", headers=bearer(admin)).status_code == 200


def test_a_tokens_file_that_breaks_while_serving_is_logged_and_not_ready(live_server, tmp_path):
    path = tmp_path / "tokens"
    admin, _ = auth.create(path, auth.Role.admin)
    server = live_server(workers=0, api_tokens_file=str(path))
    good = path.read_text()
    path.write_text(good + "a-plain-secret-pasted-by-mistake\n")
    ready = server.client.get("/healthz/ready")
    assert ready.status_code == 503 and "tokens file" in ready.json()["detail"] and "line 2" in ready.json()["detail"]
    assert server.client.get("/v1/jobs", headers=bearer(admin)).status_code == 200, "the last good set serves"
    path.write_text(good + "\n# a comment\nanother-broken-line\n")
    assert server.client.get("/healthz/ready").status_code == 503
    path.write_text(good)
    assert server.client.get("/healthz/ready").status_code == 200
    server.stop()
    log = Path(tmp_path / "serve-0.log").read_text()
    errors = [line for line in log.splitlines() if "tokens file" in line and "cannot be parsed" in line]
    assert len(errors) == 2 and "line 2" in errors[0] and "line 4" in errors[1], errors
    assert "secret" not in log and "another-broken" not in log
