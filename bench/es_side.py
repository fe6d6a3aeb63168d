"""The same workloads on the ``eventsourcing`` library (PyPI), used as a peer reference.

Library defaults throughout: no aggregate cache, no snapshots, JSON transcoder. SQLite is a
file in WAL mode with SQLite's default ``synchronous=FULL``; PostgreSQL is the same scratch
database our code uses, in tables of its own. Each ``save()`` is one transaction.

The read model mirrors :class:`bench.domain.AccountSummary`: one row per account, upserted
with the tracking record in one transaction per event (the library's projection API hands
over one event at a time). On PostgreSQL the library's ``ProjectionRunner`` drives it; its
SQLite recorder has no subscription (9.5), so there a loop over ``select_notifications``
drives the same projection object.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import InfrastructureFactory, Tracking, TrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner
from eventsourcing.utils import Environment

__all__ = [
    "EsAccount",
    "EsBench",
    "EsSummaryProjection",
]

REF = "benchmark deposit"


class EsAccount(Aggregate):
    """The ``eventsourcing`` twin of :class:`bench.domain.Account`."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int, ref: str) -> None:
        self.balance += amount


class BenchApp(Application[UUID]):
    """The application whose log the projection follows."""

    name = "BenchApp"


class SummaryView(TrackingRecorder):
    """Read model: ``upsert`` one event's effect together with its tracking record."""

    def upsert(self, account_id: UUID, amount: int, tracking: Tracking) -> None:
        raise NotImplementedError

    def totals(self) -> tuple[int, int]:
        """Return (rows, sum of per-row event counts)."""
        raise NotImplementedError


