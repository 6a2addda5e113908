"""Page cursors: the sort key of the last item shown, as an opaque URL-safe string.

A cursor is base64 of the JSON list [created_at, id] (newest-first lists), or [created_at, id,
test_accuracy] (jobs sorted by accuracy). Anything else is a 422 naming `cursor`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from datetime import UTC, datetime

from service.jobs.search import After
from service.platform.errors import InvalidInput

MAX_CURSOR_CHARS = 300  # ours are about 100-130 characters; this keeps nesting bombs from the JSON decoder


def encode(created_at: datetime, item_id: str, test_accuracy: float | None = None) -> str:
    key: list[object] = [created_at.isoformat(), item_id]
    if test_accuracy is not None:
        key.append(test_accuracy)
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode(cursor: str, *, with_accuracy: bool = False) -> After:
    """What encode put in `cursor`, created_at as an aware UTC datetime; InvalidInput (422) for any
    other string: too long, not base64 of the JSON list expected, a datetime without a time zone or
    out of range in UTC, an id that is not a UUID, an accuracy that is not a finite number."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError
        decoded = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not (isinstance(decoded, list) and len(decoded) == (3 if with_accuracy else 2)):
            raise ValueError
        if not all(isinstance(part, str) for part in decoded[:2]):
            raise ValueError
        created = datetime.fromisoformat(decoded[0])
        if created.tzinfo is None:
            raise ValueError
        accuracy = None
        if with_accuracy:
            accuracy = decoded[2]
            if isinstance(accuracy, bool) or not isinstance(accuracy, int | float) or not math.isfinite(accuracy):
                raise ValueError
        return After(created.astimezone(UTC), str(uuid.UUID(decoded[1])), None if accuracy is None else float(accuracy))
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error):
        raise InvalidInput("cursor is not one this API gave out", field="cursor") from None
