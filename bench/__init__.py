"""cqrskit benchmarks: our code next to raw drivers and the ``eventsourcing`` library.

Run ``python -m bench --quick`` (about 4 minutes) or ``python -m bench --full`` (under 20).
Every scenario runs our code and its references in the same process, interleaved, several
repetitions; the report gives medians with min and max and the ratio ours / reference. See
``docs/benchmarks.md`` for the scenarios, the JSON shape and the latest full table.
"""

__all__: list[str] = []
