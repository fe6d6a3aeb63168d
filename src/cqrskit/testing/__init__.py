"""Testing helpers for cqrskit users: given/when/then for aggregates, and backend contracts.

:mod:`cqrskit.testing.given` needs nothing but cqrskit; :mod:`cqrskit.testing.contracts`
needs pytest and pytest-asyncio and is imported explicitly by a backend's test module.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("pytest") is not None:
    import pytest

    # Plain asserts in the shipped suites get pytest's detailed failure messages too.
    pytest.register_assert_rewrite("cqrskit.testing.contracts")
    del pytest

from cqrskit.testing.given import CommandHarness, Outcome, Scenario, assert_events, given

__all__ = ["CommandHarness", "Outcome", "Scenario", "assert_events", "given"]


def __dir__() -> list[str]:
    return list(__all__)
