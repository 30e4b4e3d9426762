"""The tripwire watcher (``riskloop watch``, :mod:`riskloop.monitoring.watch`) as a managed process of
the stack: started by ``riskloop up`` unless ``RISKLOOP_WATCH_SERVICE=false``, stopped by ``riskloop down``,
output in ``<home>/logs/watch.log``."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from riskloop.core.config import Settings
from riskloop.ops.processes import _pidfile, _read_pid, spawn_detached, stop_process, wait_until

log = logging.getLogger(__name__)

NAME = "watch"
_STARTED = "tripwire watcher: every"  # its first log line: the settings are read, the loop begins


def running(settings: Settings) -> bool:
    return _read_pid(_pidfile(settings, NAME)) is not None


def start(settings: Settings, wait_s: float = 120.0) -> None:
    """Start ``riskloop watch`` detached with these settings (as ``RISKLOOP_*`` variables), unless it runs."""
    if running(settings):
        return
    logfile = settings.log_dir / f"{NAME}.log"
    offset = logfile.stat().st_size if logfile.exists() else 0
    log.info("starting the tripwire watcher (riskloop watch, log in %s)", logfile)
    # It logs in as the governance role (riskloop.core.roles): it reads decisions and writes alert state only.
    proc = spawn_detached(settings, NAME, [sys.executable, "-m", "riskloop", "watch"],
                          {**os.environ, **settings.as_role("governance").environ()})

    def started() -> bool:
        with open(logfile, "rb") as f:
            f.seek(offset)
            return _STARTED.encode() in f.read()

    wait_until(settings, {NAME: proc}, started, wait_s)


def stop(settings: Settings) -> bool:
    return stop_process(settings, NAME, timeout=30.0)


def status(settings: Settings) -> dict[str, Any]:
    return {"watch": "up" if running(settings) else "down", "watch_managed": settings.watch_service}
