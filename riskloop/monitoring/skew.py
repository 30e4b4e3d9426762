"""Training-serving skew, measured on logged decisions.

Each fraud decision logs the online value of every stored feature it read and the event time of
the row it came from (``features`` and ``feature_timestamps``, per view). Training reads the same
features point-in-time from the views' offline sources, as of one microsecond before the payment
(``riskloop.features.datasets.fraud_dataset``). For every logged decision this module asks the
offline sources what training would see for that payment and compares, feature by feature.

The offline read is Feast's point-in-time rule written out in SQL (the latest row of the entity
at or before the entity time, no older than the view's TTL) over the sources Feast's registry
names, rather than ``get_historical_features``, because the comparison needs each row's event
time and Feast's join does not return it.

Outcomes per (decision, view):

- ``match``: the same row (same event time, to the second: Feast keeps whole seconds online) and
  equal values.
- a **mismatch**, listed with both sides: the same row with other values, or an offline row newer
  than the online one that riskloop already had when it decided (the online store was behind:
  a stream lag or a view nobody refreshed).
- documented, counted but not mismatches:
  ``late_event``: the offline row is newer because of a payment received *after* the decision
  (a late or out-of-order event; the decision could not have known it);
  ``online_ahead``: the online row is newer than the payment's own time (the request was for a
  payment in the past: a replay or a backfill's scoring);
  ``batch_pending``: the online row is newer than anything in the offline source at that time
  (the marts were not rebuilt since; the next build brings it).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.core.subject_keys import reveal
from riskloop.decisions.log import TABLE
from riskloop.features.store import FRAUD_SERVICE

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

DOCUMENTED = ("late_event", "online_ahead", "batch_pending")
RELATIVE_TOLERANCE = 1e-9  # float features travel through JSON and Feast's protobufs


@dataclass(frozen=True)
class OfflineView:
    """A stored view of the service as the offline store reads it."""

    name: str
    table: str  # schema-qualified
    timestamp_field: str
    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    ttl: timedelta | None


@dataclass
class SkewReport:
    decisions: int = 0
    compared: int = 0  # (decision, feature) pairs compared
    matched: int = 0
    documented: Counter = field(default_factory=Counter)  # kind -> (decision, feature) pairs
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "compared": self.compared, "matched": self.matched,
                "documented": {k: self.documented.get(k, 0) for k in DOCUMENTED},
                "mismatches": self.mismatches}


def offline_views(store: "FeatureStore", service: str = FRAUD_SERVICE) -> list[OfflineView]:
    """The service's stored views with their offline source (on-demand views are computed from these)."""
    on_demand = {v.name for v in store.list_on_demand_feature_views()}
    out = []
    for proj in store.get_feature_service(service).feature_view_projections:
        if proj.name in on_demand:
            continue
        view = store.get_feature_view(proj.name)
        source = view.batch_source
        out.append(OfflineView(name=proj.name_to_use(), table=source.get_table_query_string(),
                               timestamp_field=source.timestamp_field,
                               join_keys=tuple(view.join_keys), features=tuple(f.name for f in proj.features),
                               ttl=view.ttl or None))
    return out


def _decisions(conn: psycopg.Connection, limit: int, since: datetime | None,
               settings: Settings | None = None) -> list[dict[str, Any]]:
    where = ["product = 'fraud'", "feature_timestamps is not null", "feature_timestamps <> '{}'::jsonb"]
    params: dict[str, Any] = {"limit": limit}
    if since is not None:
        where.append("decided_at >= %(since)s")
        params["since"] = since
    cur = conn.execute(
        f"select decision_id::text, decided_at, request, features, feature_timestamps from {TABLE} "
        f"where {' and '.join(where)} order by decided_at desc limit %(limit)s", params)
    cols = [c.name for c in cur.description or ()]
    rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    for row, request in zip(rows, reveal(conn, [r["request"] for r in rows], settings), strict=True):
        row["request"] = request
    # An erased customer's decisions have no key left to look their offline values up by.
    return [r for r in rows if (r["request"] or {}).get("personal_data") != "erased"]


def _offline_rows(conn: psycopg.Connection, view: OfflineView, keys: list[tuple[str, ...]],
                  times: list[datetime]) -> list[dict[str, Any] | None]:
    """Per (key, time): the view's offline row as of that time (Feast's point-in-time rule), or None."""
    ts = sql.Identifier(view.timestamp_field)
    key_cols = [f"k{i}" for i in range(len(view.join_keys))]
    unnest = sql.SQL(", ").join(sql.SQL("%({})s::text[]").format(sql.SQL(c)) for c in key_cols)
    key_match = sql.SQL(" and ").join(sql.SQL("f.{}::text = e.{}").format(sql.Identifier(k), sql.Identifier(c))
                                      for k, c in zip(view.join_keys, key_cols, strict=True))
    ttl = sql.SQL(" and f.{} > e.t - {}::interval").format(ts, sql.Literal(view.ttl)) if view.ttl else sql.SQL("")
    query = sql.SQL(
        "select e.i, f.{ts}, {cols} from unnest(%(i)s::int[], %(t)s::timestamptz[], {unnest}) as e(i, t, {names}) "
        "left join lateral (select * from {table} f where {keys} and f.{ts} <= e.t{ttl} "
        "order by f.{ts} desc limit 1) f on true").format(
        ts=ts, cols=sql.SQL(", ").join(sql.SQL("f.{}").format(sql.Identifier(c)) for c in view.features),
        unnest=unnest, names=sql.SQL(", ").join(sql.Identifier(c) for c in key_cols),
        table=sql.SQL(view.table), keys=key_match, ttl=ttl)
    params: dict[str, Any] = {"i": list(range(len(keys))), "t": times}
    params.update({c: [k[j] for k in keys] for j, c in enumerate(key_cols)})
    out: list[dict[str, Any] | None] = [None] * len(keys)
    for row in conn.execute(query, params).fetchall():
        if row[1] is not None:
            out[row[0]] = {"event_time": row[1], **dict(zip(view.features, row[2:], strict=True))}
    return out


