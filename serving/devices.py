"""Which (customer, device) pairs this service has already allowed a payment from.

The "new device with a high amount → step_up" rule needs device history that no feature view
has. Rather than a database read on the hot path, each process keeps the pairs in memory: warmed
at start-up from the decision log (allowed payments of the last ``lookback_days``, at most
``max_pairs``), then extended with every payment it allows. A pair allowed by another replica
after this one started is unknown here, which errs on the safe side (one extra step-up). The
answer used is logged as ``signals.device_known``, so a replay never depends on this state.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from serving.decision_log import TABLE

log = logging.getLogger(__name__)

WARM_SQL = f"""
select distinct request->>'customer_id', request->>'device_id'
from {TABLE}
where product = 'fraud' and decision = 'allow' and request ? 'device_id'
  and request->>'device_id' is not null and decided_at > now() - make_interval(days => %s)
limit %s
"""


class KnownDevices:
    """A thread-safe, bounded set of (customer_id, device_id)."""

    def __init__(self, max_pairs: int = 1_000_000) -> None:
        self._pairs: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._max = max_pairs

    def warm(self, conn: psycopg.Connection, lookback_days: int) -> int:
        rows = conn.execute(WARM_SQL, (lookback_days, self._max)).fetchall()
        with self._lock:
            self._pairs.update((c, d) for c, d in rows)
        log.info("known devices warmed from the decision log: %d pairs", len(rows))
        return len(rows)

    def known(self, customer_id: str, device_id: str | None) -> bool | None:
        """None when the request names no device (the rule cannot apply)."""
        if device_id is None:
            return None
        return (customer_id, device_id) in self._pairs  # a set lookup is atomic under the GIL

    def add(self, customer_id: str, device_id: str | None) -> None:
        if device_id is None:
            return
        with self._lock:
            if len(self._pairs) >= self._max:
                self._pairs.clear()  # crude but bounded: forgetting only causes extra step-ups
            self._pairs.add((customer_id, device_id))
