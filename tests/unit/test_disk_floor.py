"""A worker claims no job while the artifacts dir is below its free-space floor."""

from __future__ import annotations

from service.jobs import lifecycle
from service.jobs.schemas import job_spec_adapter
from workers.main import Worker


def test_no_job_is_claimed_below_the_free_space_floor_and_one_is_above_it(settings, db, caplog):
    with db.write() as session:
        job, _ = lifecycle.enqueue(
            session, job_spec_adapter.validate_python({"architecture": "fc"}), default_max_attempts=3
        )
    starved = Worker(settings.model_copy(update={"min_free_bytes": 2**62}), "cpu")  # more than any disk has
    assert starved.claim() == [] and starved.claim() == []
    with db.read() as session:
        assert lifecycle.get(session, job.id).status == "queued"
    assert sum("claiming no job" in r.getMessage() for r in caplog.records) == 1, "said once, not per poll"

    roomy = Worker(settings.model_copy(update={"min_free_bytes": 0}), "cpu")
    assert [claim.job_id for claim in roomy.claim()] == [job.id]
    starved.db.dispose()
    roomy.db.dispose()
