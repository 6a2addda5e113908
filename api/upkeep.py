"""The API process's share of upkeep (service.platform.upkeep), so a deployment that runs an API
and no worker for a while still prunes its events and folds its job counts."""

from __future__ import annotations

import asyncio
import logging

import anyio
from sqlalchemy.exc import SQLAlchemyError

from service.platform.db import Database
from service.platform.upkeep import tidy

log = logging.getLogger(__name__)


def tidy_once(db: Database, events_keep_seconds: float) -> None:
    with db.write() as session:
        tidy(session, events_keep_seconds)


async def tidy_every(db: Database, every_seconds: float, events_keep_seconds: float) -> None:
    """Tidy every `every_seconds` until cancelled; a database that cannot be reached is tried again."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            await anyio.to_thread.run_sync(tidy_once, db, events_keep_seconds)
        except SQLAlchemyError:
            log.warning("tidying the database failed; trying again in %.0f s", every_seconds, exc_info=True)
