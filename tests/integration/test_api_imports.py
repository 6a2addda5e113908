"""The API process never imports torch or torchvision: a fresh interpreter creates the app and
serves a submit, a list, a read, the data set status and predictions (JSON and PNG bodies, parsed
before the job is found to have no checkpoint yet), then looks at sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, wait_until
from tests.support.settings import migrate, settings_env

SCRIPT = """
import io, json, sys
from fastapi.testclient import TestClient
from PIL import Image
from api.app import create_app
buffer = io.BytesIO()
Image.new("L", (28, 28)).save(buffer, format="PNG")
PNG = buffer.getvalue()
with TestClient(create_app()) as client:
    job = client.post("/v1/jobs", json={"architecture": "cnn", "permutation_seed": 42})
    listed = client.get("/v1/jobs")
    read = client.get(f"/v1/jobs/{job.json()['id']}")
    datasets = client.get("/v1/datasets")
    predict = f"/v1/jobs/{job.json()['id']}/predict"
    from_json = client.post(predict, json={"pixels": [0] * 784})
    from_png = client.post(predict, content=PNG, headers={"Content-Type": "image/png"})
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "torchvision"))
codes = [job.status_code, listed.status_code, read.status_code, datasets.status_code]
print(json.dumps({"codes": codes + [from_json.status_code, from_png.status_code],
                  "param_count": job.json()["param_count"], "heavy": heavy}))
"""


def test_the_api_serves_without_importing_torch(settings):
    migrate(settings.database_url)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["codes"] == [201, 200, 200, 200, 409, 409], "a queued job has no checkpoint to predict with"
    assert report["param_count"] == 6422, "counted by arithmetic, not by building the net"
    assert report["heavy"] == []


@pytest.fixture
def settings(settings):
    """`auto`, the default: serve must find out about GPUs without importing torch itself."""
    return settings.model_copy(update={"device": "auto"})


def test_serve_runs_the_api_in_a_process_without_torch(live_server):
    server = live_server(workers=1)
    assert server.client.post("/v1/jobs", json={"architecture": "fc"}).status_code == 201
    workers = wait_until(lambda: server.client.get("/v1/workers").json())
    assert workers and all(w["pid"] != server.proc.pid for w in workers), "training runs in other processes"
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps, "the API process has torch's libraries loaded"
