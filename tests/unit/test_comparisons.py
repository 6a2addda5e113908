"""Comparisons through the real app on a migrated SQLite file; jobs end through the queue's own
fenced calls (claim, finish, fail), as a worker ends them."""

from __future__ import annotations

import statistics

import pytest

from tests.support.queue import end_jobs

pytestmark = pytest.mark.databases  # each test once on SQLite, once on PostgreSQL

PROBLEM = "application/problem+json"
T_975_DF4 = 2.7764451051977987  # Student's t quantile for a 95 % interval with 5 values


def create(client, **body):
    response = client.post("/v1/comparisons", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_seeds_5_alone_is_the_tutorials_experiment_with_one_shared_shuffle(client, db):
    comparison = create(client, seeds=5)
    assert comparison["status"] == "queued" and comparison["progress"]["total"] == 20
    cells = comparison["cells"]
    assert [(c["architecture"], c["permutation_seed"], c["param_count"]) for c in cells] == [
        ("fc", None, 6442),
        ("fc", 42, 6442),
        ("cnn", None, 6422),
        ("cnn", 42, 6422),
    ]
    assert comparison["shared_permutation_seed"] == 42 and comparison["seeds"] == [1, 2, 3, 4, 5]
    assert len(set(comparison["job_ids"])) == 20
    for cell in cells:
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in cell["job_ids"]]
        assert [job["spec"]["seed"] for job in jobs] == [1, 2, 3, 4, 5]
        assert {job["spec"]["permutation_seed"] for job in jobs} == {cell["permutation_seed"]}
        assert {job["spec"]["epochs"] for job in jobs} == {1}
        assert {job["comparison_id"] for job in jobs} == {comparison["id"]}

    order = end_jobs(db, {})
    architectures = [client.get(f"/v1/jobs/{job_id}").json()["architecture"] for job_id in order]
    assert architectures == ["cnn"] * 10 + ["fc"] * 10, "the longest jobs are queued first, FC last to pack"
    fc_keys = {client.get(f"/v1/jobs/{job_id}").json()["spec"]["permutation_seed"] for job_id in order[10:]}
    assert fc_keys == {None, 42}, "natural and permuted FC jobs wait side by side, to share a pack"


def test_cells_have_mean_std_interval_and_the_effects_their_tests(client, db):
    comparison = create(client, seeds=5)
    accuracies = {
        ("fc", None): [0.85, 0.87, 0.83, 0.88, 0.86],
        ("fc", 42): [0.86, 0.86, 0.85, 0.87, 0.87],
        ("cnn", None): [0.94, 0.95, 0.939, 0.949, 0.945],
        ("cnn", 42): [0.80, 0.78, 0.82, 0.74, 0.83],
    }
    outcomes: dict[str, float | str] = {}
    for cell in comparison["cells"]:
        for job_id, value in zip(
            cell["job_ids"], accuracies[(cell["architecture"], cell["permutation_seed"])], strict=True
        ):
            outcomes[job_id] = value
    end_jobs(db, outcomes)

    done = client.get(f"/v1/comparisons/{comparison['id']}").json()
    assert done["status"] == "succeeded" and done["progress"]["fraction"] == 1.0
    for cell in done["cells"]:
        values = accuracies[(cell["architecture"], cell["permutation_seed"])]
        assert cell["values"] == values and cell["seeds"] == [1, 2, 3, 4, 5] and cell["n"] == 5
        assert cell["mean"] == pytest.approx(statistics.mean(values))
        assert cell["std"] == pytest.approx(statistics.stdev(values))
        half = T_975_DF4 * statistics.stdev(values) / 5**0.5
        assert cell["ci95"] == pytest.approx([statistics.mean(values) - half, statistics.mean(values) + half])

    effects = {effect["name"]: effect for effect in done["effects"]}
    assert set(effects) == {
        "cnn_minus_fc_natural",
        "cnn_minus_fc_permuted_42",
        "fc_drop_permuted_42",
        "cnn_drop_permuted_42",
    }
    cnn_gain = effects["cnn_minus_fc_natural"]
    assert cnn_gain["test"] == "welch" and cnn_gain["n"] == 10
    fc, cnn = accuracies[("fc", None)], accuracies[("cnn", None)]
    assert cnn_gain["estimate"] == pytest.approx(statistics.mean(cnn) - statistics.mean(fc))
    assert cnn_gain["excludes_zero"] is True and cnn_gain["p_value"] < 0.01
    fc_drop = effects["fc_drop_permuted_42"]
    assert fc_drop["test"] == "paired" and fc_drop["n"] == 5
    diffs = [a - b for a, b in zip(accuracies[("fc", None)], accuracies[("fc", 42)], strict=True)]
    assert fc_drop["estimate"] == pytest.approx(statistics.mean(diffs))
    half = T_975_DF4 * statistics.stdev(diffs) / 5**0.5
    assert fc_drop["ci95"] == pytest.approx([statistics.mean(diffs) - half, statistics.mean(diffs) + half])
    assert fc_drop["excludes_zero"] is False, "the FC net does not care about the shuffle"
    assert effects["cnn_drop_permuted_42"]["excludes_zero"] is True, "the CNN loses its edge"


