"""The experiment end to end: `mnist-jobs compare --wait` against a live `mnist-jobs serve` with a
real worker, on the small IDX files; then the same comparison again, answered by reuse."""

from __future__ import annotations

from tests.support.processes import run_cli
from tests.support.settings import settings_env

COMPARE = ("compare", "--seeds", "2", "--no-reuse", "--wait")


def test_compare_wait_trains_the_grid_and_prints_the_table(settings, live_server):
    server = live_server(workers=1, step_metrics_every=4)  # the small training set has 10 steps an epoch
    env = {**settings_env(settings), "MNIST_JOBS_URL": server.url}
    run = run_cli(env, *COMPARE, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("comparison ") and ": succeeded, seeds [1, 2]" in lines[0]
    for cell in ("FC natural", "FC permuted (seed 42)", "CNN natural", "CNN permuted (seed 42)"):
        assert any(line.startswith(cell) for line in lines), (cell, run.stdout)
    assert any(line.startswith("cnn_minus_fc_natural") for line in lines)
    assert "8/8 jobs ended" in run.stderr, "plain progress lines when piped"

    comparison_id = lines[0].split()[1].rstrip(":")
    comparison = server.client.get(f"/v1/comparisons/{comparison_id}").json()
    jobs = {job_id: server.client.get(f"/v1/jobs/{job_id}").json() for job_id in comparison["job_ids"]}
    for cell in comparison["cells"]:
        assert cell["values"] == [jobs[job_id]["result"]["test_accuracy"] for job_id in cell["job_ids"]]
    fc = [job for job in jobs.values() if job["architecture"] == "fc"]
    assert len({job["history"][-1]["worker_id"] for job in fc}) == 1
    assert max(job["started_at"] for job in fc) < min(job["finished_at"] for job in fc), (
        "the four FC jobs, natural and permuted, trained at once: as one pack"
    )
    cnn_start = max(job["started_at"] for job in jobs.values() if job["architecture"] == "cnn")
    assert cnn_start < fc[0]["started_at"], "the longest jobs started first"
    steps = server.client.get(f"/v1/jobs/{fc[0]['id']}/metrics").json()["items"]
    assert [step["step"] for step in steps] == [4, 8], "the training loss every 4 steps"

    again = run_cli(env, "compare", "--seeds", "2", "--json", "--wait", timeout=120)
    assert again.returncode == 0, again.stderr
    assert '"succeeded": 8' in again.stdout and '"reuse": true' in again.stdout, "every job reused"
