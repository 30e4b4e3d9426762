"""The one definition of riskloop's real-time windowed features (issue 3).

Per card and per customer: the number of accepted payments and the sum of their amounts (minor
units) over the last 10 minutes, 1 hour and 24 hours. Three consumers read this spec and nothing
else, so the window logic cannot drift between them:

- ``feature_repo/definitions.py`` builds one push source and one feature view per entity, with
  exactly :func:`feature_names` as fields;
- dbt (the batch path) gets :func:`dbt_var` as the ``realtime_windows`` var (``riskloop.transform.
  run_dbt`` always passes it, ``dbt_project.yml`` has no default, so dbt cannot run on a stale
  copy); the macro ``realtime_window_mart`` turns it into RANGE window frames;
- the stream consumer (``riskloop.stream``) renders :func:`stream_sql` from it.

Window semantics, shared by both paths: the value of a window ``w`` *as of* time ``t`` covers the
payments with ``t - w < occurred_at <= t`` (event time, not arrival time, so a late or
out-of-order event lands where it happened). Rows are published as of the entity's latest
payment: dbt writes one row per payment (its windows end at and include it, like the other
marts), the stream pushes the row of the entity's latest payment, hence the online value of an
entity always equals the batch row with the same ``event_timestamp``.

Amounts are summed in minor units (exact integers, so stream and batch agree to the unit); a
card or customer paying in several currencies sums their minor units together, as the
simulated processors do not mix currencies per card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

TIMESTAMP_FIELD = "event_timestamp"
EVENTS_TABLE = "realtime.payment_events"  # the stream's parsed, indexed projection of the inbox


@dataclass(frozen=True)
class Window:
    name: str  # suffix of the feature names: 10m, 1h, 24h
    seconds: int


@dataclass(frozen=True)
class WindowEntity:
    name: str  # the Feast entity
    key: str  # its join key, a column of the payment events


@dataclass(frozen=True)
class Aggregate:
    name: str  # middle of the feature names
    func: Literal["count", "sum"]
    column: str | None  # None: count(*)

    def sql(self) -> str:
        return f"{self.func}({self.column or '*'})"


ENTITIES: tuple[WindowEntity, ...] = (WindowEntity("card", "card_token"), WindowEntity("customer", "customer_id"))
WINDOWS: tuple[Window, ...] = (Window("10m", 600), Window("1h", 3600), Window("24h", 86400))
AGGREGATES: tuple[Aggregate, ...] = (Aggregate("tx_count", "count", None),
                                     Aggregate("amount_minor_sum", "sum", "amount_minor"))


def feature_name(entity: WindowEntity, agg: Aggregate, window: Window) -> str:
    return f"{entity.name}_{agg.name}_{window.name}"


def feature_names(entity: WindowEntity) -> list[str]:
    """The feature columns of ``entity``'s view, in a fixed order (aggregate-major)."""
    return [feature_name(entity, a, w) for a in AGGREGATES for w in WINDOWS]


def entity(name: str) -> WindowEntity:
    for e in ENTITIES:
        if e.name == name:
            return e
    raise KeyError(f"no real-time entity {name!r} (have {[e.name for e in ENTITIES]})")


def view_name(entity: WindowEntity) -> str:
    """Feast feature view fed by the stream: ``card_realtime``, ``customer_realtime``."""
    return f"{entity.name}_realtime"


def push_source_name(entity: WindowEntity) -> str:
    return f"{entity.name}_realtime_push"


def mart_name(entity: WindowEntity) -> str:
    """The dbt mart (schema ``marts``) computing the same windows in batch; the push source's batch source."""
    return f"{entity.name}_realtime_windows"


def dbt_var() -> dict[str, Any]:
    """The spec as the dbt var ``realtime_windows`` (plain JSON types)."""
    return {
        "entities": [{"name": e.name, "key": e.key} for e in ENTITIES],
        "windows": [{"name": w.name, "seconds": w.seconds} for w in WINDOWS],
        "aggregates": [{"name": a.name, "sql": a.sql()} for a in AGGREGATES],
    }


def stream_sql(entity: WindowEntity) -> str:
    """Windows of the given keys (``%(keys)s``, a text array) as of each key's latest payment.

    One indexed range scan per key over the last max-window of its events: the same numbers as
    dbt's RANGE frames at that row, computed with FILTER clauses instead of frames.
    """
    widest = max(w.seconds for w in WINDOWS)
    cols = ",\n  ".join(
        f"{a.sql()} filter (where e.occurred_at > k.asof - interval '{w.seconds} seconds')::bigint"
        f" as {feature_name(entity, a, w)}"
        for a in AGGREGATES for w in WINDOWS)
    return (
        f"with k as (\n"
        f"  select {entity.key} as key, max(occurred_at) as asof from {EVENTS_TABLE}\n"
        f"  where {entity.key} = any(%(keys)s::text[]) group by 1)\n"
        f"select k.key as {entity.key}, k.asof as {TIMESTAMP_FIELD},\n  {cols}\n"
        f"from k join {EVENTS_TABLE} e on e.{entity.key} = k.key\n"
        f"  and e.occurred_at > k.asof - interval '{widest} seconds' and e.occurred_at <= k.asof\n"
        f"group by k.key, k.asof"
    )
