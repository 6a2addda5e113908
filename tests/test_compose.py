"""docker-compose.yml can't run here (no Docker engine), so its structure is checked instead."""

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


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
