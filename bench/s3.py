"""An S3 server for tests and benchmarks: moto's standalone server (from PyPI), behind a TCP relay
that can cut it off.

`start()` runs `python -m moto.server` on a free port of 127.0.0.1 and a relay on another; clients
talk to the relay (`Server.endpoint`). `Server.outage(seconds)` makes the store unreachable the way
a restart or a network cut does: the relay drops every open connection and refuses new ones, then
listens again (`outages` records when each began and ended). The objects stay: moto keeps them in
memory and keeps running. `Server.env()` is what a process needs to reach it with boto3's own
variables. The server and relay stop with `close()`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import boto3
import httpx

from bench.postgres import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
START_TIMEOUT_S = 60


class Relay:
    """A TCP relay from a port of 127.0.0.1 to `target`, which `cut` closes for a while."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        self.listen()

    def listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                self._close(end)

    def _close(self, end: socket.socket) -> None:
        with self.lock:
            self.open.discard(end)
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self.listener is not None:
            # shutdown wakes the accept() blocked on it and stops listening (close alone does neither on Linux)
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        with self.lock:
            ends = list(self.open)
        for end in ends:
            self._close(end)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    relay: Relay
    outages: list[tuple[float, float]] = field(default_factory=list)  # (start, end) monotonic times

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.relay.port}"

    def env(self) -> dict[str, str]:
        """boto3's variables for this server (the endpoint, a region, test credentials)."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self) -> S3Client:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )

    def new_bucket(self) -> str:
        bucket = f"mnist-jobs-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str) -> list[str]:
        """Every object name in `bucket`, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def outage(self, seconds: float) -> None:
        """The store unreachable for `seconds` (blocks that long)."""
        self.outage_in_background(seconds).join()

    def outage_in_background(self, seconds: float) -> threading.Thread:
        """Cut the store off now, and bring it back after `seconds` in a thread (returned). The
        outage's end is recorded before the relay listens again: nothing reaches the store before it."""
        started = time.monotonic()
        self.relay.cut()

        def end() -> None:
            time.sleep(seconds)
            self.outages.append((started, time.monotonic()))
            self.relay.listen()

        thread = threading.Thread(target=end, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.relay.cut()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start() -> Server:
    """moto's server and its relay; RuntimeError saying why when moto will not start."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **CREDENTIALS},
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto's S3 server exited at start ({proc.returncode}); is moto[server] installed?")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return Server(proc, Relay(free_port(), port))
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto's S3 server did not answer within {START_TIMEOUT_S} s")
