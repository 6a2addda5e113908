"""docs/models.md's "Using a model without mnist-jobs" blocks, run as printed on models a real server made.

`mnist-jobs serve` with one worker trains an FC job on natural pixels and a CNN job on permuted ones
(the small IDX files); both formats of each are downloaded over HTTP, and each marked block of
docs/models.md runs in its own interpreter with MODEL and DATA_DIR set. Each prints the accuracy, which
must be the job's own `result.test_accuracy`, exactly.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import pytest

from tests.support.processes import REPO

SNIPPET = re.compile(r"```python\n(# readme-snippet: (\w+)\n.*?)```", re.DOTALL)
ACCURACY = re.compile(r"^accuracy (\S+)$", re.MULTILINE)
# Trained well past chance on the small files, so a wrong pixel order or normalisation shows.
SPECS = [
    {"architecture": "fc", "lr": 0.1, "epochs": 3},
    {"architecture": "cnn", "permutation_seed": 42, "lr": 0.1, "epochs": 3},
]


def snippets() -> dict[str, str]:
    """docs/models.md's marked python blocks, by marker."""
    found = {marker: code for code, marker in SNIPPET.findall((REPO / "docs" / "models.md").read_text())}
    assert set(found) == {"torch", "onnx"}, f"docs/models.md's marked blocks: {sorted(found)}"
    return found


def run_snippet(code: str, model: str, data_dir: str) -> float:
    env = dict(os.environ, MODEL=model, DATA_DIR=data_dir, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [printed] = ACCURACY.findall(done.stdout)
    return float(printed)


@pytest.mark.slow
def test_the_readme_snippets_reproduce_each_jobs_accuracy(live_server, tmp_path, mnist_data):
    code = snippets()
    server = live_server(workers=1)
    ids = [server.client.post("/v1/jobs", json=spec).json()["id"] for spec in SPECS]
    for job_id in ids:
        job = server.wait_for_status(job_id, {"succeeded", "failed"})
        assert job["status"] == "succeeded", job["error"]
        expected = job["result"]["test_accuracy"]
        for fmt, marker in (("safetensors", "torch"), ("onnx", "onnx")):
            response = server.client.get(f"/v1/jobs/{job_id}/model", params={"format": fmt}, timeout=300)
            assert response.status_code == 200, response.text
            assert response.headers["etag"] == f'"{hashlib.sha256(response.content).hexdigest()}"'
            path = tmp_path / f"{job_id}.{fmt}"
            path.write_bytes(response.content)
            accuracy = run_snippet(code[marker], str(path), str(mnist_data[0]))
            print(
                f"{job['spec']['architecture']} perm={job['spec']['permutation_seed']} {fmt}: {accuracy} vs {expected}"
            )
            assert accuracy == expected
