"""Aggregates: raise and apply, rehydration equal to the live object, versions, pending events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cqrskit.aggregate import Aggregate, applies
from cqrskit.errors import InvalidState
from cqrskit.messages import DomainEvent

AT = datetime(2024, 6, 1, tzinfo=UTC)


class Opened(DomainEvent):
    event_type = "tests.aggregate.Opened"

    owner: str


class Deposited(DomainEvent):
    event_type = "tests.aggregate.Deposited"

    amount: int


class Closed(DomainEvent):
    event_type = "tests.aggregate.Closed"


class NeverApplied(DomainEvent):
    event_type = "tests.aggregate.NeverApplied"


class Account(Aggregate):
    category = "account"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.owner = ""
        self.balance = 0
        self.closed = False

    @classmethod
    def open(cls, account_id: str, owner: str, *, at: datetime) -> Account:
        account = cls(account_id)
        account._raise(Opened(owner=owner, occurred_at=at))
        return account

    def deposit(self, amount: int, *, at: datetime) -> None:
        if self.closed:
            raise InvalidState("account is closed")
        self._raise(Deposited(amount=amount, occurred_at=at))

    def close(self, *, at: datetime) -> None:
        self._raise(Closed(occurred_at=at))

    def raise_unhandled(self) -> None:
        self._raise(NeverApplied(occurred_at=AT))

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owner = event.owner

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount

    @applies(Closed)
    def _closed(self, event: Closed) -> None:
        self.closed = True


class SavingsAccount(Account):
    category = "savings"

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount * 2


def state(account: Account) -> tuple[str, int, bool, int]:
    return account.owner, account.balance, account.closed, account.version


def test_raise_applies_and_numbers_events() -> None:
    account = Account.open("a1", "ada", at=AT)
    account.deposit(5, at=AT)
    account.deposit(7, at=AT)
    assert state(account) == ("ada", 12, False, 3)
    assert [(e.stream_id, e.version) for e in account.pending_events] == [
        ("account-a1", 1),
        ("account-a1", 2),
        ("account-a1", 3),
    ]


def test_rehydrate_equals_live() -> None:
    live = Account.open("a1", "ada", at=AT)
    live.deposit(5, at=AT)
    live.close(at=AT)
    replayed = Account.rehydrate("a1", live.pending_events)
    assert state(replayed) == state(live)
    assert replayed.pending_events == ()
    assert replayed.loaded_version == 3


def test_loaded_version_is_the_version_before_pending_events() -> None:
    history = Account.open("a1", "ada", at=AT)
    history.deposit(1, at=AT)
    account = Account.rehydrate("a1", history.pending_events)
    assert account.loaded_version == 2
    account.deposit(3, at=AT)
    account.deposit(4, at=AT)
    assert account.version == 4
    assert account.loaded_version == 2
    assert [e.version for e in account.pending_events] == [3, 4]


def test_new_aggregate_is_loaded_at_version_0() -> None:
    account = Account.open("a1", "ada", at=AT)
    assert account.loaded_version == 0


def test_mark_saved_forgets_pending_events() -> None:
    account = Account.open("a1", "ada", at=AT)
    account.mark_saved()
    assert account.pending_events == ()
    assert account.loaded_version == account.version == 1


def test_pending_events_are_a_snapshot() -> None:
    account = Account.open("a1", "ada", at=AT)
    pending = account.pending_events
    account.deposit(1, at=AT)
    assert len(pending) == 1
    assert len(account.pending_events) == 2


def test_rejected_action_changes_nothing() -> None:
    account = Account.open("a1", "ada", at=AT)
    account.close(at=AT)
    with pytest.raises(InvalidState):
        account.deposit(1, at=AT)
    assert account.version == 2
    assert len(account.pending_events) == 2


def test_unknown_event_type_raises() -> None:
    account = Account.open("a1", "ada", at=AT)
    with pytest.raises(TypeError, match="NeverApplied"):
        account.raise_unhandled()
    assert len(account.pending_events) == 1
    assert account.version == 1
    stored = NeverApplied(occurred_at=AT, stream_id="account-a1", version=1)
    with pytest.raises(TypeError):
        Account.rehydrate("a1", [stored])


def test_stream_id_combines_category_and_id() -> None:
    assert Account.stream_id_for("x") == "account-x"
    assert Account("x").stream_id == "account-x"
    assert SavingsAccount("x").stream_id == "savings-x"


def test_subclass_inherits_and_overrides_appliers() -> None:
    savings = SavingsAccount.open("s1", "bob", at=AT)
    savings.deposit(5, at=AT)
    assert savings.owner == "bob"
    assert savings.balance == 10
    plain = Account.open("a1", "bob", at=AT)
    plain.deposit(5, at=AT)
    assert plain.balance == 5


def test_rehydrate_takes_versions_from_stored_events() -> None:
    events = [
        Opened(owner="ada", occurred_at=AT, stream_id="account-a1", version=1),
        Deposited(amount=2, occurred_at=AT, stream_id="account-a1", version=2),
    ]
    account = Account.rehydrate("a1", events)
    assert account.version == 2
    account.deposit(1, at=AT)
    assert account.pending_events[0].version == 3
