"""The orders service's read models: five projections and the query handlers reading them.

Each projection owns its tables (all prefixed by its name) and its lookup tables, so each can
be rebuilt on its own:

- ``order_detail``: orders with lines, customer name and email, address (``GetOrderById``);
- ``customer_orders``: order summaries per customer, newest first (``GetOrdersByCustomer``);
- ``order_search``: full-text search with filters and sorting (``SearchOrders``);
- ``order_statistics``: totals, averages and top products in SQL (``GetOrderStatistics``);
- ``customer_summary``: per-customer order figures (``GetCustomerSummary``).
"""

from __future__ import annotations

from cqrskit.projections.projection import Projection
from cqrskit.query_bus import Cached, QueryBus
from cqrskit.read_models.protocol import ReadModelStore
from orders.queries import (
    GetCustomerSummary,
    GetOrderById,
    GetOrdersByCustomer,
    GetOrderStatistics,
    OrderView,
    SearchOrders,
)
from orders.read_models.customer_orders import CustomerOrdersProjection, orders_by_customer
from orders.read_models.customer_summary import CustomerSummaryProjection, summary_of_customer
from orders.read_models.order_detail import OrderDetailProjection, order_by_id
from orders.read_models.order_search import OrderSearchProjection, search_orders
from orders.read_models.order_statistics import OrderStatisticsProjection, statistics_of_orders

__all__ = ["projections", "register_query_handlers"]


def projections() -> list[Projection]:
    """Return fresh instances of every orders projection."""
    return [
        OrderDetailProjection(),
        CustomerOrdersProjection(),
        OrderSearchProjection(),
        OrderStatisticsProjection(),
        CustomerSummaryProjection(),
    ]


def register_query_handlers(query_bus: QueryBus, read_models: ReadModelStore) -> None:
    """Register the handler of every orders query on ``query_bus``, with what it reads.

    ``GetOrderById`` is cacheable: ``order_detail`` tags each order's changes
    ``order:<id>`` (:meth:`OrderDetailProjection.cache_tags`).
    """
    query_bus.register(
        GetOrderById,
        order_by_id(read_models),
        reads=("order_detail",),
        cache=Cached(OrderView, tags=lambda query: (f"order:{query.order_id}",)),
    )
    query_bus.register(
        GetOrdersByCustomer, orders_by_customer(read_models), reads=("customer_orders",)
    )
    query_bus.register(SearchOrders, search_orders(read_models), reads=("order_search",))
    query_bus.register(
        GetOrderStatistics, statistics_of_orders(read_models), reads=("order_statistics",)
    )
    query_bus.register(
        GetCustomerSummary, summary_of_customer(read_models), reads=("customer_summary",)
    )


def __dir__() -> list[str]:
    return list(__all__)
