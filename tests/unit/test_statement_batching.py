"""Keyed statement batching: fewer runs, same result as running the batch statement by statement.

The property test runs random batches on a real (in-memory) SQLite database twice, once
statement by statement and once as :func:`~cqrskit.read_models.batching.plan` groups them,
with statements chosen so that any reordering of two statements that share a key, or of a
statement across a barrier, changes the outcome.
"""

from __future__ import annotations

import sqlite3
from operator import attrgetter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cqrskit.read_models.batching import plan
from cqrskit.read_models.protocol import Statement, sql

TEXT = attrgetter("sql.sqlite")

CREATE = sql("INSERT INTO orders (id, customer) VALUES ($1, $2)", keys={"order": 1, "cust": 2})
ADD = sql("UPDATE orders SET total = total + $2 WHERE id = $1", keys={"order": 1})
SHIP = sql("UPDATE orders SET status = 'shipped' WHERE id = $1", keys={"order": 1})
PUT = sql("INSERT INTO customers (id) VALUES ($1)", keys={"cust": 1})
AUDIT = sql("INSERT INTO audit (note) VALUES ($1)")


def test_an_orders_batch_needs_one_run_per_statement_text() -> None:
    batch: list[Statement] = []
    for n in range(50):
        batch += [CREATE(f"o{n}", "c"), ADD(f"o{n}", 1), ADD(f"o{n}", 2), SHIP(f"o{n}")]
    runs = plan([PUT("c"), *batch], TEXT)
    assert [text for text, _ in runs] == [PUT.sqlite, CREATE.sqlite, ADD.sqlite, SHIP.sqlite]
    assert [len(params) for _, params in runs] == [1, 50, 100, 50]
    # Within a run, log order: o0's two additions come before o1's.
    assert runs[2][1][:4] == [("o0", 1), ("o0", 2), ("o1", 1), ("o1", 2)]


def test_statements_sharing_a_key_keep_their_order() -> None:
    # o1 is shipped and then gets an addition: the addition must run after the shipping,
    # so it cannot join the earlier run of additions.
    runs = plan([ADD("o0", 1), SHIP("o1"), ADD("o1", 5)], TEXT)
    assert runs == [(ADD.sqlite, [("o0", 1)]), (SHIP.sqlite, [("o1",)]), (ADD.sqlite, [("o1", 5)])]


def test_a_statement_with_two_keys_waits_for_both() -> None:
    runs = plan([CREATE("o0", "a"), PUT("b"), CREATE("o1", "b")], TEXT)
    assert [text for text, _ in runs] == [CREATE.sqlite, PUT.sqlite, CREATE.sqlite]


def test_a_statement_without_keys_is_a_barrier() -> None:
    runs = plan([ADD("o0", 1), AUDIT("x"), ADD("o1", 1), AUDIT("y"), AUDIT("z")], TEXT)
    assert runs == [
        (ADD.sqlite, [("o0", 1)]),
        (AUDIT.sqlite, [("x",)]),
        (ADD.sqlite, [("o1", 1)]),
        (AUDIT.sqlite, [("y",), ("z",)]),
    ]


def test_without_keys_only_consecutive_texts_are_grouped() -> None:
    plain = sql("UPDATE t SET v = $2 WHERE k = $1")
    runs = plan([plain(1, 1), plain(2, 2), AUDIT("a"), plain(3, 3)], TEXT)
    assert [len(params) for _, params in runs] == [2, 1, 1]


def test_a_key_must_name_a_parameter_the_statement_uses() -> None:
    with pytest.raises(ValueError, match=r"\$3"):
        sql("UPDATE t SET v = $2 WHERE k = $1", keys={"k": 3})


# The property: cells whose updates do not commute per key (v * 3 + x), a statement that
# reads one cell and writes another, and a barrier touching every row.
_SCHEMA = (
    "CREATE TABLE cell (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
    "CREATE TABLE trail (n INTEGER PRIMARY KEY AUTOINCREMENT, k INTEGER, v INTEGER)",
)
_AFFINE = sql("UPDATE cell SET v = v * 3 + $2 WHERE k = $1", keys={"cell": 1})
# Records the cell's value as seen at that point: per key, the trail keeps log order.
_NOTE = sql("INSERT INTO trail (k, v) SELECT k, v FROM cell WHERE k = $1", keys={"cell": 1})
_PULL = sql(
    "UPDATE cell SET v = (v + (SELECT v FROM cell WHERE k = $2)) % 100003 WHERE k = $1",
    keys={"cell": (1, 2)},
)
_ALL = sql("UPDATE cell SET v = v % 1000 + 1")

_cell = st.integers(0, 4)
_statement = st.one_of(
    st.builds(lambda k, x: _AFFINE(k, x), _cell, st.integers(-3, 3)),
    st.builds(lambda k: _NOTE(k), _cell),
    st.builds(lambda a, b: _PULL(a, b), _cell, _cell),
    st.just(_ALL()),
)


def _run(statements: list[Statement], grouped: bool) -> tuple[list[tuple[int, int]], ...]:
    conn = sqlite3.connect(":memory:")
    try:
        for ddl in _SCHEMA:
            conn.execute(ddl)
        conn.executemany("INSERT INTO cell (k, v) VALUES (?, ?)", [(k, k + 1) for k in range(5)])
        if grouped:
            for text, params in plan(statements, TEXT):
                conn.executemany(text, params)
        else:
            for statement in statements:
                conn.execute(statement.sql.sqlite, statement.params)
        cells = conn.execute("SELECT k, v FROM cell ORDER BY k").fetchall()
        trail = conn.execute("SELECT k, v FROM trail ORDER BY k, n").fetchall()
        return cells, trail
    finally:
        conn.close()


@settings(max_examples=400, deadline=None)
@given(st.lists(_statement, max_size=40))
def test_grouped_batches_give_the_same_rows_as_one_by_one(statements: list[Statement]) -> None:
    assert _run(statements, grouped=True) == _run(statements, grouped=False)


def test_the_property_would_notice_a_dishonest_key() -> None:
    # The same cells keyed under a space that no other statement uses: plan() may then move
    # the update across the others, and the outcome changes.
    dishonest = sql("UPDATE cell SET v = v * 3 + $2 WHERE k = $1", keys={"elsewhere": 1})
    batch = [_AFFINE(0, 1), _NOTE(0), dishonest(0, 2), _AFFINE(0, 1)]
    assert _run(batch, grouped=True) != _run(batch, grouped=False)
