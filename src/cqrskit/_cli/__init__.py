"""The pieces of ``cqrskit``'s command line; :mod:`cqrskit.cli` assembles them."""

__all__: list[str] = []
