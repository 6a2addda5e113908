"""The attacks of bench/attacks.py, each an async function `(target, seconds) -> what it saw`: bounded
in time (every task still running `GRACE_S` after its deadline is cancelled) and in count, loopback
only. What an attack saw is a dict: `seen` counts answers (status codes, or how a connection ended),
and the other keys are the attack's own figures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.attack_probe import command, descendants
from bench.attack_urls import hostile_urls

GRACE_S = 15.0
CHUNK = b"a" * (1 << 20)
Result = dict[str, Any]


@dataclass
class Target:
    host: str
    port: int
    tokens: dict[str, str]  # attack name (or "submit") -> its own token, so one attack's bucket is not the next's
    job_id: str
    api_pid: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, token: str, connections: int = 100, timeout: float = 30) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        auth = {"Authorization": f"Bearer {token}"}
        return httpx.AsyncClient(base_url=self.url, headers=auth, limits=limits, timeout=timeout)


async def until(deadline: float, coros: Iterable[Coroutine[Any, Any, None]], grace: float = GRACE_S) -> int:
    """Run `coros` together; cancel those still running `grace` past `deadline`. How many were cancelled."""
    tasks = [asyncio.create_task(c) for c in coros]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline + grace - time.monotonic()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


def seconds_summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median_s": None, "max_s": None}
    return {"median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3)}


def status_line(line: bytes) -> str:
    parts = line.decode(errors="replace").split()
    return parts[1] if len(parts) > 1 and parts[0].startswith("HTTP/") else "no answer"


async def answer_of(reader: asyncio.StreamReader) -> tuple[str, float]:
    """The status of the first answer on a connection ('closed' at EOF, or the error), and when it came."""
    try:
        line = await reader.readline()
        return (status_line(line) if line else "closed"), time.monotonic()
    except (OSError, ValueError) as exc:
        return f"no answer ({type(exc).__name__})", time.monotonic()


async def connect(
    t: Target, seen: Counter[str], label: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A raw connection to the server, or None with the refusal counted under `label`."""
    try:
        return await asyncio.open_connection(t.host, t.port)
    except OSError as exc:
        seen[f"{label} {type(exc).__name__}"] += 1
        return None


async def one_huge_header(t: Target, size: int, seen: Counter[str], waits: list[float], sent: list[int]) -> None:
    """One request whose single header is `size` bytes: sent until the server answers or hangs up."""
    started = time.monotonic()
    if (opened := await connect(t, seen, "connect:")) is None:
        return
    reader, writer = opened
    answer = asyncio.create_task(answer_of(reader))
    written = 0
    try:
        writer.write(f"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge-{size >> 20}MB: ".encode())
        while written < size and not answer.done():
            piece = CHUNK[: min(len(CHUNK), size - written)]
            writer.write(piece)
            await asyncio.wait_for(writer.drain(), timeout=10)
            written += len(piece)
        if not answer.done():
            writer.write(b"\r\n\r\n")
            await writer.drain()
    except (OSError, TimeoutError) as exc:
        seen[f"send: {type(exc).__name__}"] += 1
    try:
        status, when = await asyncio.wait_for(answer, timeout=30)
    except TimeoutError:
        status, when = "no answer in 30 s", time.monotonic()
    seen[f"{size >> 20} MB: {status}"] += 1
    waits.append(when - started)
    sent.append(written)
    writer.close()


async def huge_header(t: Target, seconds: float) -> Result:
    """Rounds of 2 requests with a 64 MB header and 2 with a 16 MB one, at once, until time is up."""
    deadline, rounds = time.monotonic() + seconds, 0
    seen, waits, sent = Counter[str](), list[float](), list[int]()

    async def rounds_until_deadline() -> None:
        nonlocal rounds
        while time.monotonic() < deadline and rounds < 5000:
            sizes = [64 << 20, 64 << 20, 16 << 20, 16 << 20]
            await asyncio.gather(*(one_huge_header(t, s, seen, waits, sent) for s in sizes), return_exceptions=True)
            rounds += 1

    await until(deadline, [rounds_until_deadline()])
    most = max(sent, default=0) >> 20
    return {"seen": seen, "rounds": rounds, "answer": seconds_summary(waits), "most_sent_mb": most}


