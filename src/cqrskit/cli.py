"""The ``cqrskit`` command line: serve, worker, migrate, projections, events, deadletters.

Every command takes ``--database-url`` (``CQRSKIT_DATABASE_URL``, default
``sqlite:///data/orders.db``) and ``--service`` (``CQRSKIT_SERVICE``, default
``orders.service:service``). Failures print one red line and exit non-zero: 2 for bad input
on the command line, 1 otherwise.
"""

from __future__ import annotations

import typer

from cqrskit._cli import deadletters as _deadletters
from cqrskit._cli import events as _events
from cqrskit._cli import projections as _projections
from cqrskit._cli import serving as _serving

__all__ = ["app", "main"]

app = typer.Typer(
    name="cqrskit",
    help="Run and operate a cqrskit service (the orders service by default).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(_serving.serve)
app.command()(_serving.worker)
app.command()(_serving.migrate)
app.command("demo-data")(_serving.demo_data)
app.add_typer(_projections.app, name="projections")
app.add_typer(_events.app, name="events")
app.add_typer(_deadletters.app, name="deadletters")


def main() -> None:
    """Run the command line (the ``cqrskit`` console script)."""
    app()


if __name__ == "__main__":
    main()
