"""Shared fixtures: one real embedded stack per test session, isolated from any dev stack.

The stack gets its own RISKLOOP_HOME and free ports, so a developer's running `riskloop up`
(or a second test run) never collides with it; it is stopped when the session ends.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def start_moto(port: int, log_path: Path) -> subprocess.Popen:
    """A real S3-compatible HTTP server (moto's server mode) on loopback; the caller terminates it."""
    import httpx

    exe = Path(sys.executable).with_name("moto_server")
    logf = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=logf,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    logf.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not answer within 60s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a child the test started, SIGKILL it if it does not exit in time; reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# The longest modules, longest first. `make test` runs two xdist workers, a file at a time each
# (--dist loadfile, in collection order): started first, these overlap each other and the rest,
# instead of one of them starting last while the other worker has nothing left to do.
LONGEST_MODULES = ("test_end_to_end.py", "test_scheduler.py", "test_drift_promotion_e2e.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collect the longest modules first (a stable sort: the order inside a module is kept)."""
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing listens on, for a server a test is about to start.

    Not the kernel's ``bind(0)`` choice: that comes from the ephemeral range, which every outgoing
    connection draws its source port from too, and one did take an MLflow server's port between the
    choice and the server's bind (CI, "Address already in use"). These come from just below that
    range, where no outgoing connection lands; each xdist worker draws from its own slice, so two
    workers never pick the same one; and the port is checked free before it is handed out.
    """
    high = _ephemeral_low()
    low = max(1024, high - 12_000)
    if high - low < 1000:  # an unusual ephemeral range: the kernel's choice after all
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    span = (high - low) // workers
    start = low + worker * span
    for _ in range(500):
        port = start + random.randrange(span)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port in {start}-{start + span}")


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """Start a real embedded Postgres + MLflow server for the session; yield its environment.

    The home is a plain temp directory, not pytest's: as root the server runs as an unprivileged
    user that must traverse it, and pytest resets its own base directory to mode 0700.
    """
    from riskloop.core.config import Settings
    from riskloop.ops import stack

    home = Path(tempfile.mkdtemp(prefix="riskloop-test-"))
    home.chmod(0o755)
    env = {
        "RISKLOOP_HOME": str(home),
        "RISKLOOP_PG_PORT": str(free_port()),
        "RISKLOOP_MLFLOW_PORT": str(free_port()),
        # No managed stream consumer on the session stack: the tests that need one run their own
        # (test_realtime: in a thread, or the managed process on their own warehouse), and a
        # consumer named "default" on the shared warehouse would hold the name they use.
        "RISKLOOP_STREAM_SERVICE": "false",
        # Nor a tripwire watcher: it would judge every test's decisions each minute and move the alert
        # state the alert tests assert on (test_watch runs its own on its own warehouse).
        "RISKLOOP_WATCH_SERVICE": "false",
        # The session's warehouses are reached by URL too (isolated_settings), outside local mode:
        # one master key for the customers' data keys of all of them (riskloop.core.subject_keys).
        "RISKLOOP_SUBJECT_MASTER_KEY": secrets.token_hex(32),
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
    from riskloop.core.config import Settings

    return Settings()


@pytest.fixture(scope="session")
def handbook_path() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fraud-handbook" / "transactions.parquet"
    if not path.exists():
        pytest.skip(f"handbook dataset not found at {path}")
    return path
