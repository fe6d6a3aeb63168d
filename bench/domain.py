"""The benchmark's own small domain on cqrskit: accounts that are opened and take deposits.

The same shape as the ``eventsourcing`` side (:mod:`bench.es_side`): a creation event with
an owner, ``Deposited(amount, ref)`` events, and a summary read model with one row per account
(events seen, balance).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from cqrskit import Aggregate, Command, DomainEvent, Projection, Repository, applies, on, sql
from cqrskit.command_bus import CommandBus
from cqrskit.read_models.protocol import Statement

__all__ = [
    "REF",
    "Account",
    "AccountOpened",
    "AccountSummary",
    "Deposited",
    "OpenAccount",
    "register",
]

REF = "benchmark deposit"


class AccountOpened(DomainEvent):
    """An account was opened."""

    event_type = "BenchAccountOpened"
    owner: str


class Deposited(DomainEvent):
    """Money went into an account."""

    event_type = "BenchDeposited"
    amount: int
    ref: str


class Account(Aggregate):
    """A bank-account-like aggregate."""

    category = "benchaccount"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.owner = ""
        self.balance = 0

    @classmethod
    def open(cls, account_id: str, owner: str, *, at: datetime) -> Account:
        """Open an account."""
        account = cls(account_id)
        account._raise(AccountOpened(owner=owner, occurred_at=at))
        return account

    def deposit(self, amount: int, ref: str, *, at: datetime) -> None:
        """Add money."""
        self._raise(Deposited(amount=amount, ref=ref, occurred_at=at))

    @applies(AccountOpened)
    def _opened(self, event: AccountOpened) -> None:
        self.owner = event.owner

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


class OpenAccount(Command):
    """Open a new account (a new stream with one event)."""

    account_id: UUID
    owner: str


async def open_account(command: OpenAccount, repository: Repository) -> None:
    """Handle :class:`OpenAccount` (the expected version ``0`` guards against duplicates)."""
    repository.add(Account.open(str(command.account_id), command.owner, at=command.timestamp))


def register(bus: CommandBus) -> None:
    """Register the benchmark's command handler."""
    bus.register(OpenAccount, open_account)


_UPSERT = sql(
    "INSERT INTO bench_account_summary (account_id, events, balance) VALUES ($1, 1, $2)"
    " ON CONFLICT (account_id) DO UPDATE SET events = bench_account_summary.events + 1,"
    " balance = bench_account_summary.balance + excluded.balance"
)


class AccountSummary(Projection):
    """One row per account: how many events it has and its balance."""

    name = "bench_account_summary"
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS bench_account_summary ("
            " account_id TEXT PRIMARY KEY, events INTEGER NOT NULL, balance BIGINT NOT NULL)"
        ),
    )
    truncate = (sql("DELETE FROM bench_account_summary"),)
    upsert = _UPSERT

    @on(AccountOpened)
    def _opened(self, event: AccountOpened) -> list[Statement]:
        return [_UPSERT(event.stream_id, 0)]

    @on(Deposited)
    def _deposited(self, event: Deposited) -> list[Statement]:
        return [_UPSERT(event.stream_id, event.amount)]
