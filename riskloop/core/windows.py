"""The one definition of riskloop's real-time windowed features.

Per card and per customer: the number of accepted payments and the sum of their amounts (minor
units) over the last 10 minutes, 1 hour and 24 hours. Three consumers read this spec and nothing
else, so the window logic cannot drift between them:

- ``feature_repo/definitions.py`` builds one push source and one feature view per entity, with
  exactly :func:`feature_names` as fields;
- dbt (the batch path) gets :func:`dbt_var` as the ``realtime_windows`` var (``riskloop.data.transform.
  run_dbt`` always passes it, ``dbt_project.yml`` has no default, so dbt cannot run on a stale
  copy); the macro ``realtime_window_mart`` turns it into RANGE window frames;
- the stream consumer (``riskloop.features.stream``) renders :func:`stream_sql` from it.

Window semantics, shared by both paths: the value of a window ``w`` *as of* time ``t`` covers the
payments with ``t - w < occurred_at <= t`` (event time, not arrival time, so a late or
out-of-order event lands where it happened). Rows are published as of the entity's latest
payment: dbt writes one row per payment (its windows end at and include it, like the other
marts), the stream pushes the row of the entity's latest payment, hence the online value of an
entity always equals the batch row with the same ``event_timestamp``.

Which payments: dbt computes the windows over the payment fact (``int_payments``: every payment,
received live or only in a processor's file, once however often it came, with the values of its
first receipt), so every training row has its windows as of its own time. The stream sees only the
live webhooks (``raw.webhook_inbox``). For an entity whose payments all came live, both paths give
the same values (the equality above). A payment known only from a file is in the batch windows but
was never counted by the stream: it is not pushed, and a live payment after it is pushed with windows
that miss it, while the mart's row at that time counts it. Such a payment reaches the online store
through the materialisation of the views from the marts (``riskloop.features.store.materialize``),
whose online tables keep the newest row whoever writes (``guard_newer_wins``), so an older batch row
never overwrites a newer pushed one; ``riskloop features skew`` reports what differs. A live
payment that also arrives in a file counts once on both paths (the fact merges copies on the
processor's event id) with the live values, unless the file came first: then the mart has the
file's (its time to the microsecond, where a Stripe body carries whole seconds).

Money never mixes currencies: the sums are defined on one currency, :data:`SUM_CURRENCY`, in its
minor units (exact integers, so stream and batch agree to the unit). A payment in another
currency counts in ``tx_count`` (a velocity count is currency-free) but adds nothing to
``amount_minor_sum``: adding 100 JPY minor units (100 yen) to 100 EUR minor units (1 euro) is
meaningless, and converting would make the feature depend on an FX rate feed riskloop does not
have. The currency is part of the feature's definition, like the window lengths, not a deployment
setting: changing it changes every value (and the models trained on them). Both paths read the
payment's currency the same way (a three-letter string, upper-cased: Stripe sends ``eur``); a
payment without a valid one counts but sums in no currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

TIMESTAMP_FIELD = "event_timestamp"
EVENTS_TABLE = "realtime.payment_events"  # the stream's parsed, indexed projection of the inbox
# The one currency the amount sums are defined on (ISO 4217; see the module docstring).
SUM_CURRENCY = "EUR"


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
    where: str | None = None  # the payments it covers (SQL over the events' columns); None: all

    def sql(self, condition: str | None = None) -> str:
        """The aggregate call with its FILTER clause (``condition``: a further one, the stream's
        window bound); a window ``over w`` goes after it. Null when no payment qualified: both
        paths wrap it in ``coalesce(…, 0)``."""
        where = " and ".join(c for c in (condition, self.where) if c)
        call = f"{self.func}({self.column or '*'})"
        return f"{call} filter (where {where})" if where else call


ENTITIES: tuple[WindowEntity, ...] = (WindowEntity("card", "card_token"), WindowEntity("customer", "customer_id"))
WINDOWS: tuple[Window, ...] = (Window("10m", 600), Window("1h", 3600), Window("24h", 86400))
AGGREGATES: tuple[Aggregate, ...] = (Aggregate("tx_count", "count", None),
                                     Aggregate("amount_minor_sum", "sum", "amount_minor",
                                               where=f"currency = '{SUM_CURRENCY}'"))


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


def _after(window: Window) -> str:
    """The stream's lower window bound on an event ``e`` as of ``k.asof`` (the upper is the join's)."""
    return f"e.occurred_at > k.asof - interval '{window.seconds} seconds'"


def stream_sql(entity: WindowEntity) -> str:
    """Windows of the given keys (``%(keys)s``, a text array) as of each key's latest payment.

    One indexed range scan per key over the last max-window of its events: the same numbers as
    dbt's RANGE frames at that row, computed with FILTER clauses instead of frames.
    """
    widest = max(w.seconds for w in WINDOWS)
    cols = ",\n  ".join(
        f"coalesce({a.sql(_after(w))}, 0)::bigint"
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
