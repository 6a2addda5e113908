"""Fixtures shared by unit and integration tests; the helpers they use live in tests/support/."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from bench import postgres, s3
from bench.synthetic import write_mnist
from service.platform.config import Settings
from service.platform.db import Database
from tests.support.processes import LiveServer, Workers
from tests.support.settings import make_settings, migrate

DATABASE_KINDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `databases` that use `settings` run once on SQLite and once on PostgreSQL;
    `@pytest.mark.databases("sqlite")` on one test of such a module keeps it to the kinds named."""
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is not None and "settings" in metafunc.fixturenames:
        metafunc.parametrize("database_kind", marker.args or DATABASE_KINDS, indirect=True)


@pytest.fixture
def database_kind(request: pytest.FixtureRequest) -> str:
    """ "sqlite" unless the test is marked `databases` (then each of DATABASE_KINDS in turn)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.Server]:
    """The session's PostgreSQL (bench.postgres); the tests that need it skip, saying why, without."""
    try:
        server = postgres.start()
    except RuntimeError as error:
        print(f"\nPostgreSQL tests skipped: {error}", file=sys.__stderr__, flush=True)
        pytest.skip(f"PostgreSQL tests skipped: {error}")
    postgres.ACTIVE.append(server)
    yield server
    postgres.ACTIVE.remove(server)
    server.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3.Server]:
    """The session's S3 server (bench.s3: moto's, behind a relay that can cut it off)."""
    try:
        server = s3.start()
    except RuntimeError as error:
        pytest.fail(f"no S3 server for the tests: {error}")
    yield server
    server.close()


@pytest.fixture
def s3_settings(settings: Settings, s3_server: s3.Server, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`settings` with artifacts in a new bucket of the session's S3 server; boto3's variables set
    for this process and the processes it starts. The local artifacts dir is the cache only."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    return settings.model_copy(update={"artifacts_url": f"s3://{bucket}/run"})


@pytest.fixture(scope="session")
def mnist_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A data dir holding small raw MNIST IDX files, and their sha256 (pinned through settings)."""
    root = tmp_path_factory.mktemp("data")
    return root, write_mnist(root / "MNIST" / "raw")


@pytest.fixture
def settings(
    tmp_path: Path, mnist_data: tuple[Path, dict[str, str]], database_kind: str, request: pytest.FixtureRequest
) -> Settings:
    """SQLite file under tmp_path; for `databases` tests on PostgreSQL, a fresh empty database."""
    settings = make_settings(tmp_path, *mnist_data)
    if database_kind == "postgresql":
        server: postgres.Server = request.getfixturevalue("postgres_server")
        settings = settings.model_copy(update={"database_url": server.new_database()})
    return settings


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch single-threaded, as a worker runs it (and as the bit-identical comparisons assume)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    migrate(settings.database_url)
    database = Database(settings.database_url)
    yield database
    database.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from api.app import create_app

    migrate(settings.database_url)  # as `mnist-jobs db upgrade` would; the app only checks
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def live_server(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(workers: int = 1, **overrides: object) -> LiveServer:
        servers.append(LiveServer(settings, workers, tmp_path / f"serve-{len(servers)}.log", **overrides))
        return servers[-1]

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.stop()


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    """The one way tests start worker processes: `workers.start(**setting_overrides)`."""
    pool = Workers(settings, tmp_path)
    yield pool
    pool.cleanup()
