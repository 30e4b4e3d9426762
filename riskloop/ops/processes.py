"""Background services of the embedded stack as detached process groups under ``<home>``: started
with their output in ``<home>/logs/<name>.log`` and their pid in ``<home>/run/<name>.pid``, waited
for, and stopped with their whole group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from riskloop.core.config import Settings


class StackError(RuntimeError):
    """A component of the stack failed to start or answer."""



def _pidfile(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    import psutil

    try:
        # A stopped child of this process stays a zombie until reaped: reap it, count it as gone.
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return None
    except psutil.NoSuchProcess:
        return None
    return pid


def spawn_detached(settings: Settings, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so ``stop_process`` can signal its whole process group,
    workers included) with output in <home>/logs/<name>.log and its pid in <home>/run/<name>.pid."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    logf = open(settings.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    logf.close()
    _pidfile(settings, name).write_text(str(proc.pid))
    return proc


def wait_until(settings: Settings, procs: dict[str, subprocess.Popen], ready: Callable[[], bool],
               wait_s: float) -> None:
    """Poll ``ready`` until it holds; raise with a log tail as soon as one of ``procs`` (name →
    process started by :func:`spawn_detached`) exits, or when time runs out."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                tail = (settings.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise StackError(f"{name} exited with {proc.returncode}:\n{tail}")
        if ready():
            return
        time.sleep(0.5)
    names = ", ".join(procs) or "the services"
    raise StackError(f"{names} not ready within {wait_s:.0f}s (logs in {settings.log_dir})")


def stop_process(settings: Settings, name: str, timeout: float = 20.0) -> bool:
    """SIGTERM the process group recorded in <home>/run/<name>.pid, then SIGKILL if needed."""
    path = _pidfile(settings, name)
    pid = _read_pid(path)
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _read_pid(path) is not None:
        time.sleep(0.2)
    if _read_pid(path) is not None:
        os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True
