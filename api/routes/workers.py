"""/v1/workers: the registry of worker processes."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DB, V1_ROUTER_DEPENDENCIES
from service.jobs.schemas import WorkerRead
from service.queue import registry

router = APIRouter(prefix="/v1/workers", tags=["workers"], dependencies=V1_ROUTER_DEPENDENCIES)


@router.get("", response_model=list[WorkerRead])
def list_workers(db: DB, include_stopped: bool = False) -> list[WorkerRead]:
    with db.read() as session:
        return [WorkerRead.model_validate(w) for w in registry.list_workers(session, include_stopped=include_stopped)]