def _sqlite_view() -> type[SummaryView]:
    from eventsourcing.sqlite import SQLiteTrackingRecorder

    class SQLiteSummaryView(SQLiteTrackingRecorder, SummaryView):
        def construct_create_table_statements(self) -> list[str]:
            return [
                *super().construct_create_table_statements(),
                "CREATE TABLE IF NOT EXISTS es_account_summary (account_id TEXT PRIMARY KEY,"
                " events INTEGER NOT NULL, balance INTEGER NOT NULL)",
            ]

        def upsert(self, account_id: UUID, amount: int, tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as cursor:
                cursor.execute(
                    "INSERT INTO es_account_summary VALUES (?, 1, ?) ON CONFLICT (account_id)"
                    " DO UPDATE SET events = events + 1, balance = balance + excluded.balance",
                    (account_id.hex, amount),
                )
                self._insert_tracking(cursor, tracking)

        def totals(self) -> tuple[int, int]:
            with self.datastore.transaction(commit=False) as cursor:
                cursor.execute("SELECT count(*), coalesce(sum(events), 0) FROM es_account_summary")
                rows, events = cursor.fetchone()
                return int(rows), int(events)

    return SQLiteSummaryView


def _postgres_view() -> type[SummaryView]:
    from eventsourcing.postgres import PostgresTrackingRecorder
    from psycopg.sql import SQL

    class PostgresSummaryView(PostgresTrackingRecorder, SummaryView):
        def __init__(self, datastore: Any, **kwargs: Any) -> None:
            super().__init__(datastore, **kwargs)
            self.sql_create_statements.append(
                SQL(
                    "CREATE TABLE IF NOT EXISTS es_account_summary (account_id uuid PRIMARY KEY,"
                    " events int NOT NULL, balance bigint NOT NULL)"
                )
            )

        def upsert(self, account_id: UUID, amount: int, tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as cursor:
                cursor.execute(
                    SQL(
                        "INSERT INTO es_account_summary AS s VALUES (%s, 1, %s)"
                        " ON CONFLICT (account_id) DO UPDATE SET events = s.events + 1,"
                        " balance = s.balance + EXCLUDED.balance"
                    ),
                    (account_id, amount),
                    prepare=True,
                )
                self._insert_tracking(cursor, tracking)

        def totals(self) -> tuple[int, int]:
            with self.datastore.transaction(commit=False) as cursor:
                row = cursor.execute(
                    SQL(
                        "SELECT count(*) AS n, coalesce(sum(events), 0) AS e"
                        " FROM es_account_summary"
                    )
                ).fetchone()
                assert row is not None
                return int(row["n"]), int(row["e"])

    return PostgresSummaryView


class EsSummaryProjection(Projection[SummaryView]):
    """Routes account events to the summary view."""

    name = "es_summary"

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    @process_event.register(EsAccount.Created)
    def _created(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.upsert(domain_event.originator_id, 0, tracking)

    @process_event.register(EsAccount.Deposited)
    def _deposited(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.upsert(domain_event.originator_id, domain_event.amount, tracking)


class EsBench:
    """One ``eventsourcing`` application on SQLite or PostgreSQL, with the bench workloads."""

    def __init__(self, *, sqlite_path: Path | None = None, postgres_url: str | None = None):
        if sqlite_path is not None:
            self.backend = "sqlite"
            self.env = {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(sqlite_path),
            }
            self.view_class = _sqlite_view()
        elif postgres_url is not None:
            self.backend = "postgres"
            parts = urlsplit(postgres_url)
            self.env = {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": parts.path.lstrip("/"),
                "POSTGRES_HOST": parts.hostname or "127.0.0.1",
                "POSTGRES_PORT": str(parts.port or 5432),
                "POSTGRES_USER": unquote(parts.username or "postgres"),
                "POSTGRES_PASSWORD": unquote(parts.password or ""),
            }
            self.view_class = _postgres_view()
        else:
            raise ValueError("give sqlite_path or postgres_url")
        self.app = BenchApp(env=self.env)

    def close(self) -> None:
        """Close the application's connections."""
        self.app.close()

    # -- commands ----------------------------------------------------------------------------
    def open_accounts(self, n: int) -> None:
        """Create ``n`` aggregates, one ``save()`` (one transaction) each."""
        save = self.app.save
        for i in range(n):
            save(EsAccount(f"owner-{i}"))

    # -- loading -----------------------------------------------------------------------------
    def store_account(self, n_events: int) -> UUID:
        """Store one account with ``n_events`` events in total; return its id."""
        account = EsAccount("long")
        for _ in range(n_events - 1):
            account.deposit(1, REF)
        self.app.save(account)
        return account.id

    def load(self, account_id: UUID) -> int:
        """Rebuild the account from its events; return its version."""
        return int(self.app.repository.get(account_id).version)

    # -- projection --------------------------------------------------------------------------
    def seed(self, n_events: int, per_account: int = 10) -> int:
        """Store ``n_events`` events (``per_account`` per account, 1,000 per save)."""
        batch: list[EsAccount] = []
        for i in range(n_events // per_account):
            account = EsAccount(f"seed-{i}")
            for _ in range(per_account - 1):
                account.deposit(1, REF)
            batch.append(account)
            if len(batch) == 100:
                self.app.save(*batch)
                batch = []
        if batch:
            self.app.save(*batch)
        last = self.app.recorder.max_notification_id()
        assert last is not None
        return int(last)

    @contextmanager
    def _view(self) -> Iterator[SummaryView]:
        env = {**os.environ, **self.env}
        factory = InfrastructureFactory.construct(env=Environment(EsSummaryProjection.name, env))
        view = factory.tracking_recorder(self.view_class)
        try:
            yield view
        finally:
            factory.close()

    def reset_projection(self) -> None:
        """Drop the read model and its tracking table."""
        with self._view() as view:
            statements = (
                ["DROP TABLE IF EXISTS es_account_summary", "DROP TABLE IF EXISTS tracking"]
                if self.backend == "sqlite"
                else [
                    "DROP TABLE IF EXISTS es_account_summary",
                    f"DROP TABLE IF EXISTS {EsSummaryProjection.name}_tracking",
                    "DROP TABLE IF EXISTS notification_tracking",
                ]
            )
            with view.datastore.transaction(commit=True) as cursor:  # type: ignore[attr-defined]
                for statement in statements:
                    cursor.execute(statement)

    def catch_up(self, last: int, expected_events: int, timeout: float = 900.0) -> float:
        """Build the read model from the whole log; return elapsed seconds (start-up included)."""
        started = time.perf_counter()
        if self.backend == "postgres":
            with ProjectionRunner(
                application_class=BenchApp,
                projection_class=EsSummaryProjection,
                view_class=self.view_class,
                env=self.env,
            ) as runner:
                runner.wait(last, timeout=timeout)
                elapsed = time.perf_counter() - started
                _, events = runner.view.totals()
        else:
            with self._view() as view:
                projection = EsSummaryProjection(view=view)
                recorder, mapper, name = self.app.recorder, self.app.mapper, self.app.name
                position = view.max_tracking_id(name) or 0
                while position < last:
                    page = recorder.select_notifications(
                        start=position, limit=500, inclusive_of_start=False
                    )
                    if not page:
                        break
                    for notification in page:
                        projection.process_event(
                            mapper.to_domain_event(notification), Tracking(name, notification.id)
                        )
                    position = page[-1].id
                elapsed = time.perf_counter() - started
                _, events = view.totals()
        if events != expected_events:
            raise AssertionError(f"eventsourcing projection saw {events} of {expected_events}")
        return elapsed
