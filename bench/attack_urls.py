"""The hostile GETs of the forged-cursor attack (bench/attack_kinds.py): forged and garbage list
cursors and hostile query values; every one should be a 4xx problem, never a 5xx."""

from __future__ import annotations

import base64
import json
import os
import uuid
from urllib.parse import quote


def hostile_urls(job_id: str) -> list[str]:
    """GETs with forged cursors and hostile query values: every one should be a 4xx problem."""

    def b64(value: object, text: str | None = None) -> str:
        return base64.urlsafe_b64encode((text or json.dumps(value)).encode()).decode()

    some = str(uuid.uuid4())
    cursors = ["garbage", "!!!!", "====", base64.urlsafe_b64encode(os.urandom(90)).decode(), b64("[" * 150)]
    cursors += [b64(["2024-01-01T00:00:00", some]), b64(["0001-01-01T00:00:00+14:00", some])]
    cursors += [b64(["9999-12-31T23:59:59-14:00", some]), b64(["2024-01-01T00:00:00+00:00", "x"]), b64([1, 2])]
    cursors += [b64({"a": 1}), b64([None, None]), "A" * 300, "A" * 301, "A" * 12000]
    urls = [f"/v1/jobs?cursor={quote(c)}" for c in cursors]
    for accuracy in ("NaN", "1e999", "true", "1" + "0" * 200, '"0.5"', "[]"):
        cursor = b64(None, f'["2024-01-01T00:00:00+00:00", "{some}", {accuracy}]')
        urls.append(f"/v1/jobs?sort=test_accuracy&cursor={quote(cursor)}")
    queries = ["permutation_seed=%C2%B2", "permutation_seed=-1", "permutation_seed=99999999999999999999999"]
    queries += ["created_after=0001-01-01T00:00:00%2B14:00", "created_before=9999-12-31T23:59:59-14:00"]
    queries += ["created_after=10000-01-01", "created_after=garbage", "seed=-1", "seed=1e3", "limit=0", "limit=abc"]
    queries += ["sort=bogus", "status=bogus", "label=nocolon", "id_prefix=zz", "name=" + "n" * 201, "unknown=1"]
    queries += ["label=a:b&" * 200 + "limit=1", "comparison=not-a-uuid", "limit=%00"]
    urls += [f"/v1/jobs?{q}" for q in queries]
    metrics = ["from_step=9223372036854775808", "from_step=-1", "from_step=1e3", "limit=0", "limit=100000000000"]
    urls += [f"/v1/jobs/{job_id}/metrics?{q}" for q in metrics]
    urls += ["/v1/jobs/not-a-uuid", "/v1/jobs/%00", f"/v1/jobs/{some}", f"/v1/jobs/{some}/curves.png"]
    samples = [
        "permutation_seed=%C2%B2",
        "count=0",
        "count=101",
        "permutation_seed=-1",
        "permutation_seed=18446744073709551616",
    ]
    return urls + [f"/v1/datasets/mnist/samples.png?{q}" for q in samples]