async def one_slow(t: Target, kind: str, deadline: float, closed: dict[str, list[float]], seen: Counter[str]) -> None:
    """A connection sending one byte a second: of a request head that never ends ('head'), or of a
    body short of its Content-Length ('body'). When and how the server ended it."""
    await asyncio.sleep(random.random())  # spread over the first second
    started = time.monotonic()
    if (opened := await connect(t, seen, f"{kind}: connect")) is None:
        return
    reader, writer = opened
    token = t.tokens["slowloris"]
    if kind == "body":
        head = f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        writer.write(f"{head}Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n".encode())
        trickle = b'{"architecture": "fc", "name": "' + b"s" * 3900
    else:
        trickle = b"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 10000
    answer = asyncio.create_task(answer_of(reader))
    try:
        for byte in trickle:
            if answer.done() or time.monotonic() > deadline:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.wait([answer], timeout=1.0)
    except OSError as exc:
        seen[f"{kind}: send {type(exc).__name__}"] += 1
    if answer.done():
        status, when = answer.result()
        seen[f"{kind}: {status}"] += 1
        closed[kind].append(when - started)
    else:
        seen[f"{kind}: open at the end"] += 1
        answer.cancel()
    writer.close()


async def slowloris(t: Target, seconds: float, connections: int = 200) -> Result:
    """`connections` slow clients, a quarter of them trickling a POST body, the rest a request head."""
    deadline = time.monotonic() + seconds
    seen, closed = Counter[str](), {"head": list[float](), "body": list[float]()}
    kinds = ["body" if i % 4 == 0 else "head" for i in range(connections)]
    await until(deadline, [one_slow(t, kind, deadline, closed, seen) for kind in kinds])
    return {
        "seen": seen,
        "head_closed": seconds_summary(closed["head"]),
        "body_closed": seconds_summary(closed["body"]),
    }


async def hammer(
    deadline: float, loops: int, send: Callable[[], Awaitable[httpx.Response]], seen: Counter[str], limit: int = 20000
) -> Result:
    """`loops` clients sending `send()` back to back until the deadline, `limit` requests at most in
    all: statuses into `seen`; returned: the Retry-After values, the details of refusals, how long
    the 2xx answers took, and how many requests were still waiting when they were cut off."""
    count, took = 0, list[float]()
    retry_after, details = Counter[str](), Counter[str]()

    async def loop() -> None:
        nonlocal count
        while time.monotonic() < deadline and count < limit:
            count += 1
            started = time.monotonic()
            try:
                response = await send()
            except httpx.HTTPError as exc:
                seen[type(exc).__name__] += 1
                continue
            seen[str(response.status_code)] += 1
            if response.is_success:
                took.append(time.monotonic() - started)
            if "retry-after" in response.headers:
                retry_after[response.headers["retry-after"]] += 1
            if response.status_code >= 400 and response.headers.get("content-type", "").endswith("json"):
                details[f"{response.status_code} {str(response.json().get('detail', ''))[:70]}"] += 1

    cut = await until(deadline, [loop() for _ in range(loops)])
    return {"retry_after": retry_after, "detail": details, "2xx_took": seconds_summary(took), "cut_off": cut}


def helper_pid(t: Target) -> int | None:
    return next((p for p in descendants(t.api_pid) if "service.inference.helper" in command(p)), None)


