"""Fixtures shared by the fault tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.pgcluster import PgCluster


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A private throwaway PostgreSQL cluster (crashing it never touches the shared server)."""
    with PgCluster.create() as cluster:
        yield cluster
