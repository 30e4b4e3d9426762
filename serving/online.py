"""Online features for one transaction, from Feast in-process.

Everything that can be resolved once (the feature service, which response column feeds which
model input, entity key types) is resolved when the store is bound, so a request only pays for
the online read itself. Any failure of the store surfaces as :class:`FeatureStoreUnavailable`;
the caller turns it into a rules-only, degraded decision — never a 5xx.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from riskloop.core.redact import describe
from riskloop.features import amount_features
from riskloop.features.store import on_demand_view_names
from serving.online_sql import TS_SUFFIX

log = logging.getLogger(__name__)

REQUEST_TIME_FEATURES = ("amount", "is_weekend", "is_night")


@dataclass(frozen=True)
class OnDemand:
    """A Feast on-demand view serving computes itself, from its one online read plus the request."""

    sources: tuple[str, ...]  # the stored fields it reads
    request_fields: tuple[str, ...]  # the request-time fields it reads
    compute: Callable[[Mapping[str, Any]], dict[str, Any]]  # the function Feast runs for training


# By view name. The function is the one feature_repo/definitions.py gives Feast, so the values
# serving computes cannot differ from those training read from the point-in-time join.
ON_DEMAND: dict[str, OnDemand] = {
    amount_features.VIEW_NAME: OnDemand(amount_features.SOURCE_FIELDS, (amount_features.REQUEST_FIELD,),
                                        amount_features.amount_ratios),
}


class FeatureStoreUnavailable(RuntimeError):
    """The feature store could not be built or read; decide without it."""


class FeatureMismatch(RuntimeError):
    """The model asks for an input that neither the feature service nor the request provides."""


@dataclass(frozen=True)
class Binding:
    """The resolved feature service and how to type its entity keys."""

    service: Any  # feast.FeatureService
    entity_casts: dict[str, Callable[[str], Any]]  # join key -> str → entity value type
    stored_refs: tuple[str, ...]  # "view:feature" of the service's stored (not on-demand) features


def _entity_casts(store: Any) -> dict[str, Callable[[str], Any]]:
    """Request ids are strings; a Feast entity declared as an integer must be looked up as one."""
    from feast.value_type import ValueType

    casts: dict[str, Callable[[str], Any]] = {}
    for entity in store.list_entities():
        if entity.value_type in (ValueType.INT64, ValueType.INT32):
            casts[entity.join_key] = int
    return casts


def bind(store: Any, service_name: str) -> tuple[Binding, dict[str, tuple[str, str]]]:
    """Resolve the feature service; return the binding and every feature it offers by name.

    Offered features are keyed by both their full (``view__feature``) and short name; a short
    name that two views share is dropped so that it can never silently pick the wrong view.
    """
    service = store.get_feature_service(service_name)
    on_demand = on_demand_view_names(store)
    offered: dict[str, tuple[str, str]] = {}
    ambiguous: set[str] = set()
    stored_refs: list[str] = []
    for proj in service.feature_view_projections:
        view = proj.name_to_use()
        if proj.name in on_demand and proj.name not in ON_DEMAND:
            raise FeatureMismatch(f"on-demand view {proj.name} of {service_name} has no serving-side computation")
        if proj.name not in on_demand:
            stored_refs.extend(f"{view}:{f.name}" for f in proj.features)
        for f in proj.features:
            full = f"{view}__{f.name}"
            offered[full] = (view, full)
            if f.name in offered:
                ambiguous.add(f.name)
            offered[f.name] = (view, full)
    for name in ambiguous:
        offered.pop(name, None)
    return Binding(service=service, entity_casts=_entity_casts(store), stored_refs=tuple(stored_refs)), offered


def plan_inputs(model_features: Sequence[str], offered: dict[str, tuple[str, str]],
                request_time: Sequence[str] = REQUEST_TIME_FEATURES) -> dict[str, tuple[str, str]]:
    """Which response column feeds each model input; raises if one has no source.

    ``request_time``: inputs computed from the request itself (the fraud model's defaults; the
    credit model has none)."""
    inputs: dict[str, tuple[str, str]] = {}
    missing = []
    for name in model_features:
        if name in request_time:
            continue
        if name in offered:
            inputs[name] = offered[name]
            # An on-demand input is computed from stored fields: read those too, model input or not.
            on_demand = ON_DEMAND.get(offered[name][0])
            for source in on_demand.sources if on_demand else ():
                if source in offered:
                    inputs.setdefault(source, offered[source])
                else:
                    missing.append(source)
        else:
            missing.append(name)
    if missing:
        raise FeatureMismatch(f"model inputs {missing} are neither request-time features nor in the "
                              f"feature service (offers {sorted(offered)})")
    return inputs


def optional_inputs(names: Sequence[str], offered: dict[str, tuple[str, str]],
                    request_time: Sequence[str] = REQUEST_TIME_FEATURES) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """As :func:`plan_inputs` for the features a policy's rules read: those the service offers, and
    the names it does not (their rules cannot fire: a missing feature proves no breach)."""
    usable = [n for n in names if n in offered and n not in request_time]
    missing = [n for n in names if n not in offered and n not in request_time]
    return plan_inputs(usable, offered, request_time), missing


def _decode(inputs: dict[str, tuple[str, str]], resp: dict[str, list[Any]]
            ) -> tuple[dict[str, float], dict[str, str | None]]:
    """A one-row ``to_dict(include_event_timestamps=True)`` → stored input values and view stamps
    (on-demand inputs are left to :func:`with_on_demand`)."""
    values: dict[str, float] = {}
    stamps: dict[str, str | None] = {}
    for name, (view, column) in inputs.items():
        if view in ON_DEMAND:
            continue
        raw = (resp.get(column) or [None])[0]
        values[name] = math.nan if raw is None else float(raw)
        if view not in stamps or stamps[view] is None:
            ts = (resp.get(column + TS_SUFFIX) or [None])[0]
            stamps[view] = (datetime.fromtimestamp(ts, UTC).isoformat()
                            if raw is not None and ts else None)
    return values, stamps


def with_on_demand(inputs: dict[str, tuple[str, str]], values: dict[str, float],
                   request: Mapping[str, float]) -> dict[str, float]:
    """``values`` plus every on-demand input of ``inputs``, computed by its view's function from the
    stored values read and the ``request``'s fields (plain floats: no Feast, no pandas)."""
    wanted: dict[str, list[tuple[str, str]]] = {}
    for name, (view, column) in inputs.items():
        if view in ON_DEMAND:
            wanted.setdefault(view, []).append((name, column.rsplit("__", 1)[-1]))
    if not wanted:
        return values
    out = dict(values)
    row = {**values, **request}
    for view, names in wanted.items():
        missing = [f for f in ON_DEMAND[view].request_fields if f not in request]
        if missing:
            raise FeatureMismatch(f"on-demand view {view} needs the request fields {missing}")
        computed = ON_DEMAND[view].compute(row)
        for name, field in names:
            out[name] = float(computed[field])
    return out


