"""Event-store shaped rows for the raw-driver references, pre-serialised outside the timing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

__all__ = ["PG_INSERT", "SQLITE_INSERT", "pg_event_rows", "sqlite_event_rows"]

# Our stores' own tables are used for the raw references too, so index upkeep is the same;
# the raw side just skips everything between the driver and the table.
PG_INSERT = (
    "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data,"
    " metadata, occurred_at) VALUES ($1, $2, 1, $3, 1, $4::jsonb, $5::jsonb, $6)"
)
SQLITE_INSERT = (
    "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data,"
    " metadata, occurred_at, recorded_at) VALUES (?, ?, 1, ?, 1, ?, ?, ?, ?)"
)


def _payload(i: int) -> tuple[str, str]:
    data = json.dumps({"owner": f"owner-{i}"})
    metadata = json.dumps({"causation_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())})
    return data, metadata


def pg_event_rows(n: int) -> list[tuple[Any, ...]]:
    """Rows for :data:`PG_INSERT`: one new stream per row."""
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        data, metadata = _payload(i)
        stream = f"benchaccount-{uuid.uuid4()}"
        rows.append((uuid.uuid4(), stream, "BenchAccountOpened", data, metadata, now))
    return rows


def sqlite_event_rows(n: int) -> list[tuple[Any, ...]]:
    """Rows for :data:`SQLITE_INSERT`: one new stream per row."""
    now = datetime.now(UTC).isoformat()
    rows = []
    for i in range(n):
        data, metadata = _payload(i)
        stream = f"benchaccount-{uuid.uuid4()}"
        rows.append((str(uuid.uuid4()), stream, "BenchAccountOpened", data, metadata, now, now))
    return rows