def _received_after(conn: psycopg.Connection, view: OfflineView, key: tuple[str, ...], after: datetime | None,
                    upto: datetime, decided_at: datetime) -> bool:
    """Did the entity have a payment in (after, upto] that riskloop received only after ``decided_at``?
    (``after`` None: any time up to ``upto``.)"""
    if len(view.join_keys) != 1 or view.join_keys[0] not in ("card_token", "customer_id", "terminal_id"):
        return False
    row = conn.execute(
        sql.SQL("select exists (select 1 from marts.fct_transactions where {} = %s and tx_at > %s and tx_at <= %s "
                "and received_at > %s)").format(sql.Identifier(view.join_keys[0])),
        (key[0], after or datetime.min.replace(tzinfo=upto.tzinfo), upto, decided_at)).fetchone()
    return bool(row and row[0])


def _equal(online: Any, offline: Any) -> bool:
    if online is None or offline is None:
        return online is None and offline is None
    a, b = float(online), float(offline)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=RELATIVE_TOLERANCE)


def _second(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(microsecond=0)


def measure(settings: Settings, *, limit: int = 1000, since: datetime | None = None,
            store: "FeatureStore | None" = None) -> SkewReport:
    """Compare the online values of the latest ``limit`` logged fraud decisions (since ``since``)
    with the offline point-in-time values training would read for the same payments."""
    if store is None:
        from riskloop.features.store import feature_store

        store = feature_store(settings)
    views = offline_views(store)
    report = SkewReport()
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        if conn.execute("select to_regclass(%s)", (TABLE,)).fetchone()[0] is None:
            return report
        decisions = _decisions(conn, limit, since, settings)
        report.decisions = len(decisions)
        times = [datetime.fromisoformat(d["request"]["timestamp"]) - timedelta(microseconds=1) for d in decisions]
        for view in views:
            logged = [(d, view.name in d["feature_timestamps"]) for d in decisions]
            chosen = [(d, t) for (d, has), t in zip(logged, times, strict=True)
                      if has and any(f in d["features"] for f in view.features)]
            if not chosen:
                continue
            keys = [tuple(str(d["request"].get(k)) for k in view.join_keys) for d, _ in chosen]
            rows = _offline_rows(conn, view, keys, [t for _, t in chosen])
            for (d, t), key, off in zip(chosen, keys, rows, strict=True):
                stamp = d["feature_timestamps"].get(view.name)
                online_ts = datetime.fromisoformat(stamp) if stamp else None
                offline_ts = off["event_time"] if off else None
                names = [f for f in view.features if f in d["features"]]
                report.compared += len(names)
                kind = None
                if _second(online_ts) == _second(offline_ts):
                    bad = [f for f in names if not _equal(d["features"][f], off[f] if off else None)]
                    report.matched += len(names) - len(bad)
                    for f in bad:
                        report.mismatches.append(_mismatch(d, view, key, f, online_ts, offline_ts, off, "value"))
                    continue
                if online_ts is not None and (offline_ts is None or online_ts > offline_ts):
                    kind = "online_ahead" if online_ts > t else "batch_pending"
                elif offline_ts is not None and _received_after(conn, view, key, online_ts, offline_ts, d["decided_at"]):
                    kind = "late_event"
                if kind is not None:
                    report.documented[kind] += len(names)
                    continue
                for f in names:
                    report.mismatches.append(_mismatch(d, view, key, f, online_ts, offline_ts, off, "online_behind"))
    if report.mismatches:
        log.warning("training-serving skew: %d of %d compared feature values differ", len(report.mismatches),
                    report.compared)
    return report


def _mismatch(d: dict[str, Any], view: OfflineView, key: tuple[str, ...], feature: str, online_ts: datetime | None,
              offline_ts: datetime | None, off: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return {"decision_id": d["decision_id"], "view": view.name, "feature": feature, "kind": kind,
            "entity": dict(zip(view.join_keys, key, strict=True)),
            "online": {"value": d["features"].get(feature), "event_time": online_ts.isoformat() if online_ts else None},
            "offline": {"value": off.get(feature) if off else None,
                        "event_time": offline_ts.isoformat() if offline_ts else None}}
