"""docker-compose.yml and the Dockerfile can't run here (no Docker engine): their structure is checked."""

import tomllib

import yaml

from tests.support.processes import REPO

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


def test_api_and_worker_share_one_volume_and_settings():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) >= {"api", "worker"}
    api, worker = services["api"], services["worker"]
    assert "mnist-jobs" in api["command"] and "serve" in api["command"]
    assert api["command"][api["command"].index("--workers") + 1] == "0", "the api container must not train"
    assert worker["command"][:2] == ["mnist-jobs", "worker"]
    api_volumes, worker_volumes = set(api["volumes"]), set(worker["volumes"])
    shared = api_volumes & worker_volumes
    assert shared, "api and worker must share a volume"
    volume_name = next(iter(shared)).split(":")[0]
    assert volume_name in compose["volumes"]
    mount = next(iter(shared)).split(":")[1]
    for service in (api, worker):
        env = service["environment"]
        for key in ("MNIST_JOBS_DATABASE_URL", "MNIST_JOBS_DATA_DIR", "MNIST_JOBS_ARTIFACTS_DIR"):
            assert mount in env[key], f"{key} must point into the shared volume"
    assert "8000:8000" in api["ports"]
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"


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
    assert {name.rstrip("*") for name in packages["include"]} <= copied, "every package reaches the image"
