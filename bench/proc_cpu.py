"""CPU seconds a server process tree used: the figure that survives a busy shared machine.

Wall-clock rates on the shared 2-core box move with the neighbours' jobs (load average 3–16);
the CPU a server spends per request does not, so the load benchmarks report both.
"""

from __future__ import annotations

import psutil


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children (e.g. uvicorn's workers)."""
    total = 0.0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total
