"""docker-compose.yml (+ docker-compose.gpu.yml, + the `postgres` and `s3` profiles with their env files)
and the Dockerfile can't run here (no Docker engine): their structure is checked, variables resolved
as compose resolves them; the worker's health check runs in tests/unit/test_devices.py."""

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import make_url

from service.platform.config import Settings
from tests.support.processes import REPO

COMPOSE = REPO / "docker-compose.yml"
GPU_OVERLAY = REPO / "docker-compose.gpu.yml"
POSTGRES_ENV = REPO / "compose.postgres.env"
S3_ENV = REPO / "compose.s3.env"
APP_SERVICES = {"migrate", "api", "worker"}
DOCKERFILE = REPO / "Dockerfile"
MOUNTS = {
    "state": "/var/lib/mnist-jobs",
    "data": "/var/lib/mnist-jobs/data",
    "artifacts": "/var/lib/mnist-jobs/artifacts",
}


def load(*files: Path) -> dict[str, Any]:
    """The files merged as `docker compose -f a -f b` merges them: mappings key by key, a later
    scalar or sequence (command, ports) replacing the earlier one."""

    def merge(base, override):
        if isinstance(base, dict) and isinstance(override, dict):
            return {**base, **{key: merge(base.get(key), value) for key, value in override.items()}}
        return override

    merged: dict[str, Any] = {}
    for file in files:
        merged = merge(merged, yaml.safe_load(file.read_text()))
    return merged


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}` and `${VAR:-default}` (unset or empty: the default); `$$` is a `$`."""
    pattern = r"\$\{(\w+)(?::-([^}]*))?\}"
    resolved = re.sub(pattern, lambda m: env.get(m[1]) or (m[2] or ""), value.replace("$$", "\0"))
    return resolved.replace("\0", "$")


def env_file(path: Path, environment: dict[str, str]) -> dict[str, str]:
    """A compose env file's variables, each line interpolated with those before it; the shell's
    environment wins over the file, as with `docker compose --env-file`."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key] = environment.get(key) or interpolate(value, values | environment)
    return values | environment


def resolved_environment(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    return {key: interpolate(str(value), env) for key, value in service["environment"].items()}


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_migrate_runs_once_and_the_api_and_worker_wait_for_it():
    services = load(COMPOSE)["services"]
    assert set(services) == APP_SERVICES | {"postgres", "minio", "minio-bucket"}
    assert all("profiles" not in services[name] for name in APP_SERVICES), "started by a plain `up`"
    migrate = services["migrate"]
    assert migrate["command"] == ["mnist-jobs", "db", "upgrade"]
    assert migrate["restart"] == "no", "a one-shot must not be restarted once it has succeeded"
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}, name
    api, worker = services["api"]["command"], services["worker"]["command"]
    assert api[:2] == ["mnist-jobs", "serve"] and option(api, "--host") == "0.0.0.0"
    assert option(api, "--workers") == "0", "the api container trains nothing"
    assert f"{option(api, '--port')}:{option(api, '--port')}" in services["api"]["ports"]
    assert worker == ["mnist-jobs", "worker", "--device", "auto"]


def test_every_service_mounts_the_state_data_and_artifacts_volumes_its_settings_point_into():
    compose = load(COMPOSE)
    assert set(compose["volumes"]) == set(MOUNTS) | {"pgdata", "miniodata"}
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert set(service["volumes"]) == {f"{volume}:{mount}" for volume, mount in MOUNTS.items()}, name
        env = resolved_environment(service, {})  # a plain `docker compose up`: SQLite
        assert env["MNIST_JOBS_DATABASE_URL"] == f"sqlite:///{MOUNTS['state']}/mnist-jobs.db"
        assert env["MNIST_JOBS_DATA_DIR"] == MOUNTS["data"]
        assert env["MNIST_JOBS_ARTIFACTS_DIR"] == MOUNTS["artifacts"]
        assert env["MNIST_JOBS_API_TOKENS_FILE"].startswith(MOUNTS["state"] + "/")
        assert env["MNIST_JOBS_LOG_FORMAT"] in ("text", "json")
        assert env["MNIST_JOBS_ARTIFACTS_URL"] == "", "no object store unless asked for"
        assert Settings(artifacts_url=env["MNIST_JOBS_ARTIFACTS_URL"]).artifacts_url is None, "empty is unset"


def test_the_health_checks_ask_the_real_api_and_the_real_worker_registry():
    from api.app import create_app

    services = load(COMPOSE)["services"]
    api_check = services["api"]["healthcheck"]["test"]
    assert api_check[:3] == ["CMD", "python", "-c"], "python, not curl: the slim image has no curl"
    code = api_check[3]
    compile(code, "healthcheck", "exec")  # a syntax error would keep the api unhealthy forever
    assert "urllib.request" in code and "curl" not in code
    port = option(services["api"]["command"], "--port")
    assert f"http://127.0.0.1:{port}/healthz/ready" in code, "the readiness route, on the port serve listens on"
    assert "/healthz/ready" in {getattr(route, "path", None) for route in create_app().routes}
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "mnist-jobs", "worker", "--check"]
    for name in ("api", "worker"):
        assert {"interval", "timeout", "retries", "start_period"} <= set(services[name]["healthcheck"]), name


def test_the_gpu_file_reserves_every_gpu_for_the_worker_alone_and_runs_one_process_per_gpu():
    cpu = load(COMPOSE)["services"]
    assert all("deploy" not in service for service in cpu.values()), "the CPU-only path needs no NVIDIA runtime"
    assert set(yaml.safe_load(GPU_OVERLAY.read_text())["services"]) == {"worker"}
    gpu = load(COMPOSE, GPU_OVERLAY)["services"]
    devices = gpu["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert gpu["worker"]["command"] == ["mnist-jobs", "worker", "--all-gpus"], "one worker process per GPU"
    for key in ("volumes", "environment", "depends_on", "healthcheck"):
        assert gpu["worker"][key] == cpu["worker"][key], f"the overlay keeps the worker's {key}"
    assert gpu["api"] == cpu["api"] and gpu["migrate"] == cpu["migrate"]


def test_the_image_installs_dependencies_in_a_layer_before_the_source_is_copied():
    joined = DOCKERFILE.read_text().replace("\\\n", " ")  # continuation lines belong to their instruction
    steps = [line.split(maxsplit=1) for line in joined.splitlines() if line and not line.startswith("#")]
    instructions = [step[0] for step in steps]
    first_source_copy = next(i for i, (op, args) in enumerate(steps) if op == "COPY" and args.startswith("service"))
    dependencies = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "requirements.txt" in args)
    assert dependencies < first_source_copy
    assert [args for op, args in steps[:dependencies] if op == "COPY"] == ["pyproject.toml ./"]
    assert "--no-deps" in steps[instructions.index("RUN", dependencies + 1)][1], "the project itself adds no deps"
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = {args.split()[0] for op, args in steps if op == "COPY"}
    top_level = {name.split(".")[0].rstrip("*") for name in packages["include"]}  # "cli.*" is cli's subpackages
    assert top_level | {"clients/python"} <= copied, (
        "every package, and the client the server depends on, reaches the image"
    )


def test_the_postgres_profile_runs_postgresql_with_a_health_check_and_a_volume_and_the_app_uses_it():
    services = load(COMPOSE)["services"]
    postgres = services["postgres"]
    assert postgres["profiles"] == ["postgres"], "off unless asked for"
    assert postgres["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert "ports" not in postgres, "reached on the compose network only"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert {"interval", "timeout", "retries", "start_period"} <= set(postgres["healthcheck"])
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}

    env = env_file(POSTGRES_ENV, {"MNIST_JOBS_POSTGRES_PASSWORD": "s3cret"})
    server = resolved_environment(postgres, env)
    for name in APP_SERVICES:
        url = make_url(resolved_environment(services[name], env)["MNIST_JOBS_DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg" and url.host == "postgres" and url.port == 5432, name
        assert (url.username, url.password, url.database) == (
            server["POSTGRES_USER"],
            server["POSTGRES_PASSWORD"],
            server["POSTGRES_DB"],
        )
    assert server["POSTGRES_PASSWORD"] == "s3cret"


def test_without_a_password_the_postgres_profile_sets_none_and_the_image_refuses_to_start():
    env = env_file(POSTGRES_ENV, {})
    assert resolved_environment(load(COMPOSE)["services"]["postgres"], env)["POSTGRES_PASSWORD"] == ""


def test_the_s3_profile_runs_minio_makes_the_bucket_first_and_the_app_uses_it():
    services = load(COMPOSE)["services"]
    minio, bucket = services["minio"], services["minio-bucket"]
    assert minio["profiles"] == bucket["profiles"] == ["s3"], "off unless asked for"
    assert minio["volumes"] == ["miniodata:/data"] and minio["command"][:2] == ["server", "/data"]
    assert "ports" not in minio, "reached on the compose network only"
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert bucket["depends_on"] == {"minio": {"condition": "service_healthy"}} and bucket["restart"] == "no"
    assert services["migrate"]["depends_on"]["minio-bucket"] == {
        "condition": "service_completed_successfully",
        "required": False,
    }, "nothing starts before the bucket is there"

    env = env_file(S3_ENV, {"AWS_SECRET_ACCESS_KEY": "s3cret-key"})
    server = resolved_environment(minio, env)
    for name in APP_SERVICES:
        app = resolved_environment(services[name], env)
        settings = Settings(artifacts_url=app["MNIST_JOBS_ARTIFACTS_URL"])
        assert settings.artifacts_url == "s3://mnist-jobs/artifacts", name
        assert app["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        assert (app["AWS_ACCESS_KEY_ID"], app["AWS_SECRET_ACCESS_KEY"]) == (
            server["MINIO_ROOT_USER"],
            server["MINIO_ROOT_PASSWORD"],
        ), name
    assert server["MINIO_ROOT_PASSWORD"] == "s3cret-key"
    # The one-shot makes the bucket the URL names, with the same credentials, in a POSIX shell.
    made = resolved_environment(bucket, env)
    assert made["MC_HOST_store"] == "http://mnist-jobs:s3cret-key@minio:9000"
    script = interpolate(bucket["command"][0], {})
    shell = subprocess.run(
        ["sh", "-c", script.replace("mc mb", "echo mc mb")],
        env={"ARTIFACTS_URL": made["ARTIFACTS_URL"], "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.strip() == "mc mb --ignore-existing store/mnist-jobs"


def test_without_a_secret_key_the_s3_profile_sets_none_and_minio_refuses_to_start():
    env = env_file(S3_ENV, {})
    assert resolved_environment(load(COMPOSE)["services"]["minio"], env)["MINIO_ROOT_PASSWORD"] == ""
