"""How many workers `riskloop serve` starts by default."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from serving.config import ServingSettings


@contextmanager
def cores(n: int) -> Iterator[None]:
    """This process limited to ``n`` cores (as a container's cpuset would), restored after."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:n])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to limit")
def test_default_workers_leave_a_core_to_a_postgres_on_the_same_machine() -> None:
    cfg = ServingSettings(workers=0)
    with cores(2):
        assert cfg.worker_count() == 2  # the database elsewhere: one per core
        assert cfg.worker_count(database_here=True) == 1  # the embedded stack: its Postgres keeps a core
    with cores(1):
        assert cfg.worker_count(database_here=True) == 1  # never none
    assert ServingSettings(workers=3).worker_count(database_here=True) == 3  # asked for: as asked
