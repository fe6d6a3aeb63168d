"""Projection base: route events by type to pure handlers that return SQL statements.

A handler never touches the database: it returns the statements that bring the read model up
to date with one event, and the runner commits a whole batch of them together with the
checkpoint. Handlers are written so that a lookup they need (a customer's name, a product's
name) comes from the projection's own tables, fed by the same log, never from another
projection's tables whose position may differ.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, ClassVar, TypeVar

from cqrskit.messages import DomainEvent
from cqrskit.read_models.protocol import Sql, Statement

__all__ = ["Projection", "on", "physical_name", "rename_sql"]

E = TypeVar("E", bound=DomainEvent)
_Handler = Callable[[Any, Any], Iterable[Statement]]


def on(
    event_type: type[E],
) -> Callable[[Callable[[Any, E], Iterable[Statement]]], Callable[[Any, E], Iterable[Statement]]]:
    """Mark a method as the projection's handler for ``event_type``."""

    def mark(
        method: Callable[[Any, E], Iterable[Statement]],
    ) -> Callable[[Any, E], Iterable[Statement]]:
        method.__cqrskit_on__ = event_type  # type: ignore[attr-defined]
        return method

    return mark


def physical_name(name: str, generation: int) -> str:
    """Return the physical name of a logical schema object in one generation of a read model.

    Generation 1 keeps the logical name itself (so databases created before blue/green
    rebuilds are generation 1 as they stand); later generations carry a ``__g<n>`` suffix.
    """
    return name if generation <= 1 else f"{name}__g{generation}"


@lru_cache(maxsize=4096)
def _pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first, so a name that is a prefix of another never wins; whole words only.
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"\b({alternatives})\b")


@lru_cache(maxsize=8192)
def _rename_text(text: str, names: tuple[str, ...], generation: int) -> str:
    return _pattern(names).sub(lambda m: physical_name(m.group(1), generation), text)


def rename_sql(statement: Sql, names: tuple[str, ...], generation: int) -> Sql:
    """Rewrite every whole-word logical name in ``names`` to its physical name.

    Only constant SQL texts declared by projections pass through here (never user input:
    values travel as bound parameters), and results are cached per (text, generation).
    """
    if generation <= 1 or not names:
        return statement
    return _renamed(statement, names, generation)


@lru_cache(maxsize=8192)
def _renamed(statement: Sql, names: tuple[str, ...], generation: int) -> Sql:
    return Sql(
        _rename_text(statement.postgres, names, generation),
        _rename_text(statement.sqlite, names, generation),
        statement.keys,
    )


class Projection:
    """A named, versioned, rebuildable read model.

    Subclasses set ``name``, ``schema`` (idempotent DDL), ``truncate`` (statements that empty
    every table the projection owns) and decorate handlers with :func:`on`.

    For blue/green rebuilds (see ``docs/rebuilds.md``) a projection also declares the logical
    names of what its schema creates: ``tables`` (dropped when a generation retires, in
    order: a full-text index before its content table) and ``indexes`` (index and trigger
    names, which PostgreSQL keeps per schema, so each generation needs its own). Handlers and
    queries keep writing the logical names; the runner and the read side rewrite them to the
    physical names of the generation they work on. A projection without ``tables`` can only
    be rebuilt in place.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    schema: ClassVar[Sequence[Sql]] = ()
    truncate: ClassVar[Sequence[Sql]] = ()
    tables: ClassVar[tuple[str, ...]] = ()
    indexes: ClassVar[tuple[str, ...]] = ()
    staged_rebuild: ClassVar[bool] = False
    """Whether the SQLite form of every statement builds exactly the rows the PostgreSQL form
    does, so a PostgreSQL rebuild may replay into a SQLite file and COPY the rows
    (:mod:`cqrskit.projections.staging`)."""
    _routes: ClassVar[dict[type[DomainEvent], _Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        routes = dict(cls._routes)
        for value in vars(cls).values():
            event_type = getattr(value, "__cqrskit_on__", None)
            if event_type is not None:
                routes[event_type] = value
        cls._routes = routes

    @property
    def handled_types(self) -> frozenset[str]:
        """Event type names this projection reacts to."""
        return frozenset(t.event_type for t in self._routes)

    def cache_tags(self, event: DomainEvent) -> Iterable[str]:
        """Name what ``event`` changes in this read model, for cache invalidation.

        Called only for handled events, after their batch committed. The default, ``"*"``,
        means "anything": every cached answer read from this projection is invalidated.
        Override it with exact tags (``f"order:{event.order_id}"``) that cached queries
        declare too (:class:`~cqrskit.query_bus.Cached`); return nothing when the event
        changes no row a query reads (a lookup table only).
        """
        return ("*",)

    def apply(self, event: DomainEvent) -> Iterable[Statement]:
        """Return the statements for one event (none when the type is not handled)."""
        handler = self._routes.get(type(event))
        if handler is None:
            return ()
        return handler(self, event)

    @property
    def schema_names(self) -> tuple[str, ...]:
        """Every logical name a generation renames: tables, then indexes and triggers."""
        return (*self.tables, *self.indexes)

    def physical(self, statement: Sql, generation: int) -> Sql:
        """Return ``statement`` rewritten to the physical names of ``generation``."""
        return rename_sql(statement, self.schema_names, generation)