def resume_helper(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the API killed it (a call waited past its timeout)
        os.kill(pid, signal.SIGCONT)


async def predict_stalled(t: Target, seconds: float, parallel: int = 64) -> Result:
    """SIGSTOP the inference helper, `parallel` clients POST predict until the deadline, SIGCONT."""
    pid = helper_pid(t)
    if pid is None:
        return {"seen": {}, "error": "no inference helper process found under the API"}
    seen = Counter[str]()
    os.kill(pid, signal.SIGSTOP)
    body = {"pixels": [0] * 784}
    # SIGCONT at the deadline: the requests still waiting on the helper then get their answers
    resume = asyncio.get_running_loop().call_later(seconds, resume_helper, pid)
    try:
        async with t.client(t.tokens["predict"], connections=parallel, timeout=seconds + 40) as client:
            path = f"/v1/jobs/{t.job_id}/predict"
            extra = await hammer(time.monotonic() + seconds, parallel, lambda: client.post(path, json=body), seen)
    finally:
        resume.cancel()
        resume_helper(pid)
    alive = helper_pid(t)
    return {"seen": seen, **extra, "helper": "same" if alive == pid else f"now {alive}"}


async def render_flood(t: Target, seconds: float, parallel: int = 16) -> Result:
    """Sample pictures of 100 digits for distinct random permutation seeds, `parallel` at a time."""
    seen = Counter[str]()
    seeds = iter(random.sample(range(1, 2**31), 20000))
    async with t.client(t.tokens["render"], connections=parallel, timeout=60) as client:

        def send() -> Awaitable[httpx.Response]:
            params = {"permutation_seed": next(seeds), "count": 100}
            return client.get("/v1/datasets/mnist/samples.png", params=params)

        extra = await hammer(time.monotonic() + seconds, parallel, send, seen)
    return {"seen": seen, **extra}


async def events_flood(t: Target, seconds: float, streams: int = 300) -> Result:
    """`streams` GET /v1/events at once with one token, held open and read; a refused one tries again a second later."""
    started = time.monotonic()
    deadline = started + seconds
    seen, now, peak, opened = Counter[str](), [0], [0], list[float]()

    async def one(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            try:
                async with client.stream("GET", "/v1/events") as response:
                    seen[str(response.status_code)] += 1
                    if response.status_code != 200:
                        await response.aread()
                    else:
                        opened.append(time.monotonic() - started)
                        now[0] += 1
                        peak[0] = max(peak[0], now[0])
                        try:
                            async for _ in response.aiter_bytes():
                                if time.monotonic() > deadline:
                                    return
                        finally:
                            now[0] -= 1
                        seen["ended by the server"] += 1
            except httpx.HTTPError as exc:
                seen[type(exc).__name__] += 1
            await asyncio.sleep(1)

    async with t.client(t.tokens["events"], connections=streams, timeout=seconds + 20) as client:
        await until(deadline, [one(client) for _ in range(streams)], grace=1.0)  # a stream never ends: cut it
    return {"seen": seen, "most_open": peak[0], "accepted_after": seconds_summary(opened)}


async def forged_cursors(t: Target, seconds: float, parallel: int = 4) -> Result:
    """The hostile GETs in a tight loop; every answer's status, and each URL that was not a 4xx problem."""
    seen, bad = Counter[str](), Counter[str]()
    urls = hostile_urls(t.job_id)
    deadline = time.monotonic() + seconds

    async def loop(client: httpx.AsyncClient, offset: int) -> None:
        i = offset
        while time.monotonic() < deadline and i < offset + 50000:
            url, i = urls[i % len(urls)], i + 1
            try:
                response = await client.get(url)
            except httpx.HTTPError as exc:
                seen[type(exc).__name__] += 1
                continue
            seen[str(response.status_code)] += 1
            problem = response.headers.get("content-type", "").startswith("application/problem+json")
            if not (400 <= response.status_code < 500 and problem):
                bad[f"{response.status_code} {url[:120]}"] += 1

    async with t.client(t.tokens["cursors"], connections=parallel) as client:
        await until(deadline, [loop(client, i * 7) for i in range(parallel)])
    return {"seen": seen, "urls": len(urls), "not_a_4xx_problem": bad}


async def submission_flood(t: Target, seconds: float, parallel: int = 8) -> Result:
    """POST /v1/jobs with a submit token as fast as `parallel` clients can, 5000 at most."""
    seen, headers = Counter[str](), Counter[str]()
    spec = {"architecture": "fc", "epochs": 1, "name": "attack flood"}
    async with t.client(t.tokens["submit"], connections=parallel) as client:

        async def send() -> httpx.Response:
            response = await client.post("/v1/jobs", json=spec)
            headers.update(name for name in ("ratelimit", "ratelimit-policy") if name in response.headers)
            if response.status_code == 429 and "ratelimit" in response.headers:
                headers[f"429 RateLimit: {response.headers['ratelimit']}"] = 1  # one example
            return response

        extra = await hammer(time.monotonic() + seconds, parallel, send, seen, limit=5000)
    return {"seen": seen, **extra, "headers": headers}


ATTACKS: dict[str, Callable[[Target, float], Awaitable[Result]]] = {
    "huge-header": huge_header,
    "slowloris": slowloris,
    "predict-stalled": predict_stalled,
    "render": render_flood,
    "events": events_flood,
    "cursors": forged_cursors,
    "submissions": submission_flood,
}
