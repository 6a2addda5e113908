"""Fault run: 200 jobs on 4 workers while workers are SIGKILLed, SIGSTOPped past their lease (then
SIGCONT) and SIGTERMed at jittered random moments (busy ones first), the API is restarted twice and,
on PostgreSQL, the database once; then the same specs on a clean service (same database kind, same
number of workers, no faults), and every job's final checkpoint compared with the clean run's.

    .venv/bin/python -m bench.fault_run                         # SQLite, small fixture data
    .venv/bin/python -m bench.fault_run --database postgresql   # a throwaway cluster (bench.postgres)
    .venv/bin/python -m bench.fault_run --data real             # ../shared/data/MNIST/raw (far slower)
    .venv/bin/python -m bench.fault_run --artifacts s3          # PostgreSQL + an S3 server (bench.s3)

Prints a markdown table: one row per check (bench/fault_checks.py), each able to fail, then counts
of what was done; exits 0 only when every check passes. Loopback only; everything in a temp dir
(--keep keeps it, with strikes.log: when each signal went to which worker, holding which job).

The strikes take turns: SIGKILL, SIGSTOP, SIGTERM, at strike-every x U(0.5, 1.5) s. A SIGKILLed or
SIGTERMed worker is replaced at once; a SIGSTOPped one keeps its slot and gets SIGCONT lease + 2 s
later (a timer: the main loop's API and database restarts do not stretch the pause). On SQLite it
is paused outside a write transaction (bench/faults.py: SQLite's one-writer limit); on PostgreSQL
at any moment. The API restarts at 25 % and 75 % of the jobs ended, each followed by every POST
again with its Idempotency-Key; the database restarts at 50 % (pg_ctl stop -m fast, down 2 s).
With --artifacts s3 (PostgreSQL implied): artifacts in moto's S3 server, a fresh bucket per run,
every process with an empty artifacts folder of its own (its cache; no shared disk), and the store
cut off at 40 % of the jobs ended for --store-down-seconds (bench/s3.py's relay).
A worker or API that exits without being told to is started again, and counted as a failure.
Service settings: lease 3 s, heartbeat 0.5 s, reap 1 s, max_attempts 10 (each SIGKILL or SIGSTOP
spends an attempt of every job the worker holds, a whole FC pack included), step losses recorded
every step (so that each hand-back's stopping step is known exactly); the clean run uses the same.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import fault_checks as checks
from bench.fault_checks import Row
from bench.fault_service import LIMITS_OFF, Service, prepare_data, service_env
from bench.faults import pause_outside_a_write

if TYPE_CHECKING:
    from bench import s3
    from bench.postgres import Server

STRIKES = (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM)  # in turn
API_RESTARTS_AT = (0.25, 0.75)  # fractions of the jobs ended
DB_RESTART_AT = 0.5
STORE_OUTAGE_AT = 0.4


def job_specs(count: int, which: str, rng: random.Random) -> list[dict[str, Any]]:
    """CNN jobs (each trained alone, 1-3 s on fixture data) and FC jobs of two shapes (packed by the workers)."""
    specs = []
    for i in range(count):
        if which == "real":
            spec = {"architecture": "cnn" if i % 3 else "fc", "epochs": 2, "batch_size": 256}
        elif i % 3:
            spec = {"architecture": "cnn", "epochs": rng.randint(6, 12), "batch_size": 16}
        else:
            spec = {"architecture": "fc", "epochs": rng.choice([16, 24]), "batch_size": 8}
        specs.append({**spec, "seed": 1000 + i, "permutation_seed": (i % 2) or None})
    return specs


class FaultRun:
    def __init__(self, args: argparse.Namespace, work: Path, pg: Server | None, store: s3.Server | None) -> None:
        self.args, self.work, self.pg, self.store = args, work, pg, store
        self.rng = random.Random(args.seed)
        settings = {
            "device": "cpu",
            "lease_seconds": args.lease_seconds,
            "heartbeat_seconds": 0.5,
            "reap_seconds": 1,
            "retry_base_seconds": 0.5,
            "retry_max_seconds": 5,
            "poll_seconds": 0.1,
            "shutdown_grace_seconds": 5,
            "max_attempts": args.max_attempts,
            "step_metrics_every": 1,
            **LIMITS_OFF,  # the run's checks read every job's stream and page through all jobs
        }
        self.env = service_env(work / "data", prepare_data(work / "data", args.data), settings)
        if store is not None:
            self.env |= store.env()
        self.events: Counter[str] = Counter()
        self.paused: set[int] = set()  # pids of the SIGSTOPped workers, until their SIGCONT
        self.timers: list[threading.Timer] = []
        self.termed: list[subprocess.Popen[bytes]] = []  # the SIGTERMed worker processes
        self.resubmits: list[bool] = []
        self.db_down = 0.0

    def service(self, name: str) -> Service:
        url = self.pg.new_database() if self.pg else f"sqlite:///{self.work / name / 'jobs.db'}"
        bucket = f"s3://{self.store.new_bucket()}/{name}" if self.store else None
        return Service(self.work / name, url, self.env, artifacts_url=bucket)

    def strike(self, svc: Service) -> None:
        """Signal one worker (a busy one if any), the kinds in turn; replace it unless only paused."""
        how = STRIKES[sum(self.events[s.name] for s in STRIKES) % len(STRIKES)]
        alive = [p for p in svc.slots if p.pid not in self.paused and p.poll() is None]
        busy = svc.busy()
        victims = [p for p in alive if p.pid in busy] or alive
        if not victims:
            return
        victim = self.rng.choice(victims)
        self.events[how.name] += 1
        self.events[f"{how.name} busy"] += victim.pid in busy
        with open(self.work / "strikes.log", "a") as log:
            print(f"{time.strftime('%H:%M:%S')} {how.name} pid {victim.pid} job {busy.get(victim.pid)}", file=log)
        if how is signal.SIGSTOP:
            self.events["pause tries"] += pause_outside_a_write(svc.database_url, victim)
            self.paused.add(victim.pid)
            timer = threading.Timer(self.args.lease_seconds + 2, self.wake, args=(victim,))
            timer.daemon = True
            timer.start()
            self.timers.append(timer)
            return
        victim.send_signal(how)
        if how is signal.SIGTERM:
            self.termed.append(victim)
        svc.slots[svc.slots.index(victim)] = svc.start_worker()

    def wake(self, victim: subprocess.Popen[bytes]) -> None:
        victim.send_signal(signal.SIGCONT)
        self.paused.discard(victim.pid)

    def faults(self, svc: Service, specs: list[dict[str, Any]], ids: list[str]) -> None:
        began = time.monotonic()
        next_strike = began + self.args.strike_every * self.rng.uniform(0.5, 1.5)
        api_restarts, db_restart = list(API_RESTARTS_AT), self.pg is not None
        store_outage = self.store is not None
        while time.monotonic() < began + self.args.timeout:
            svc.replace_the_dead()
            ended = svc.ended()
            if ended == len(ids):
                return
            if ended is not None and api_restarts and ended >= api_restarts[0] * len(ids):
                api_restarts.pop(0)
                svc.stop_api()
                svc.start_api()
                again, codes = svc.submit(specs, "fault-run")
                self.resubmits.append(again == ids and codes == Counter({200: len(ids)}))
                print(f"API restarted; every spec POSTed again: {dict(codes)}, same ids: {again == ids}", flush=True)
            elif ended is not None and db_restart and ended >= DB_RESTART_AT * len(ids):
                assert self.pg is not None
                db_restart = False
                self.db_down = self.pg.restart(self.args.db_down_seconds)
                self.events["DB restarts"] += 1
                print(f"database restarted: down {self.db_down:.1f} s", flush=True)
            elif ended is not None and store_outage and ended >= STORE_OUTAGE_AT * len(ids):
                assert self.store is not None
                store_outage = False
                self.store.outage_in_background(self.args.store_down_seconds)
                print(f"object store cut off for {self.args.store_down_seconds:.0f} s", flush=True)
            elif time.monotonic() >= next_strike:
                self.strike(svc)
                next_strike = time.monotonic() + self.args.strike_every * self.rng.uniform(0.5, 1.5)
            time.sleep(0.5)

    def run(self, name: str, specs: list[dict[str, Any]]) -> tuple[Service, list[str], checks.Collected, float]:
        """One service from start to finish: faults unless `name` is "clean"; what the API shows at the end."""
        began = time.monotonic()
        svc = self.service(name)
        try:
            svc.start(self.args.workers)
            ids, codes = svc.submit(specs, f"{name}-run")
            print(f"{name} run: {len(ids)} jobs submitted {dict(codes)}, {self.args.workers} workers", flush=True)
            if name == "clean":
                while time.monotonic() < began + self.args.timeout and svc.ended() != len(ids):
                    time.sleep(0.5)
            else:
                self.faults(svc, specs, ids)
            seconds = time.monotonic() - began
            for timer in self.timers:
                timer.cancel()
            svc.stop_workers()  # nothing written from here on
            return svc, ids, checks.collect(svc.url, ids, with_events=name != "clean"), seconds
        finally:
            svc.close()
            print(f"{name} run done in {time.monotonic() - began:.0f} s", flush=True)

    def main(self) -> int:
        specs = job_specs(self.args.jobs, self.args.data, self.rng)
        began = time.monotonic()
        svc, ids, fault, fault_seconds = self.run("fault", specs)
        _, clean_ids, clean, clean_seconds = self.run("clean", specs)
        for crash in svc.crashes:
            print(f"  exited without being told to: {crash}")
        attempts = [h for job in fault.jobs.values() for h in job["history"]]
        clean_ok = sum(j["status"] == "succeeded" for j in clean.jobs.values())
        locked = svc.logs("").count("database is locked")
        strikes = ", ".join(f"{s.name} {self.events[s.name]} ({self.events[f'{s.name} busy']})" for s in STRIKES)
        rows = [
            *checks.outcomes(ids, fault.jobs, svc.logs("worker")),
            *checks.resumes(ids, fault),
            *checks.same_checkpoints(ids, fault, clean_ids, clean),
            Row("clean run: jobs succeeded", f"{clean_ok} of {len(ids)}", clean_ok == len(ids)),
            Row(
                "POSTs again after each API restart: all 200, same ids",
                f"{sum(self.resubmits)} of {len(self.resubmits)} restarts",
                len(self.resubmits) == len(API_RESTARTS_AT) and all(self.resubmits),
            ),
            Row("workers / API that exited without being told to", str(len(svc.crashes)), not svc.crashes),
            Row("'database is locked' in the logs", str(locked), None if self.pg else locked == 0),
            Row(
                "database restarts (down, stop to accepting)",
                f"{self.events['DB restarts']} ({self.db_down:.1f} s)" if self.pg else "n/a (SQLite)",
                None if self.pg is None else self.events["DB restarts"] == 1,
            ),
            Row(
                "object store outages (down)",
                f"{len(self.store.outages)} ({', '.join(f'{b - a:.1f} s' for a, b in self.store.outages)})"
                if self.store
                else "n/a (artifacts on disk)",
                None if self.store is None else len(self.store.outages) == 1,
            ),
            Row("strikes (on a busy worker)", strikes),
            Row(
                "SIGTERMed workers that exited 0 (in the grace period)",
                f"{sum(p.returncode == 0 for p in self.termed)}",
            ),
            Row("SIGSTOP moments tried (SQLite: until outside a write)", str(self.events["pause tries"])),
            Row("worker processes started", str(len(svc.started))),
            Row("API starts (exit codes of the stopped ones)", f"{svc.api_starts} {svc.api_exits}"),
            Row("attempts ended", str(dict(Counter(h["ended"] or "unended" for h in attempts)))),
            Row("most attempts one job took", str(max((len(j["history"]) for j in fault.jobs.values()), default=0))),
            Row("API polls that failed (restarts, database down)", str(svc.poll_errors)),
            Row(
                "time: fault run / clean run / total",
                f"{fault_seconds:.0f} s / {clean_seconds:.0f} s / {time.monotonic() - began:.0f} s",
            ),
        ]
        a = self.args
        print(
            f"\n## fault run --database {a.database} --artifacts {a.artifacts}: {len(ids)} jobs, {a.workers} workers, "
            f"{a.data} data, "
            f"seed {a.seed}\n"
        )
        print(checks.table(rows))
        return 0 if all(row.ok is not False for row in rows) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--data", choices=["fixture", "real"], default="fixture")
    parser.add_argument("--artifacts", choices=["disk", "s3"], default="disk", help="s3: on PostgreSQL only")
    parser.add_argument("--store-down-seconds", type=float, default=10.0, help="the object store cut off this long")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--strike-every", type=float, default=3.0, help="mean seconds between strikes")
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument("--max-attempts", type=int, default=10, help="per job (a SIGKILL or SIGSTOP spends one)")
    parser.add_argument("--db-down-seconds", type=float, default=2.0, help="PostgreSQL kept stopped this long")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound of each run (fault, clean), seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases, strikes.log)")
    args = parser.parse_args()
    if args.artifacts == "s3":
        args.database = "postgresql"  # hosts without a shared disk share no SQLite file either
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # clean up (finally) on SIGTERM too
    work = Path(tempfile.mkdtemp(prefix="fault-run-"))
    pg = store = None
    try:
        if args.database == "postgresql":
            from bench import postgres  # the throwaway cluster the tests use

            pg = postgres.start()
        if args.artifacts == "s3":
            from bench import s3

            store = s3.start()
        code = FaultRun(args, work, pg, store).main()
    finally:
        if store is not None:
            store.close()
        if pg is not None:
            if args.keep and pg.folder is not None:
                shutil.copy(pg.folder / "log", work / "postgresql.log")
            pg.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