def test_a_failed_job_fails_the_comparison_naming_its_cell_and_keeps_the_others(client, db):
    comparison = create(client, seeds=2, architectures=["fc"], permutation_seeds=[None, 7])
    natural, permuted = comparison["cells"]
    end_jobs(db, {natural["job_ids"][0]: 0.9, natural["job_ids"][1]: 0.8, permuted["job_ids"][0]: "boom"})
    read = client.get(f"/v1/comparisons/{comparison['id']}").json()
    assert read["status"] == "failed"
    assert "cell 1 (fc, permuted 7)" in read["error"] and "boom" in read["error"]
    assert read["cells"][0]["values"] == [0.9, 0.8] and read["cells"][0]["mean"] == pytest.approx(0.85)
    assert read["cells"][1]["failed"] == [f"{permuted['job_ids'][0]}: boom"]
    assert client.get(f"/v1/jobs/{permuted['job_ids'][1]}").json()["status"] == "queued", "the others go on"


def test_cancel_and_delete_cascade_to_the_jobs(client):
    comparison = create(client, seeds=2)
    url = f"/v1/comparisons/{comparison['id']}"
    refused = client.delete(url)
    assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM
    cancelled = client.post(f"{url}/cancel", json={})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert {client.get(f"/v1/jobs/{j}").json()["status"] for j in comparison["job_ids"]} == {"cancelled"}
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404
    assert {client.get(f"/v1/jobs/{j}").status_code for j in comparison["job_ids"]} == {404}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"architectures": ["fc", "fc"]}, "architectures"),
        ({"architectures": ["mlp"]}, "architectures.0"),
        ({"seeds": 0}, "seeds"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"seeds": 100, "permutation_seeds": [None, 1, 2, 3]}, "seeds"),
        ({"spec": {"epochs": 0}}, "spec.epochs"),
        ({"spec": {"seed": 3}}, "spec.seed"),
        ({"spec": {"lr": "0.1"}}, "spec.lr"),
        ({"permutation_seeds": [-1]}, "permutation_seeds"),
    ],
)
def test_a_bad_grid_is_a_422_naming_the_field(client, body, field):
    response = client.post("/v1/comparisons", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["field"].startswith(field), response.json()


def test_comparisons_are_listed_newest_first_in_pages(client):
    made = [create(client, seeds=1, architectures=["fc"], permutation_seeds=[None])["id"] for _ in range(3)]
    first = client.get("/v1/comparisons", params={"limit": 2}).json()
    second = client.get("/v1/comparisons", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [c["id"] for c in first["items"] + second["items"]] == made[::-1] and second["next_cursor"] is None
