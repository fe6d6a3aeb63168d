"""Logical table names become a generation's physical names, whole words only."""

from __future__ import annotations

import re

import pytest

from cqrskit.projections.projection import Projection, physical_name, rename_sql
from cqrskit.read_models.protocol import sql
from orders.service import service

NAMES = ("order_search_orders", "order_search_fts", "order_search_by_created")


def test_generation_one_keeps_the_logical_names() -> None:
    statement = sql("SELECT * FROM order_search_orders")
    assert rename_sql(statement, NAMES, 1) is statement
    assert physical_name("order_search_orders", 1) == "order_search_orders"


def test_later_generations_get_a_suffix_on_whole_words_only() -> None:
    statement = sql(
        "CREATE VIRTUAL TABLE IF NOT EXISTS order_search_fts USING fts5(document,"
        " content='order_search_orders', content_rowid='doc_id');"
        " SELECT order_search_orders_extra, xorder_search_orders FROM order_search_orders"
    )
    renamed = rename_sql(statement, NAMES, 3)
    assert renamed.postgres == renamed.sqlite.replace("?", "$")
    assert renamed.sqlite == (
        "CREATE VIRTUAL TABLE IF NOT EXISTS order_search_fts__g3 USING fts5(document,"
        " content='order_search_orders__g3', content_rowid='doc_id');"
        " SELECT order_search_orders_extra, xorder_search_orders FROM order_search_orders__g3"
    )


def test_parameters_are_untouched() -> None:
    statement = sql("UPDATE order_search_orders SET status = $2 WHERE order_id = $1")
    assert rename_sql(statement, NAMES, 2).sqlite == (
        "UPDATE order_search_orders__g2 SET status = ?2 WHERE order_id = ?1"
    )


_CREATED = re.compile(r"CREATE (?:VIRTUAL TABLE|TABLE|INDEX|TRIGGER)(?: IF NOT EXISTS)? (\w+)")


@pytest.mark.parametrize("projection", service.projections(), ids=lambda p: p.name)
def test_every_orders_projection_declares_every_name_its_schema_creates(
    projection: Projection,
) -> None:
    created = {
        name
        for statement in projection.schema
        for text in (statement.postgres, statement.sqlite)
        for name in _CREATED.findall(text)
    }
    assert created
    assert created <= set(projection.schema_names), created - set(projection.schema_names)
    assert set(projection.tables) <= created
