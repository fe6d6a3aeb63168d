"""FastAPI integration: the app factory, problem+json errors, health, metrics, body limits.

Routers of a service use :data:`RuntimeDep` to reach the runtime (buses, backend),
:data:`Commands` to send commands and :data:`Queries` to answer queries (waiting for a
consistency token when the request has one); HTTP status codes live only in this package.
"""

from cqrskit.http.app import (
    CONSISTENCY_HEADER,
    Commands,
    CommandSender,
    RuntimeDep,
    create_app,
    get_commands,
    get_runtime,
)
from cqrskit.http.consistency import (
    CONSISTENCY_STATE_HEADER,
    CONSISTENCY_TIMEOUT_HEADER,
    Queries,
    QueryAnswerer,
    get_queries,
)
from cqrskit.http.problems import PROBLEM_JSON, problem, status_for

__all__ = [
    "CONSISTENCY_HEADER",
    "CONSISTENCY_STATE_HEADER",
    "CONSISTENCY_TIMEOUT_HEADER",
    "PROBLEM_JSON",
    "CommandSender",
    "Commands",
    "Queries",
    "QueryAnswerer",
    "RuntimeDep",
    "create_app",
    "get_commands",
    "get_queries",
    "get_runtime",
    "problem",
    "status_for",
]


def __dir__() -> list[str]:
    return list(__all__)
