"""A real `mnist-jobs serve`: an exception no handler takes is a problem+json 500 with the request
id, and the keep-alive connection it came on answers the next request (uvicorn drops a connection
whose app raised after Starlette's own text/plain 500 went out)."""

from __future__ import annotations

import json
import socket
import sqlite3

import httpx

from api.errors import PROBLEM_JSON


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, read off the socket (nothing more)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection; read so far: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection inside a body"
        body += chunk
    assert len(body) == length
    return int(status_line.split()[1]), headers, body


def get(sock: socket.socket, port: int, path: str, request_id: str) -> tuple[int, dict[str, str], bytes]:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Request-ID: {request_id}\r\n\r\n"
    sock.sendall(request.encode())
    return read_response(sock)


def test_a_500_is_a_problem_and_the_connection_stays_usable(live_server, settings):
    server = live_server(workers=0)
    job = httpx.post(f"{server.url}/v1/jobs", json={"architecture": "fc"}, timeout=30).json()["id"]
    # A row no version of the service writes (a database edited by hand): reading it fails in a
    # way no handler expects.
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as connection:
        connection.execute("UPDATE jobs SET status = 'bogus' WHERE id = ?", (job,))
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        status, headers, body = get(sock, server.port, f"/v1/jobs/{job}", "first-500")
        assert status == 500 and headers["content-type"] == PROBLEM_JSON
        assert headers["x-request-id"] == "first-500"
        assert headers.get("connection", "keep-alive").lower() != "close"
        problem = json.loads(body)
        assert problem["status"] == 500 and problem["title"] == "Internal error"
        assert b"Traceback" not in body and b".py" not in body and b"bogus" not in body
        # The same socket: the server kept the connection open and answers on it.
        status, headers, body = get(sock, server.port, "/healthz/live", "second")
        assert status == 200 and headers["x-request-id"] == "second" and json.loads(body) == {"status": "ok"}
        status, headers, _ = get(sock, server.port, f"/v1/jobs/{job}", "third-500")
        assert status == 500 and headers["x-request-id"] == "third-500"
