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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

REQUEST_TIME_FEATURES = ("amount", "is_weekend", "is_night")
TS_SUFFIX = "__ts"


class FeatureStoreUnavailable(RuntimeError):
    """The feature store could not be built or read; decide without it."""


class FeatureMismatch(RuntimeError):
    """The model asks for an input that neither the feature service nor the request provides."""


@dataclass(frozen=True)
class Binding:
    """The resolved feature service and how to type its entity keys."""

    service: Any  # feast.FeatureService
    entity_casts: dict[str, Callable[[str], Any]]  # join key -> str → entity value type


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
    offered: dict[str, tuple[str, str]] = {}
    ambiguous: set[str] = set()
    for proj in service.feature_view_projections:
        view = proj.name_to_use()
        for f in proj.features:
            full = f"{view}__{f.name}"
            offered[full] = (view, full)
            if f.name in offered:
                ambiguous.add(f.name)
            offered[f.name] = (view, full)
    for name in ambiguous:
        offered.pop(name, None)
    return Binding(service=service, entity_casts=_entity_casts(store)), offered


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
        else:
            missing.append(name)
    if missing:
        raise FeatureMismatch(f"model inputs {missing} are neither request-time features nor in the "
                              f"feature service (offers {sorted(offered)})")
    return inputs


class OnlineFeatures:
    """A lazily (re)built Feast store plus its binding; thread-safe, retries at most every ``retry_s``."""

    def __init__(self, factory: Callable[[], Any], service_name: str, retry_s: float = 5.0) -> None:
        self._factory = factory
        self._service_name = service_name
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._store: Any = None
        self._binding: Binding | None = None
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
            except Exception as exc:  # noqa: BLE001 - any store failure means "degraded", logged
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("feature store unavailable: %s", self.last_error)
                return False
            self._store, self._binding, self._offered = store, binding, offered
            self.last_error = None
            log.info("feature service %s bound (%d features offered)", self._service_name, len(offered))
            return True

    @property
    def offered(self) -> dict[str, tuple[str, str]]:
        return dict(self._offered)

    def fetch(self, inputs: dict[str, tuple[str, str]], customer_id: str, terminal_id: str
              ) -> tuple[dict[str, float], dict[str, str | None]]:
        """Model input → value (NaN when unknown) and feature view → event time of the value used."""
        return self.fetch_row(inputs, {"customer_id": customer_id, "terminal_id": terminal_id})

    def fetch_row(self, inputs: dict[str, tuple[str, str]], entity_row: dict[str, str]
                  ) -> tuple[dict[str, float], dict[str, str | None]]:
        """As :meth:`fetch`, for any entity keys (``{"application_id": ...}`` for credit)."""
        if not self.ensure():
            raise FeatureStoreUnavailable(self.last_error or "feature store not available")
        binding, store = self._binding, self._store
        assert binding is not None
        row: dict[str, Any] = dict(entity_row)
        try:
            for key, cast in binding.entity_casts.items():
                if key in row:
                    row[key] = cast(row[key])
        except ValueError:
            # An id that cannot even be an entity key is an unknown entity: all its features missing.
            return {name: math.nan for name in inputs}, {}
        try:
            resp = store.get_online_features(features=binding.service, entity_rows=[row],
                                             full_feature_names=True).to_dict(include_event_timestamps=True)
        except Exception as exc:  # noqa: BLE001 - the store's own errors are many and undocumented
            self.last_error = f"{type(exc).__name__}: {exc}"
            # Feast's Postgres online store keeps one connection and never reconnects it: drop the
            # store so that a later request (after retry_s) builds a fresh one.
            with self._lock:
                if self._store is store:
                    self._store, self._binding = None, None
                    self._last_attempt = time.monotonic()
            raise FeatureStoreUnavailable(self.last_error) from exc
        values: dict[str, float] = {}
        stamps: dict[str, str | None] = {}
        for name, (view, column) in inputs.items():
            raw = (resp.get(column) or [None])[0]
            values[name] = math.nan if raw is None else float(raw)
            if view not in stamps or stamps[view] is None:
                ts = (resp.get(column + TS_SUFFIX) or [None])[0]
                stamps[view] = (datetime.fromtimestamp(ts, UTC).isoformat()
                                if raw is not None and ts else None)
        return values, stamps
