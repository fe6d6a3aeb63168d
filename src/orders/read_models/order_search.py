"""Order search: full-text search over customer name, email and product names.

Each order row carries a ``document`` text (the customer's terms and the names of the ordered
products), indexed by the database's own full-text engine:

- PostgreSQL: a generated ``tsvector`` column (``to_tsvector('simple', document)``) with a
  GIN index, queried with ``to_tsquery`` built from word tokens as prefix terms;
- SQLite: an FTS5 index over the same column (external content, kept in step by triggers),
  queried with each word token quoted as a string literal, as a prefix.

The user's text never becomes SQL: it is split into word tokens, which travel as one bound
parameter; sort columns come from an allow-list of constant SQL texts.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator

from cqrskit.projections.projection import Projection, on
from cqrskit.read_models.protocol import ReadModelStore, Sql, Statement, sql
from orders.customer import CustomerRegistered
from orders.order import OrderCancelled, OrderCreated, OrderItemAdded, OrderShipped
from orders.product import ProductAdded
from orders.queries import OrderSummaryPage, SearchOrders
from orders.read_models._common import (
    CANCELLED,
    PENDING,
    SHIPPED,
    lines_total,
    summary_view,
    timestamp,
)

__all__ = [
    "OrderSearchProjection",
    "fts5_query",
    "search_orders",
    "search_terms",
    "tsquery",
    "word_tokens",
]

_WORD = re.compile(r"[^\W_]+")


def word_tokens(text: str) -> list[str]:
    """Split text into lower-case words (letters and digits); everything else separates."""
    return _WORD.findall(text.lower())


def search_terms(name: str, email: str) -> str:
    """Return a customer's searchable text: name, email, and the email's words."""
    return " ".join([name, email, *word_tokens(email)])


def fts5_query(text: str) -> str | None:
    """Return an FTS5 query matching every word of ``text`` as a prefix (``None``: no word)."""
    tokens = word_tokens(text)
    if not tokens:
        return None
    return " AND ".join('"' + token.replace('"', '""') + '"*' for token in tokens)


def tsquery(text: str) -> str | None:
    """Return a PostgreSQL tsquery matching every word of ``text`` as a prefix."""
    tokens = word_tokens(text)
    if not tokens:
        return None
    return " & ".join("'" + token.replace("'", "''") + "':*" for token in tokens)


def _postgres_only(text: str) -> Sql:
    # SQLite keeps its index in the FTS5 table instead; it runs a no-op here.
    return Sql(text, "SELECT 1")


def _sqlite_only(text: str) -> Sql:
    # PostgreSQL keeps its index in the generated tsvector column; it runs a no-op here.
    return Sql("SELECT 1", text)


_SUMMARY_COLUMNS = (
    " customer_id TEXT NOT NULL, customer_name TEXT NOT NULL, status TEXT NOT NULL,"
    " total_cents BIGINT NOT NULL, item_count BIGINT NOT NULL, created_at TEXT NOT NULL,"
    " updated_at TEXT NOT NULL, document TEXT NOT NULL"
)
_SCHEMA = (
    sql(
        "CREATE TABLE IF NOT EXISTS order_search_customers ("
        " customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, terms TEXT NOT NULL)"
    ),
    sql(
        "CREATE TABLE IF NOT EXISTS order_search_products ("
        " product_id TEXT PRIMARY KEY, name TEXT NOT NULL)"
    ),
    sql(
        "CREATE TABLE IF NOT EXISTS order_search_lines (order_id TEXT NOT NULL,"
        " line_no BIGINT NOT NULL, product_name TEXT NOT NULL, PRIMARY KEY (order_id, line_no))"
    ),
    sql(
        f"CREATE TABLE IF NOT EXISTS order_search_orders (order_id TEXT PRIMARY KEY,"
        f"{_SUMMARY_COLUMNS}, search tsvector GENERATED ALWAYS AS"
        " (to_tsvector('simple', document)) STORED)",
        sqlite=f"CREATE TABLE IF NOT EXISTS order_search_orders (doc_id INTEGER PRIMARY KEY,"
        f" order_id TEXT NOT NULL UNIQUE,{_SUMMARY_COLUMNS})",
    ),
    sql("CREATE INDEX IF NOT EXISTS order_search_by_created ON order_search_orders (created_at)"),
    sql("CREATE INDEX IF NOT EXISTS order_search_by_updated ON order_search_orders (updated_at)"),
    sql("CREATE INDEX IF NOT EXISTS order_search_by_total ON order_search_orders (total_cents)"),
    sql(
        "CREATE INDEX IF NOT EXISTS order_search_by_customer"
        " ON order_search_orders (customer_id, created_at)"
    ),
    _postgres_only(
        "CREATE INDEX IF NOT EXISTS order_search_document ON order_search_orders USING GIN (search)"
    ),
    _sqlite_only(
        "CREATE VIRTUAL TABLE IF NOT EXISTS order_search_fts USING fts5("
        "document, content='order_search_orders', content_rowid='doc_id')"
    ),
    _sqlite_only(
        "CREATE TRIGGER IF NOT EXISTS order_search_fts_insert AFTER INSERT ON order_search_orders"
        " BEGIN INSERT INTO order_search_fts (rowid, document) VALUES (new.doc_id, new.document);"
        " END"
    ),
    _sqlite_only(
        "CREATE TRIGGER IF NOT EXISTS order_search_fts_update"
        " AFTER UPDATE OF document ON order_search_orders BEGIN"
        " INSERT INTO order_search_fts (order_search_fts, rowid, document)"
        " VALUES ('delete', old.doc_id, old.document);"
        " INSERT INTO order_search_fts (rowid, document) VALUES (new.doc_id, new.document); END"
    ),
)
_TRUNCATE = (
    _sqlite_only("INSERT INTO order_search_fts (order_search_fts) VALUES ('delete-all')"),
    sql("DELETE FROM order_search_orders"),
    sql("DELETE FROM order_search_lines"),
    sql("DELETE FROM order_search_products"),
    sql("DELETE FROM order_search_customers"),
)

PUT_CUSTOMER = sql(
    "INSERT INTO order_search_customers (customer_id, name, terms) VALUES ($1, $2, $3)"
    " ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name, terms = excluded.terms",
    keys={"customer": 1},
)
PUT_PRODUCT = sql(
    "INSERT INTO order_search_products (product_id, name) VALUES ($1, $2)"
    " ON CONFLICT (product_id) DO UPDATE SET name = excluded.name",
    keys={"product": 1},
)
INSERT_LINE = sql(
    "INSERT INTO order_search_lines (order_id, line_no, product_name)"
    " VALUES ($1, $2, COALESCE((SELECT name FROM order_search_products WHERE product_id = $3),"
    " '')) ON CONFLICT (order_id, line_no) DO NOTHING",
    keys={"order": 1, "product": 3},
)
APPEND_LINE = sql(
    "INSERT INTO order_search_lines (order_id, line_no, product_name) VALUES ($1,"
    " (SELECT COALESCE(MAX(line_no), 0) + 1 FROM order_search_lines WHERE order_id = $1),"
    " COALESCE((SELECT name FROM order_search_products WHERE product_id = $2), ''))",
    keys={"order": 1, "product": 2},
)

# The document: the customer's terms, then the product names in line order.
_TERMS = "COALESCE((SELECT terms FROM order_search_customers WHERE customer_id = {}), '')"
_NAMES_PG = (
    "COALESCE((SELECT string_agg(product_name, ' ' ORDER BY line_no)"
    " FROM order_search_lines WHERE order_id = $1), '')"
)
_NAMES_SQLITE = (
    "COALESCE((SELECT group_concat(product_name, ' ') FROM (SELECT product_name"
    " FROM order_search_lines WHERE order_id = ?1 ORDER BY line_no)), '')"
)
_CREATE = (
    "INSERT INTO order_search_orders (order_id, customer_id, customer_name, status, total_cents,"
    " item_count, created_at, updated_at, document) VALUES ({p}1, {p}2,"
    " COALESCE((SELECT name FROM order_search_customers WHERE customer_id = {p}2), ''),"
    " {p}3, {p}4, {p}5, {p}6, {p}6, {terms} || ' ' || {names})"
    " ON CONFLICT (order_id) DO NOTHING"
)
CREATE_ORDER = sql(
    _CREATE.format(p="$", terms=_TERMS.format("$2"), names=_NAMES_PG),
    sqlite=_CREATE.format(p="?", terms=_TERMS.format("?2"), names=_NAMES_SQLITE),
)
_ADD = (
    "UPDATE order_search_orders SET total_cents = total_cents + {p}2,"
    " item_count = item_count + 1, updated_at = {p}3,"
    " document = {terms} || ' ' || {names} WHERE order_id = {p}1"
)
# Keyed by the order alone although it reads the customer's terms through the order's row:
# a customer registers once, before any of its orders (whose CREATE_ORDER shares the customer
# key with PUT_CUSTOMER), so no customer statement can move across it.
ADD_ITEM = sql(
    _ADD.format(p="$", terms=_TERMS.format("order_search_orders.customer_id"), names=_NAMES_PG),
    sqlite=_ADD.format(
        p="?", terms=_TERMS.format("order_search_orders.customer_id"), names=_NAMES_SQLITE
    ),
    keys={"order": 1},
)
SET_STATUS = sql(
    "UPDATE order_search_orders SET status = $2, updated_at = $3 WHERE order_id = $1",
    keys={"order": 1},
)

_COLUMNS = (
    "order_id, customer_id, customer_name, status, total_cents, item_count, created_at, updated_at"
)
_FILTERS = (
    " WHERE (CAST($1 AS TEXT) IS NULL OR status = $1)"
    " AND (CAST($2 AS TEXT) IS NULL OR customer_id = $2)"
)
_MATCH = {
    "postgresql": " AND search @@ to_tsquery('simple', $3)",
    "sqlite": " AND doc_id IN (SELECT rowid FROM order_search_fts WHERE order_search_fts MATCH $3)",
}
_SORT_COLUMNS = {
    "created_at": "created_at",
    "updated_at": "updated_at",
    "total_amount": "total_cents",
}
_DIRECTIONS = {"asc": "ASC", "desc": "DESC"}


def _search_sql(select: str, match: bool, tail: str = "") -> Sql:
    # Parameters: $1 status, $2 customer, then $3 the text query when matching, then the rest.
    texts = {
        dialect: select + _FILTERS + (condition if match else "") + tail
        for dialect, condition in _MATCH.items()
    }
    return sql(texts["postgresql"], sqlite=sql(texts["sqlite"]).sqlite)


def _page_sql(match: bool, column: str, direction: str) -> Sql:
    first = 4 if match else 3
    return _search_sql(
        f"SELECT {_COLUMNS} FROM order_search_orders",  # noqa: S608 - constant text
        match,
        f" ORDER BY {column} {direction}, order_id {direction} LIMIT ${first} OFFSET ${first + 1}",
    )


# Every SQL text the search can run, built once from constants: (match, sort_by, order).
_PAGES = {
    (match, sort_by, order): _page_sql(match, column, direction)
    for match in (False, True)
    for sort_by, column in _SORT_COLUMNS.items()
    for order, direction in _DIRECTIONS.items()
}
_COUNTS = {
    match: _search_sql("SELECT COUNT(*) AS total FROM order_search_orders", match)
    for match in (False, True)
}


class OrderSearchProjection(Projection):
    """Order summaries with a full-text index over customer and product names."""

    name = "order_search"
    version = 1
    staged_rebuild = True  # both dialects build the same rows (test_staged_rebuild.py)
    tables = (
        "order_search_fts",
        "order_search_customers",
        "order_search_products",
        "order_search_lines",
        "order_search_orders",
    )
    indexes = (
        "order_search_by_created",
        "order_search_by_updated",
        "order_search_by_total",
        "order_search_by_customer",
        "order_search_document",
        "order_search_fts_insert",
        "order_search_fts_update",
    )
    schema = _SCHEMA
    truncate = _TRUNCATE

    @on(CustomerRegistered)
    def _customer(self, event: CustomerRegistered) -> Iterator[Statement]:
        yield PUT_CUSTOMER(event.customer_id, event.name, search_terms(event.name, event.email))

    @on(ProductAdded)
    def _product(self, event: ProductAdded) -> Iterator[Statement]:
        yield PUT_PRODUCT(event.product_id, event.name)

    @on(OrderCreated)
    def _created(self, event: OrderCreated) -> Iterator[Statement]:
        for line_no, line in enumerate(event.items, start=1):
            yield INSERT_LINE(event.order_id, line_no, str(line.product_id))
        yield CREATE_ORDER(
            event.order_id,
            event.customer_id,
            PENDING,
            lines_total(event.items),
            len(event.items),
            timestamp(event.occurred_at),
        )

    @on(OrderItemAdded)
    def _item_added(self, event: OrderItemAdded) -> Iterator[Statement]:
        yield APPEND_LINE(event.order_id, str(event.item.product_id))
        yield ADD_ITEM(event.order_id, lines_total([event.item]), timestamp(event.occurred_at))

    @on(OrderShipped)
    def _shipped(self, event: OrderShipped) -> Iterator[Statement]:
        yield SET_STATUS(event.order_id, SHIPPED, timestamp(event.occurred_at))

    @on(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> Iterator[Statement]:
        yield SET_STATUS(event.order_id, CANCELLED, timestamp(event.occurred_at))


def search_orders(
    read_models: ReadModelStore,
) -> Callable[[SearchOrders], Awaitable[OrderSummaryPage]]:
    """Return the handler of :class:`SearchOrders` (an empty ``q`` matches every order)."""

    async def handle(query: SearchOrders) -> OrderSummaryPage:
        filters: tuple[str | None, ...] = (
            None if query.status is None else query.status.value,
            None if query.customer_id is None else str(query.customer_id),
        )
        text: tuple[str, ...] = ()
        if query.q:
            matcher = fts5_query if read_models.dialect == "sqlite" else tsquery
            words = matcher(query.q)
            if words is None:
                return OrderSummaryPage(
                    items=[], total=0, page=query.page, page_size=query.page_size
                )
            text = (words,)
        match = bool(text)
        offset = (query.page - 1) * query.page_size
        page_sql = _PAGES[(match, query.sort_by, query.sort_order)]
        page_params = (*filters, *text, query.page_size, offset)
        count_params = (*filters, *text)
        rows = await read_models.fetch(page_sql, *page_params)
        counted = await read_models.fetchone(_COUNTS[match], *count_params)
        return OrderSummaryPage(
            items=[summary_view(row) for row in rows],
            total=int(counted["total"]) if counted else 0,
            page=query.page,
            page_size=query.page_size,
        )

    return handle
