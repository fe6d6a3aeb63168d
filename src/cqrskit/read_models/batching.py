"""Plan a batch's statements into as few ``executemany`` runs as their declared keys allow.

A batch of a projection holds one or more statements per event, in log order. Sent one by
one, the orders log (``OrderCreated``, eight ``OrderItemAdded``, ``OrderShipped`` per order)
costs a round trip per change of statement text: three per order. Most of those statements
touch rows of one order only, so the statements of different orders could run in any order;
what must not move is the order of statements that touch the same rows.

A projection says which rows a statement touches by declaring **keys** on its SQL
(:func:`~cqrskit.read_models.protocol.sql`'s ``keys``: a key space and the parameter that
names the row, such as ``{"order": 1, "customer": 2}``). The promise is: *two statements that
share no key may run in either order with the same outcome.* :func:`plan` then groups the
batch by statement text, keeping every pair of statements that share a key (and every
statement without keys) in log order:

- a keyed statement joins the latest run of its text that starts no earlier than the last run
  holding any of its keys (and no earlier than the last unkeyed statement); otherwise it opens
  a new run at the end;
- a statement without keys is a barrier: it runs after everything before it and before
  everything after it (it joins the last run only when that run has its text).

Within a run, statements keep their log order (``executemany`` executes them in sequence).
So every pair that shares a key, and every pair involving a barrier, runs in log order, and
the result is the same as running the batch statement by statement. A statement without keys
costs what it cost before: nothing changes for projections that declare none.

What a key must cover: every row the statement reads or writes that another statement of the
projection may write. A statement that reaches a row only through another row (``UPDATE
customers ... WHERE customer_id = (SELECT customer_id FROM orders WHERE order_id = $1)``)
cannot name it by a parameter: leave it without keys.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from cqrskit.read_models.protocol import Statement

__all__ = ["Run", "plan"]

Run = tuple[str, list[tuple[Any, ...]]]
"""One statement text and the parameter tuples to execute it with, in order."""


def plan(statements: Sequence[Statement], text: Callable[[Statement], str]) -> list[Run]:
    """Group ``statements`` into runs of one text, keeping the order their keys require.

    ``text`` picks the dialect's SQL text of a statement.
    """
    runs: list[Run] = []
    last_run_of_text: dict[str, int] = {}
    last_run_of_key: dict[Hashable, int] = {}
    floor = 0  # the run of the last statement without keys
    for statement in statements:
        sql_text = text(statement)
        keys = statement.sql.keys
        if keys:
            params = statement.params
            row_keys = [(space, params[number - 1]) for space, number in keys]
            earliest = floor
            for key in row_keys:
                earliest = max(earliest, last_run_of_key.get(key, 0))
            index = last_run_of_text.get(sql_text, -1)
            if index < earliest or index < 0:
                index = _open(runs, last_run_of_text, sql_text)
            for key in row_keys:
                last_run_of_key[key] = index
        else:
            index = len(runs) - 1
            if index < 0 or runs[index][0] != sql_text:
                index = _open(runs, last_run_of_text, sql_text)
            floor = index
        runs[index][1].append(statement.params)
    return runs


def _open(runs: list[Run], last_run_of_text: dict[str, int], sql_text: str) -> int:
    runs.append((sql_text, []))
    index = len(runs) - 1
    last_run_of_text[sql_text] = index
    return index
