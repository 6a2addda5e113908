"""/v1/datasets: which data sets a worker can train on now, and where their files came from."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import V1_ROUTER_DEPENDENCIES, AppSettings
from service.datasets import catalog
from service.jobs.schemas import DATASETS, DatasetRead

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=V1_ROUTER_DEPENDENCIES)


@router.get("", response_model=list[DatasetRead])
def list_datasets(settings: AppSettings) -> list[DatasetRead]:
    # Cheap: sizes and mtimes are checked against the marker the last preparation wrote; nothing is fetched.
    return [catalog.status(settings, name) for name in DATASETS]
