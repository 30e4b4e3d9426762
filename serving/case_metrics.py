"""The case queue on ``/metrics``: gauges read from Postgres at scrape time (at most every
``TTL_S``), so every worker and replica reports the one queue (:mod:`riskloop.decisions.case_stats`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.decisions import case_stats

log = logging.getLogger(__name__)

TTL_S = 15.0


class CaseCollector:
    """A prometheus_client custom collector over :func:`riskloop.decisions.case_stats.stats`."""

    def __init__(self, settings: Settings, ttl_s: float = TTL_S) -> None:
        self._settings, self._ttl_s = settings, ttl_s
        self._lock = threading.Lock()
        self._at, self._figures = 0.0, None

    def figures(self) -> dict[str, Any] | None:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl_s:
                try:
                    with psycopg.connect(dsn(self._settings), connect_timeout=3, autocommit=True) as conn:
                        self._figures = case_stats.stats(conn, self._settings)
                except psycopg.Error as exc:  # a scrape never fails for it: the case gauges are left out
                    log.warning("case metrics unavailable: %s", exc)
                    self._figures = None
                self._at = time.monotonic()
            return self._figures

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        f = self.figures()
        if f is None:
            return
        depth = GaugeMetricFamily("riskloop_cases_queue_depth", "Unclosed cases, by priority and status.",
                                  labels=["priority", "status"])
        for q in f["queue"]:
            depth.add_metric([q["priority"], q["status"]], q["cases"])
        yield depth
        yield GaugeMetricFamily("riskloop_cases_overdue", "Unclosed cases past their due time (SLA).", value=f["overdue"])
        yield GaugeMetricFamily("riskloop_cases_oldest_open_age_seconds", "Age of the oldest unclosed case.",
                                value=f["oldest_open_age_s"] or 0.0)
        ttd = GaugeMetricFamily("riskloop_cases_time_to_disposition_seconds",
                                "Opened to closed, over the cases closed in the stats window.", labels=["quantile"])
        for q, key in (("0.5", "time_to_disposition_p50_s"), ("0.9", "time_to_disposition_p90_s")):
            if f[key] is not None:
                ttd.add_metric([q], f[key])
        yield ttd
        closed = GaugeMetricFamily("riskloop_cases_closed", "Cases closed in the stats window, by disposition.",
                                   labels=["disposition"])
        for disposition, n in f["dispositions"].items():
            closed.add_metric([disposition], n)
        yield closed
        for name, key, text in (
                ("riskloop_cases_review_precision", "review_precision",
                 "Share of judged review decisions confirmed as fraud (the review rule's precision)."),
                ("riskloop_cases_model_agreement", "model_agreement",
                 "Share of judged cases where the analyst's verdict agrees with the model's score.")):
            if f[key] is not None:
                yield GaugeMetricFamily(name, text, value=f[key])
