"""The tables of bench/attacks.py: the probe's samples cut into phases, checked against the targets
(p99 at most 3x the idle phase's and at most 100 ms; the API's RSS back within 50 MB of its start)."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

P99_FACTOR, P99_CEILING_MS, MEMORY_SLACK_MB = 3.0, 100.0, 50.0
MB = 1 << 20


def quantile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of them at or below it."""
    return values[max(0, math.ceil(q * len(values)) - 1)]


def latency(samples: list[list[float]], start: float, end: float) -> dict[str, Any]:
    """Requests the probe started in [start, end]: count, p50/p99/max in ms, answers other than 200."""
    inside = [(seconds * 1000, int(status)) for t, seconds, status in samples if start <= t <= end]
    ms = sorted(m for m, _ in inside)
    if not ms:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan, "errors": {}}
    errors = Counter(str(status or "no answer") for _, status in inside if status != 200)
    return {"n": len(ms), "p50": quantile(ms, 0.5), "p99": quantile(ms, 0.99), "max": ms[-1], "errors": dict(errors)}


def memory(samples: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """The API's RSS at the phase's start and end and its peak (MB); its descendants' at the end, by role."""
    inside = [s for s in samples if start <= s["t"] <= end and s["api"] is not None]
    if not inside:
        return {"start": math.nan, "end": math.nan, "peak": math.nan, "children": {}}
    children: Counter[str] = Counter()
    for name, size in inside[-1]["children"].items():
        children[name.rsplit(" ", 1)[0]] += size / MB
    api = [s["api"] / MB for s in inside]
    return {"start": api[0], "end": api[-1], "peak": max(api), "children": dict(children)}


def brief(saw: dict[str, Any]) -> str:
    """What an attack saw, in one table cell: its answers by count, then its own figures."""
    parts = [f"{k}×{v}" for k, v in sorted(saw.get("seen", {}).items(), key=lambda kv: -kv[1])]
    for key, value in saw.items():
        if key in ("seen", "detail", "headers", "not_a_4xx_problem") or value in ({}, None, 0):
            continue
        if isinstance(value, dict) and "median_s" in value:
            parts.append(f"{key} median {value['median_s']} s, max {value['max_s']} s")
        elif isinstance(value, dict):
            parts.append(f"{key} " + ", ".join(f"{k}×{v}" for k, v in Counter(value).most_common(3)))
        else:
            parts.append(f"{key} {value}")
    if saw.get("not_a_4xx_problem"):
        parts.append(f"**not a 4xx problem: {sum(saw['not_a_4xx_problem'].values())}**")
    return "; ".join(parts).replace("|", "/")


def verdict(probe: dict[str, dict[str, Any]], idle: dict[str, dict[str, Any]]) -> str:
    misses = []
    for url, stats in probe.items():
        limit = min(P99_FACTOR * idle[url]["p99"], P99_CEILING_MS)
        if not stats["p99"] <= limit:
            misses.append(f"{url} p99 {stats['p99']:.0f} > {limit:.0f}")
    return "met" if not misses else "missed: " + ", ".join(misses)


def server_trouble(run: dict[str, Any]) -> list[str]:
    """5xx other than the 503s of a full queue, answers that should have been 4xx problems, crashes,
    tracebacks in the API's log."""
    lines = [f"- crash: {c}" for c in run["crashes"]]
    for phase in run["phases"]:
        seen = phase["saw"].get("seen", {})
        for status, count in seen.items():
            if re.fullmatch(r"5\d\d", status) and status != "503":
                lines.append(f"- {phase['name']}: {count}× {status}")
        for what, count in phase["saw"].get("not_a_4xx_problem", {}).items():
            lines.append(f"- {phase['name']}: {count}× `{what}`")
    log = run["api_log"].splitlines()
    tracebacks = [i for i, line in enumerate(log) if line.startswith("Traceback")]
    if tracebacks:
        last = tracebacks[-1]
        tail = next((line for line in log[last:] if line[:1].isalpha() and not line.startswith("Traceback")), "?")
        lines.append(f"- the API logged {len(tracebacks)} traceback(s); the last ends `{tail[:200]}`")
    return lines


def report(run: dict[str, Any], phase_seconds: float) -> str:
    requests, mem = run["probe"]["requests"], run["probe"]["memory"]
    rows, base = [], None
    head = (
        "| phase | s | live n | live p50/p99/max ms | job n | job p50/p99/max ms | probe errors | target | attack saw |"
    )
    rows += [head, "|" + "---|" * head.count(" | ") + "---|"]
    memory_rows = ["| phase | API RSS MB start → end (peak) | descendants' RSS MB at the end |", "|---|---|---|"]
    for phase in run["phases"]:
        start, end = phase["start"], phase["end"]
        probe = {url: latency(requests[url], start, end) for url in ("live", "job")}
        base = base or probe
        cells = [f"{probe[u]['p50']:.1f}/{probe[u]['p99']:.1f}/{probe[u]['max']:.0f}" for u in ("live", "job")]
        errors = {f"{u} {k}": v for u in probe for k, v in probe[u]["errors"].items()}
        error_cell = ", ".join(f"{k}×{v}" for k, v in errors.items()) or "0"
        cells = [
            phase["name"],
            f"{end - start:.0f}",
            str(probe["live"]["n"]),
            cells[0],
            str(probe["job"]["n"]),
            cells[1],
        ]
        rows.append("| " + " | ".join([*cells, error_cell, verdict(probe, base), brief(phase["saw"]) or "–"]) + " |")
        m = memory(mem, start, end)
        kids = ", ".join(f"{k} {v:.0f}" for k, v in sorted(m["children"].items())) or "none"
        memory_rows.append(f"| {phase['name']} | {m['start']:.0f} → {m['end']:.0f} ({m['peak']:.0f}) | {kids} |")
    first, last = memory(mem, run["phases"][0]["start"], run["phases"][0]["end"]), memory(mem, 0, math.inf)
    growth = last["end"] - first["start"]
    met = "met" if growth <= MEMORY_SLACK_MB else "missed"
    idle = base or {}
    summary = [
        f"Targets: p99 ≤ {P99_FACTOR:g}× idle p99 (live {idle['live']['p99']:.1f} ms, job {idle['job']['p99']:.1f} ms)"
        f" and ≤ {P99_CEILING_MS:g} ms; API RSS after the attacks within {MEMORY_SLACK_MB:g} MB of its start:"
        f" {first['start']:.0f} → {last['end']:.0f} MB ({growth:+.0f} MB), {met}.",
        f"Phase length {phase_seconds:g} s (slowloris at least 20 s); probe job {run['job_id']}.",
    ]
    trouble = server_trouble(run)
    trouble_text = (
        "\n".join(trouble) if trouble else "none (no 5xx but full-queue 503s, every hostile GET a 4xx problem)"
    )
    return "\n".join([*rows, "", *memory_rows, "", *summary, "", "Server trouble seen:", trouble_text])
