"""Keeps this process's policies in step with the policy store (riskloop.decisions.policy_store).

A thread holds one connection that LISTENs on ``riskloop_policy``: each insert in the store
notifies it, it reads only the new events (:meth:`StoreState.refresh`), binds a new immutable
:class:`Policy` per product and stores it on ``app.state`` with one attribute store. A decision
reads ``st.fraud_policy`` once and keeps that object, so a swap never fails or mixes a request,
and the scoring path makes no database call for policy. A lost notification (reconnect) is
caught by the wait's timeout (``policy_poll_s``), and an expiry by the same wait: whatever
happens, a change is applied within about a second. Why a thread and not the async poller: the
poller waits ``model_poll_s`` between rounds and runs slower work (model loads), and a LISTEN
wait must answer at once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from riskloop.core.db import dsn
from riskloop.decisions.policy import Policy
from riskloop.decisions.policy_store import CHANNEL, StoreState

log = logging.getLogger(__name__)


def apply(st: Any, conn: psycopg.Connection) -> None:
    """Bind and swap both products' policies from ``st.policy_state`` (logged when a version changes)."""
    state: StoreState = st.policy_state
    for product in ("fraud", "credit"):
        attr = f"{product}_policy"
        old: Policy = getattr(st, attr)
        new = state.bind(conn, product, getattr(st, f"{product}_file_policy"))
        setattr(st, attr, new)
        if (old.id, old.digest) != (new.id, new.digest):
            log.warning("%s policy now %s (was %s), store change %s", product, new.id, old.id, new.seq)
        if new.rules_only and not old.rules_only:
            log.warning("EMERGENCY: %s decisions are rules-only from now on (store change %s)", product, new.seq)
    st.policy_error = None


def refresh_once(st: Any, conn: psycopg.Connection) -> bool:
    """Apply what changed since the last refresh; True when something did."""
    if conn.execute("select to_regclass('policy.version_events')").fetchone()[0] is None:
        return False  # warehouse not migrated yet: the configured files decide (/readyz says why)
    changed = st.policy_state.refresh(conn)
    if changed or st.fraud_policy.seq is None:
        apply(st, conn)
    return changed


class PolicyWatcher:
    """The thread described in the module docstring; :meth:`close` ends it."""

    def __init__(self, st: Any, poll_s: float) -> None:
        self.st, self.poll_s = st, max(poll_s, 0.05)
        self._stop = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="policy-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(dsn(self.st.settings), connect_timeout=3, autocommit=True)
        conn.execute(f"listen {CHANNEL}")
        return conn

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()  # listening before the read: nothing falls in between
                refresh_once(self.st, self._conn)
                for _ in self._conn.notifies(timeout=self.poll_s, stop_after=1):
                    pass
            except Exception as exc:  # noqa: BLE001 - keep the last policy, retry; never die
                self.st.policy_error = str(exc)
                log.error("policy store unreadable, deciding with %s as of change %s: %s",
                          self.st.fraud_policy.id, self.st.fraud_policy.seq, exc)
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_s + 5)
        if self._conn is not None:
            self._conn.close()
