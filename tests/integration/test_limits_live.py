"""The HTTP server's own limits, against a live `mnist-jobs serve` (api/server.py): a head over
MNIST_JOBS_MAX_HEADER_BYTES is a 431 problem at once, a client that trickles its head or body is
cut with a 408 after MNIST_JOBS_REQUEST_READ_TIMEOUT_SECONDS, and neither holds up other callers.

Raw sockets: httpx would not send a request that never ends. Deadlines here guard against hangs."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest

from tests.support.processes import LiveServer

READ_TIMEOUT_S = 1.0
HEAD = b"GET /healthz/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture
def served(live_server) -> LiveServer:
    server: LiveServer = live_server(workers=0, request_read_timeout_seconds=READ_TIMEOUT_S)
    return server


def connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, object]]:
    """Status, headers and problem body of one answer after which the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def send_until_refused(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server stopped reading
        sock.sendall(data)


@pytest.mark.parametrize("megabytes", [1, 64])
def test_a_huge_header_is_a_431_problem_at_once_and_others_are_answered_meanwhile(served, megabytes):
    sock = connect(served)
    sender = threading.Thread(
        target=send_until_refused, args=(sock, HEAD + b"X-Big: " + b"a" * (megabytes << 20) + b"\r\n\r\n")
    )
    sender.start()
    status, headers, problem = answer(sock)
    sender.join(timeout=30)
    sock.close()
    assert status == 431 and headers["content-type"] == "application/problem+json"
    assert problem["status"] == 431 and "MNIST_JOBS_MAX_HEADER_BYTES" in str(problem["detail"])
    assert len(headers["x-request-id"]) == 32
    assert served.client.get("/healthz/live").status_code == 200


def test_too_many_header_fields_are_a_431_naming_them(served):
    headers = {f"X-Field-{i}": "1" for i in range(150)}
    response = served.client.get("/v1/jobs", headers=headers)
    assert response.status_code == 431 and response.json()["field"] == "headers"


@pytest.mark.parametrize(
    "request_start",
    [
        pytest.param(HEAD, id="head trickled"),
        pytest.param(
            b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{",
            id="body trickled",
        ),
        pytest.param(b"", id="nothing sent"),
    ],
)
def test_a_slow_client_is_cut_with_a_408_and_others_are_answered_meanwhile(served, request_start):
    # Timed from before the connection exists: the server's read timeout starts once it accepts,
    # which may be a moment before connect() returns here.
    started, cut = time.monotonic(), threading.Event()
    sock = connect(served)
    sock.sendall(request_start)

    def trickle() -> None:  # a byte every 0.2 s: each arrives well within any idle timeout
        while not cut.wait(0.2):
            try:
                sock.sendall(b"X" if request_start == HEAD else b" ")
            except OSError:
                return

    if request_start:
        threading.Thread(target=trickle, daemon=True).start()
    for _ in range(5):  # the server answers others while this client holds its connection
        assert served.client.get("/healthz/live").status_code == 200
    status, _headers, problem = answer(sock)
    cut.set()
    sock.close()
    assert status == 408 and "MNIST_JOBS_REQUEST_READ_TIMEOUT_SECONDS" in str(problem["detail"])
    assert time.monotonic() - started >= READ_TIMEOUT_S


def test_a_request_sent_whole_in_time_is_answered_and_the_connection_kept(served):
    sock = connect(served)
    for _ in range(3):  # three requests on one kept-alive connection, each one read whole in time
        sock.sendall(HEAD + b"\r\n")
        reply = b""
        while not reply.endswith(b'{"status":"ok"}'):
            chunk = sock.recv(65536)
            assert chunk, f"the connection was closed after {reply[:100]!r}"
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
        time.sleep(READ_TIMEOUT_S * 1.5)  # idle between requests is the keep-alive timer's, not this one's
    sock.close()
