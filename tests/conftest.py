"""Shared fixtures: one real embedded stack per test session, isolated from any dev stack.

The stack gets its own RISKLOOP_HOME and free ports, so a developer's running `riskloop up`
(or a second test run) never collides with it; it is stopped when the session ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """Start a real embedded Postgres + MLflow server for the session; yield its environment.

    The home is a plain temp directory, not pytest's: as root the server runs as an unprivileged
    user that must traverse it, and pytest resets its own base directory to mode 0700.
    """
    from riskloop import stack
    from riskloop.config import Settings

    home = Path(tempfile.mkdtemp(prefix="riskloop-test-"))
    home.chmod(0o755)
    env = {
        "RISKLOOP_HOME": str(home),
        "RISKLOOP_PG_PORT": str(free_port()),
        "RISKLOOP_MLFLOW_PORT": str(free_port()),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    settings = Settings()
    try:
        stack.up(settings)
        yield env
    finally:
        stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def settings(stack_env: dict[str, str]):
    from riskloop.config import Settings

    return Settings()


@pytest.fixture(scope="session")
def handbook_path() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fraud-handbook" / "transactions.parquet"
    if not path.exists():
        pytest.skip(f"handbook dataset not found at {path}")
    return path
