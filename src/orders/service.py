"""Composition root of the orders service: what cqrskit's runtime, CLI and HTTP app run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cqrskit.command_bus import CommandBus
from cqrskit.query_bus import QueryBus
from cqrskit.read_models.protocol import ReadModelStore
from cqrskit.service import Service
from orders.demo import load_demo_data
from orders.handlers import register_command_handlers
from orders.read_models import projections, register_query_handlers

__all__ = ["service"]


def _register(commands: CommandBus, queries: QueryBus, read_models: ReadModelStore) -> None:
    register_command_handlers(commands)
    register_query_handlers(queries, read_models)


def _routers() -> Sequence[Any]:
    from orders.api import router

    return [router]


service = Service(
    title="orders",
    projections=projections,
    register=_register,
    routers=_routers,
    demo_data=load_demo_data,
)