def _unknown(inputs: dict[str, tuple[str, str]], request: Mapping[str, float] | None
             ) -> tuple[dict[str, float], dict[str, str | None]]:
    """An entity the store cannot know: every stored input missing, on-demand ones computed from that."""
    values = {name: math.nan for name, (view, _) in inputs.items() if view not in ON_DEMAND}
    return with_on_demand(inputs, values, request or {}), {}


class OnlineFeatures:
    """A lazily (re)built Feast store plus its binding; thread-safe, retries at most every ``retry_s``.

    ``read="sql"``: :meth:`fetch_async` reads all views in one prepared statement
    (:mod:`serving.online_sql`, planned from the store at bind time); ``"sdk"``: through
    ``get_online_features`` (the sync :meth:`fetch_row` always does).
    """

    def __init__(self, factory: Callable[[], Any], service_name: str, retry_s: float = 5.0, *,
                 read: str = "sdk", timeout_s: float = 0.1, pool_size: int = 4, cache_size: int = 0) -> None:
        if read not in ("sql", "sdk"):
            raise ValueError(f"online read must be 'sql' or 'sdk', not {read!r}")
        self._factory = factory
        self._service_name = service_name
        self._retry_s = retry_s
        self._read = read
        self._timeout_s = timeout_s
        self._pool_size = pool_size
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._store: Any = None
        self._binding: Binding | None = None
        self._plan: Any = None  # serving.online_sql.SqlPlan of the current binding (read="sql")
        self._reader: Any = None  # serving.online_sql.SqlReader, created on the event loop
        self._offered: dict[str, tuple[str, str]] = {}
        self._last_attempt = -math.inf
        self.last_error: str | None = None

    def ensure(self, force: bool = False) -> bool:
        """Build the store and resolve the feature service if not done yet; True when usable."""
        with self._lock:
            if self._binding is not None and not force:
                return True
            now = time.monotonic()
            if not force and now - self._last_attempt < self._retry_s:
                return False
            self._last_attempt = now
            try:
                store = self._factory()
                binding, offered = bind(store, self._service_name)
                plan = None
                if self._read == "sql":
                    from serving.online_sql import build_plan

                    plan = build_plan(store, binding.service)
            except Exception as exc:  # noqa: BLE001 - any store failure means "degraded", logged
                self.last_error = describe(exc)
                log.warning("feature store unavailable: %s", self.last_error)
                return False
            self._store, self._binding, self._offered, self._plan = store, binding, offered, plan
            self.last_error = None
            log.info("feature service %s bound (%d features offered)", self._service_name, len(offered))
            return True

    @property
    def bound(self) -> bool:
        """Bound right now (no I/O: safe to ask on the event loop)."""
        return self._binding is not None

    def _unbind(self, store: Any) -> None:
        """After a failed read: drop the store so that a later request (after retry_s) rebuilds it."""
        with self._lock:
            if self._store is store:
                self._store, self._binding, self._plan = None, None, None
                self._last_attempt = time.monotonic()

    def _cast(self, binding: Binding, entity_row: dict[str, str]) -> dict[str, Any] | None:
        """Entity keys typed as the repo declares them; ``None`` if one cannot be (unknown entity)."""
        row: dict[str, Any] = dict(entity_row)
        try:
            for key, cast in binding.entity_casts.items():
                if key in row:
                    row[key] = cast(row[key])
        except ValueError:
            return None
        return row

    async def connect(self) -> None:
        """Open the direct-read pool ahead of the first request (best effort: a down store degrades)."""
        if self._read != "sql" or not self.ensure():
            return
        try:
            await self._current_reader().connect()
        except Exception as exc:  # noqa: BLE001 - the first request retries and degrades if still down
            log.warning("online store pool not opened at start-up: %s", exc)

    def _current_reader(self) -> Any:
        from serving.online_sql import SqlReader

        plan = self._plan
        if self._reader is None or self._reader.plan is not plan:
            old = self._reader
            self._reader = SqlReader(plan, timeout_s=self._timeout_s, max_size=self._pool_size,
                                     cache_size=self._cache_size)
            if old is not None:
                import asyncio

                asyncio.get_running_loop().create_task(old.close())
        return self._reader

    async def ensure_async(self) -> bool:
        """:meth:`ensure` for the event loop: free when bound, a (re)build runs in a worker thread."""
        if self._binding is not None:
            return True
        if time.monotonic() - self._last_attempt < self._retry_s or self._lock.locked():
            return False  # not due, or another request is rebuilding it: do not queue up behind it
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.ensure)

    async def fetch_async(self, inputs: dict[str, tuple[str, str]], entity_row: dict[str, str],
                          request: Mapping[str, float] | None = None
                          ) -> tuple[dict[str, float], dict[str, str | None]]:
        """As :meth:`fetch_row`, from the event loop: one prepared statement (``read="sql"``), or the
        SDK in a worker thread. Never blocks the loop: a (re)build of the store runs in a thread."""
        from starlette.concurrency import run_in_threadpool

        if self._read == "sdk":
            return await run_in_threadpool(self.fetch_row, inputs, entity_row, request)
        if not await self.ensure_async():
            raise FeatureStoreUnavailable(self.last_error or "feature store not available")
        binding, plan = self._binding, self._plan
        if binding is None or plan is None:  # unbound meanwhile by a failed read
            raise FeatureStoreUnavailable(self.last_error or "feature store not available")
        row = self._cast(binding, entity_row)
        if row is None:
            return _unknown(inputs, request)
        reader = self._current_reader()
        try:
            resp = await reader.read(row)
        except Exception as exc:  # noqa: BLE001 - timeouts, refused connections, server errors
            # The binding stays: the pool drops broken connections and reconnects by itself, and
            # re-reading the registry after a mere timeout would add load exactly when the
            # machine is already too slow (that cascade was measured: BENCHMARKS.md).
            self.last_error = describe(exc) if str(exc) else type(exc).__name__
            raise FeatureStoreUnavailable(self.last_error) from exc
        if resp is None:
            return _unknown(inputs, request)
        values, stamps = _decode(inputs, resp)
        return with_on_demand(inputs, values, request or {}), stamps

    async def aclose(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    def cache_stats(self) -> dict[str, Any] | None:
        """The direct read's cache (:mod:`serving.online_cache`): on or off, entries, hits, misses."""
        reader = self._reader
        return reader.cache.stats() if reader is not None and reader.cache is not None else None

    @property
    def offered(self) -> dict[str, tuple[str, str]]:
        return dict(self._offered)

    def fetch_row(self, inputs: dict[str, tuple[str, str]], entity_row: dict[str, str],
                  request: Mapping[str, float] | None = None) -> tuple[dict[str, float], dict[str, str | None]]:
        """Input → value (NaN when unknown) and feature view → event time of the value used, for the
        entity keys of the service's views (``{"application_id": ...}`` for credit).

        ``request``: the request-time fields on-demand inputs read (the fraud model's ``amount``).
        Feast is asked for the stored features only and on-demand ones are computed here, exactly
        as on the direct-read path."""
        if not self.ensure():
            raise FeatureStoreUnavailable(self.last_error or "feature store not available")
        binding, store = self._binding, self._store
        assert binding is not None
        row = self._cast(binding, entity_row)
        if row is None:  # an id that cannot even be an entity key is an unknown entity
            return _unknown(inputs, request)
        try:
            resp = store.get_online_features(features=list(binding.stored_refs), entity_rows=[row],
                                             full_feature_names=True).to_dict(include_event_timestamps=True)
        except Exception as exc:  # noqa: BLE001 - the store's own errors are many and undocumented
            self.last_error = describe(exc)
            # Feast's Postgres online store keeps one connection and never reconnects it: drop the
            # store so that a later request (after retry_s) builds a fresh one.
            self._unbind(store)
            raise FeatureStoreUnavailable(self.last_error) from exc
        values, stamps = _decode(inputs, resp)
        return with_on_demand(inputs, values, request or {}), stamps
