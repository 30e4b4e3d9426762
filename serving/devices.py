"""Which (customer, device) pairs the service has already allowed a payment from.

The "new device with a high amount → step_up" rule needs device history that no feature view
has. The hot path only does a set lookup in memory: each process warms the set at start-up from
``serving.known_devices`` (pairs first allowed in the last ``lookback_days``, at most ``max_pairs``), adds
every payment it allows itself, and :meth:`KnownDevices.refresh` (the serving poller, every
``known_device_poll_s``) adds the pairs *every* process allowed since: the decision-log writer
inserts them into ``serving.known_devices`` in the transaction of their log rows. So with several
workers or replicas a device allowed by one is known to all within about a poll interval plus the
writer's linger; inside that window a payment looks new, which errs on the safe side (one extra
step-up). The answer used is logged as ``signals.device_known``, so a replay never depends on
this state.

Why a poll and not a read per request: the pairs live in the warehouse database, the online
features in Feast's, so they cannot share the online read's round trip; a second round trip per
request would cost more CPU than the whole rest of the decision's database work.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

import psycopg

from riskloop.decisions.log import DEVICES_TABLE

log = logging.getLogger(__name__)

# From the log's own cache of the pairs, not the log: the log's device and customer are sealed
# (riskloop.core.subject_keys), and an erased customer's pairs leave this table with the erasure.
WARM_SQL = f"""
select customer_id, device_id from {DEVICES_TABLE}
where first_allowed_at > now() - make_interval(days => %s)
order by first_allowed_at desc limit %s
"""
REFRESH_SQL = f"""
select customer_id, device_id, first_allowed_at from {DEVICES_TABLE} where first_allowed_at > %s
"""
# A pair is stamped at insert, its transaction commits a moment later: each refresh re-reads this
# much before the newest stamp it has seen, so a late commit is never skipped (re-adding is free).
REFRESH_OVERLAP = timedelta(seconds=5)


class KnownDevices:
    """A thread-safe, bounded set of (customer_id, device_id)."""

    def __init__(self, max_pairs: int = 1_000_000) -> None:
        self._pairs: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._max = max_pairs
        self._seen_until: datetime | None = None  # newest first_allowed_at read (server clock)

    def warm(self, conn: psycopg.Connection, lookback_days: int) -> int:
        """Load the history from :data:`DEVICES_TABLE`; later pairs come from :meth:`refresh`."""
        self._seen_until = conn.execute("select clock_timestamp()").fetchone()[0]
        rows = conn.execute(WARM_SQL, (lookback_days, self._max)).fetchall()
        self._update(rows)
        log.info("known devices warmed from %s: %d pairs", DEVICES_TABLE, len(rows))
        return len(rows)

    def refresh(self, conn: psycopg.Connection) -> int:
        """Add the pairs any process allowed since the last refresh; returns how many rows were read."""
        if self._seen_until is None:
            self._seen_until = conn.execute("select clock_timestamp()").fetchone()[0] - REFRESH_OVERLAP
        rows = conn.execute(REFRESH_SQL, (self._seen_until - REFRESH_OVERLAP,)).fetchall()
        if rows:
            self._update((c, d) for c, d, _ in rows)
            self._seen_until = max(self._seen_until, max(at for _, _, at in rows))
        return len(rows)

    def _update(self, pairs: object) -> None:
        with self._lock:
            if len(self._pairs) >= self._max:
                self._pairs.clear()  # crude but bounded: forgetting only causes extra step-ups
            self._pairs.update(pairs)  # type: ignore[arg-type]

    def known(self, customer_id: str, device_id: str | None) -> bool | None:
        """None when the request names no device (the rule cannot apply)."""
        if device_id is None:
            return None
        return (customer_id, device_id) in self._pairs  # a set lookup is atomic under the GIL

    def add(self, customer_id: str, device_id: str | None) -> None:
        """This process allowed a payment from the pair: known here at once (others: next refresh)."""
        if device_id is None:
            return
        self._update(((customer_id, device_id),))
