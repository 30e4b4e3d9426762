"""Which model decides a request: the champion alone, a canary share for the challenger, or shadow.

One code path for both products (fraud and credit): each has a :class:`Lane` on the app state
(``app.state.lanes``), and each lane's hot path reads one immutable :class:`Routing` from it (the mode,
the share and the loaded challenger together, so a request never pairs one canary's share with another's
model); the poller builds a new one when the model's canary state in Postgres or its challenger alias
changes and swaps it in with one attribute store. No request reads the database for it.

Routing is deterministic per request: a request goes to the challenger when the hash of its key
(a payment's ``transaction_id``, an application's ``application_id``; the request id without one) falls
below the share, so a retried or replayed request goes to the same model and the routed share converges
on the configured one in aggregate (a Bernoulli draw per distinct key, independent of arrival order,
process or restart). :func:`assign` picks the models of one request and :func:`decide_routed` scores
it: a routed challenger that fails hands the request to the champion, a shadow scores beside it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from riskloop.core.redact import describe
from serving.config import ServingSettings
from serving.model import LoadedModel

log = logging.getLogger(__name__)

_SCALE = float(2**64)
T = TypeVar("T")


def bucket(key: str) -> float:
    """A uniform number in [0, 1) fixed by ``key`` (blake2b: stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / _SCALE


@dataclass(frozen=True)
class Routing:
    """The serving mode as the hot path sees it."""

    mode: str = "champion"  # champion | canary | shadow (what was asked for)
    share: float = 0.0
    challenger: LoadedModel | None = None
    canary_id: str | None = None
    challenger_version: str | None = None  # the version the canary is about (None: any, from settings)
    source: str = "settings"  # or "database" (governance.canary_state)

    @property
    def wants_challenger(self) -> bool:
        return self.mode in ("canary", "shadow") and (self.mode == "shadow" or self.share > 0)

    @property
    def effective_mode(self) -> str:
        """``champion`` until the challenger this mode asks for is loaded (and is the right version)."""
        if not self.wants_challenger or self.challenger is None:
            return "champion"
        if self.challenger_version is not None and self.challenger.version != self.challenger_version:
            return "champion"
        return self.mode

    def to_challenger(self, transaction_id: str) -> bool:
        return bucket(transaction_id) < self.share

    def with_challenger(self, challenger: LoadedModel | None) -> "Routing":
        return Routing(self.mode, self.share, challenger, self.canary_id, self.challenger_version, self.source)

    def describe(self) -> dict[str, Any]:
        c = self.challenger
        return {"mode": self.mode, "effective_mode": self.effective_mode, "share": self.share,
                "canary_id": self.canary_id, "source": self.source, "challenger_version": self.challenger_version,
                "challenger": None if c is None else {"name": c.name, "alias": c.alias, "version": c.version,
                                                      "loaded_at": c.loaded_at.isoformat(), "source": c.source}}


def from_settings(cfg: ServingSettings) -> Routing:
    return Routing(mode=cfg.mode, share=cfg.canary_share if cfg.mode == "canary" else 0.0)


def from_state(state: Any, cfg: ServingSettings) -> Routing:
    """From a :class:`riskloop.governance.canary.CanaryState` (``None``: no canary ever recorded → settings)."""
    if state is None:
        return from_settings(cfg)
    if not state.active:
        return Routing(mode="champion", share=0.0, canary_id=state.canary_id, source="database")
    return Routing(mode=state.mode, share=state.share if state.mode == "canary" else 0.0, canary_id=state.canary_id,
                   challenger_version=state.challenger_version, source="database")


def same_terms(a: Routing, b: Routing) -> bool:
    """Do two routings say the same thing (ignoring which challenger object is loaded)?"""
    return (a.mode, a.share, a.canary_id, a.challenger_version, a.source) == \
        (b.mode, b.share, b.canary_id, b.challenger_version, b.source)


@dataclass(eq=False)
class Lane:
    """One product's model in this process: its routing snapshot and the state of its challenger's loading.

    ``load(alias, at_start=..., as_challenger=...)`` loads a version of the product's model and checks
    the governance record lets it decide (:func:`serving.model.require_clearance`), raising otherwise."""

    product: str  # fraud | credit: the decision log's product, the key of refusals (``<product>:challenger``)
    model_name: str
    load: Callable[..., LoadedModel]
    champion: Callable[[], LoadedModel | None]  # the model deciding now (read, never stored here)
    route: Routing = field(default_factory=Routing)
    challenger_error: str | None = None
    challenger_retry_at: float = 0.0
    watch_lock_conn: Any = None  # the poller's connection holding this model's canary watcher lock

    def describe(self) -> dict[str, Any]:
        return {**self.route.describe(), "model_name": self.model_name, "challenger_error": self.challenger_error}


def assign(route: Routing, champion: LoadedModel | None, key: str) -> tuple[str, LoadedModel | None, LoadedModel | None]:
    """(serving mode, the deciding model, the other one) for one request: in canary mode the key's hash
    routes it to the challenger (the champion standing by), in shadow mode the challenger scores beside
    the champion; without a champion (down, or the rules alone) nothing is routed."""
    mode = route.effective_mode if champion is not None else "champion"
    if mode == "canary" and route.to_challenger(key):
        return mode, route.challenger, champion
    if mode == "shadow":
        return mode, champion, route.challenger
    return mode, champion, None


def decide_routed(mode: str, model: LoadedModel, other: LoadedModel | None, score: Callable[[LoadedModel], T],
                  shadow_score: Callable[[LoadedModel], float], request_id: str,
                  on_shadow: Callable[[LoadedModel, str], None] | None = None,
                  ) -> tuple[LoadedModel, T, dict[str, Any] | None]:
    """Score with the deciding model: (the model that decided, what ``score`` returned, the ``shadow``
    column). A challenger routed a canary request that fails is recorded (``shadow.error``: its arm's
    error in the canary's figures) and the champion decides; any other failure is the caller's. In
    shadow mode ``shadow_score`` scores the other model too, which never affects the decision.
    ``on_shadow(model, "ok" | "error")`` counts non-deciding scores (metrics)."""
    shadow: dict[str, Any] | None = None
    try:
        out = score(model)
    except Exception as exc:  # noqa: BLE001 - only a routed challenger falls back
        if not (mode == "canary" and other is not None):
            raise
        log.error("challenger v%s failed on request %s, the champion decides: %s", model.version, request_id, exc)
        shadow = {"alias": model.alias, "version": model.version, "score": None, "error": describe(exc)}
        if on_shadow:
            on_shadow(model, "error")
        model = other
        out = score(model)
    if mode == "shadow" and other is not None:
        shadow = _shadow(other, shadow_score, on_shadow)
    return model, out, shadow


def _shadow(m: LoadedModel, shadow_score: Callable[[LoadedModel], float],
            on_shadow: Callable[[LoadedModel, str], None] | None) -> dict[str, Any]:
    """Score a request with the shadow model (never deciding): its score and own time, or its error."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"alias": m.alias, "version": m.version}
    try:
        out.update(score=shadow_score(m), latency_ms=(time.perf_counter() - t0) * 1000.0)
    except Exception as exc:  # noqa: BLE001 - a failing shadow never affects the decision
        log.error("shadow model v%s failed: %s", m.version, exc)
        out.update(score=None, error=describe(exc))
    if on_shadow:
        on_shadow(m, "error" if "error" in out else "ok")
    return out
