"""What the ``/admin`` routers share: reaching the runtime and metrics of the app.

``cqrskit.http.app`` includes the admin router, so these modules cannot import its
dependencies back; they read ``app.state`` the same way.
"""

from __future__ import annotations

from fastapi import Request

from cqrskit.http.metrics import Metrics
from cqrskit.service import Runtime

__all__ = ["app_metrics", "app_runtime"]


def app_runtime(request: Request) -> Runtime:
    """The runtime the app's lifespan opened."""
    runtime = getattr(request.app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("the app's runtime is not open (was the lifespan run?)")
    return runtime


def app_metrics(request: Request) -> Metrics:
    """The app's :class:`~cqrskit.http.metrics.Metrics`."""
    metrics = getattr(request.app.state, "metrics", None)
    if not isinstance(metrics, Metrics):
        raise RuntimeError("the app was not built by create_app")
    return metrics
