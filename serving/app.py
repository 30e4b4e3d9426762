"""The fraud scoring service: ``create_app(settings) -> FastAPI``.

Nothing heavy happens at import: the model is fetched from the MLflow registry, the Feast store
built and the decision-log table ensured in the lifespan, and all of it lives on ``app.state``
(no module globals), so tests and several apps in one process never share state.

Fraud scoring is an ``async def`` handler that never blocks the loop: its online read is one
asyncpg round trip (:mod:`serving.online_sql`; the Feast SDK read, ``online_read=sdk``, goes to a
worker thread), the model is numpy arrays (:mod:`serving.trees`) and the decision-log
row is queued without waiting. A thread hop per request cost more than all of that under load
(docs/benchmarks/history.md, "Serving"). The other endpoints stay plain ``def`` handlers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from riskloop.core import migrations
from riskloop.core.config import Settings, get_settings
from riskloop.core.db import dsn
from riskloop.core.logs import RequestIdMiddleware
from riskloop.core.pan import InvalidPan, PanKeyMissing, tokenizer
from riskloop.core.redact import describe, register_settings
from riskloop.core.subject_keys import SubjectKeyMissing, subject_keys
from riskloop.decisions import log as decision_log
from riskloop.decisions.cases import CaseRules
from riskloop.decisions.policy import Policy, PolicyError, load_policy
from riskloop.decisions.policy_store import StoreState
from riskloop.governance import canary
from serving import credit, policy_watch, routing
from serving.auth import KeyRing, require
from serving.card_fields import card_numbers_elsewhere
from serving.case_metrics import CaseCollector
from serving.cases_api import page_router as cases_page_router
from serving.cases_api import router as cases_router
from serving.config import ServingSettings
from serving.currencies import minor_to_major
from serving.decision_log import DecisionLogWriter, record_or_refuse_async
from serving.decisions_api import router as decisions_router
from serving.devices import KnownDevices
from serving.fastpath import ScoreFastPath
from serving.limits import BodyLimits
from serving.model import (
    LoadedModel,
    ModelLoadError,
    ModelRefused,
    alias_version,
    load_for_serving,
    require_clearance,
    save_last_known_good,
)
from serving.online import FeatureMismatch, FeatureStoreUnavailable, OnlineFeatures, optional_inputs, plan_inputs
from serving.policy_api import LIST_IMPORT_PATH
from serving.policy_api import router as policy_router
from serving.reasons import top_reasons
from serving.refusals import cleared, refused
from serving.review import router as review_router
from serving.routing import Routing
from serving.schemas import (
    FraudScoreRequest,
    FraudScoreResponse,
    LoadedModelInfo,
    ModelInfo,
)
from serving.travel import CardLocations, horizon_h
from serving.webhooks import WebhookFastPath
from serving.webhooks import build_router as webhooks_router

log = logging.getLogger(__name__)


class _Metrics:
    """Prometheus metrics on a per-app registry (no process-global default registry).

    With several workers (``multiproc_dir``: ``RISKLOOP_SERVING_METRICS_DIR``, set by :func:`run` with
    prometheus_client's ``PROMETHEUS_MULTIPROC_DIR`` to the same directory) each
    process writes its values to files there and :meth:`exposition` merges every worker's with the
    library's ``MultiProcessCollector``, so any scrape sees the whole server, whichever worker
    answers. Gauges then say how they combine (``multiprocess_mode``)."""

    def __init__(self, multiproc_dir: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        if multiproc_dir and values.ValueClass is values.MutexValue:
            raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported "
                               "(riskloop serve --workers sets it before starting the workers)")
        self.multiproc_dir = multiproc_dir
        self._children: dict[tuple, tuple[Any, Any]] = {}  # (decision, degraded, alias, version) → children
        self.registry = CollectorRegistry()
        self.collectors: list[Any] = []
        self.decisions = Counter("riskloop_fraud_decisions", "Fraud decisions returned, by deciding model.",
                                 ["decision", "degraded", "model_alias", "model_version"], registry=self.registry)
        self.latency = Histogram("riskloop_fraud_score_latency_seconds", "Scoring time, request to decision.",
                                 ["model_alias", "model_version"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
                                 registry=self.registry)
        self.shadow_scores = Counter("riskloop_fraud_shadow_scores", "Non-deciding scores (shadow mode, or a "
                                     "failed canary route), by model and outcome.",
                                     ["model_alias", "model_version", "outcome"], registry=self.registry)
        self.canary_share = Gauge("riskloop_canary_share", "Share of fraud requests routed to the challenger now.",
                                  registry=self.registry, multiprocess_mode="livemax")
        self.feature_store_errors = Counter("riskloop_feature_store_errors", "Online reads that failed.",
                                            registry=self.registry)
        self.log_written = Counter("riskloop_decision_log_rows_written", "Decision-log rows committed.",
                                   registry=self.registry)
        self.log_errors = Counter("riskloop_decision_log_write_errors", "Failed decision-log batch inserts.",
                                  registry=self.registry)
        self.log_dead_letters = Counter("riskloop_decision_log_dead_letters", "Decision-log rows the database "
                                        "refused, set aside in serving.decision_log_dead_letters.",
                                        registry=self.registry)
        self.queue_depth = Gauge("riskloop_decision_log_queue_depth", "Decisions waiting for the writer.",
                                 registry=self.registry, multiprocess_mode="livesum")

    def decided(self, decision: str, degraded: bool, alias: str, version: str | None, seconds: float) -> None:
        """Count one fraud decision and its latency. The labelled children are looked up once per
        label set and kept: ``labels()`` per request (locked, keyword-matched) was ~2 % of the
        server's samples (py-spy, docs/benchmarks/history.md "Serving")."""
        key = (decision, degraded, alias, version)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.decisions.labels(decision=decision, degraded=str(degraded).lower(), model_alias=alias,
                                      model_version=str(version)),
                self.latency.labels(model_alias=alias, model_version=str(version)))
        children[0].inc()
        children[1].observe(seconds)

    def shadow(self, m: LoadedModel, outcome: str) -> None:
        """Count one non-deciding fraud score (``outcome`` ok | error)."""
        self.shadow_scores.labels(m.alias, m.version, outcome).inc()

    def track_queue(self, writer: DecisionLogWriter) -> None:
        """The queue depth gauge: read at scrape time in one process; with several, each writer
        sets its own after every batch (a scrape cannot call into the other processes)."""
        if self.multiproc_dir:
            writer.on_depth = self.queue_depth.set
        else:
            self.queue_depth.set_function(writer.depth)

    def add_collector(self, collector: Any) -> None:
        """A collector read at scrape time in the scraping process (figures from Postgres, the same
        whichever worker answers): registered here, and on each merged registry."""
        self.collectors.append(collector)
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """The text a scrape gets: this registry, or every worker's values merged."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if not self.multiproc_dir:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiproc_dir)
        for collector in self.collectors:
            merged.register(collector)
        return generate_latest(merged)


def _make_metrics(multiproc_dir: str | None = None) -> _Metrics | None:
    try:
        return _Metrics(multiproc_dir)
    except ImportError:  # prometheus_client is only a transitive dependency today
        log.warning("prometheus_client not installed: /metrics disabled")
        return None


def _default_feature_store_factory(settings: Settings) -> Callable[[], Any]:
    def factory() -> Any:
        from riskloop.features.store import feature_store

        return feature_store(settings)

    return factory


def _load_and_check(settings: Settings, cfg: ServingSettings, online: OnlineFeatures, *,
                    at_start: bool = False, alias: str | None = None, as_challenger: bool = False) -> LoadedModel:
    """Load the alias, check the governance record lets it decide (:func:`serving.model.require_clearance`:
    :class:`ModelRefused` otherwise) and, if the store is up, prove every model input has a source.

    Each model loaded from the registry and cleared is kept on disk (``<run_dir>/models``); at start
    only, a registry that does not answer means serving that last-known-good model (``/readyz`` says
    so) rather than rules only (:func:`serving.model.load_for_serving`)."""
    cache = settings.run_dir / "models"
    model = load_for_serving(settings.tracking_uri, settings.fraud_model_name, alias or cfg.model_alias, cache,
                             at_start=at_start)
    require_clearance(settings, model, as_challenger=as_challenger)
    if online.ensure():
        try:
            plan_inputs(model.features, online.offered)
        except FeatureMismatch as exc:
            raise ModelLoadError(f"{model.name} v{model.version}: {exc}") from exc
    if model.source == "registry":
        save_last_known_good(model, cache)
    return model


def _swap(st: Any, new: LoadedModel) -> None:
    """Serve ``new`` from the next request on: one attribute store of an immutable LoadedModel, so a
    request in flight keeps the model it read (no request is dropped or mixes two versions)."""
    old, st.model, st.model_error = st.model, new, None
    log.info("now serving %s v%s (was v%s)", new.name, new.version, old.version if old else None)


def _on_poll_conn(st: Any, work: Callable[[psycopg.Connection], Any]) -> Any:
    """Run ``work`` on the poller's kept autocommit connection (``st.poll_conn``, reopened after an
    error). Off the loop, in the poller. A new connection per poll, every second, was ~3 % of the
    server's samples at 150 requests/s (py-spy), plus a backend start on the Postgres side each time.
    The connection also holds the canary watcher's advisory lock (:func:`_is_watch_leader`)."""
    conn: psycopg.Connection | None = st.poll_conn
    if conn is None or conn.closed or conn.broken:
        conn = st.poll_conn = _connect(st.settings)
    try:
        return work(conn)
    except psycopg.Error:
        st.poll_conn = None
        conn.close()  # releases the watcher lock too: another process may take it over
        raise


def _read_canary_state(st: Any, model_name: str) -> Any:
    """The model's current canary row (``None``: never had one)."""
    def read(conn: psycopg.Connection) -> Any:
        if conn.execute("select to_regclass(%s)", (canary.TABLE,)).fetchone()[0] is None:
            return None
        return canary.current(conn, model_name)

    return _on_poll_conn(st, read)


def _refresh_devices(st: Any) -> int:
    """Known devices allowed by any process since the last refresh (serving.devices)."""
    return _on_poll_conn(st, st.devices.refresh)


def _refresh_cards(st: Any) -> int:
    """Card sightings logged by any process since the last refresh (serving.travel)."""
    return _on_poll_conn(st, st.cards.refresh)


def watch_lock_key(model_name: str) -> str:
    """The text whose hash is the advisory-lock key of the model's canary watcher."""
    return f"riskloop canary watcher {model_name}"


def _is_watch_leader(st: Any, lane: routing.Lane) -> bool:
    """Whether this process judges the lane's running canary's tripwires: the one holding a session-level
    Postgres advisory lock (one per model) on the poller's connection. With several workers (or replicas)
    exactly one judges and rolls back; the others follow the canary state the poller reads anyway. The
    lock dies with its connection, so if the leader's process goes, the next poll of another
    process takes over."""
    def lead(conn: psycopg.Connection) -> bool:
        if lane.watch_lock_conn is conn:
            return True  # taken earlier on this same session (and re-taking would stack it)
        got = conn.execute("select pg_try_advisory_lock(hashtextextended(%s, 0))",
                           (watch_lock_key(lane.model_name),)).fetchone()[0]
        if got:
            lane.watch_lock_conn = conn
            log.info("this process now watches the canary tripwires of %s", lane.model_name)
        return bool(got)

    return _on_poll_conn(st, lead)


def _set_route(st: Any, lane: routing.Lane, new: Routing) -> None:
    """Swap the lane's routing snapshot (one attribute store, like the model)."""
    old: Routing = lane.route
    lane.route = new
    if st.metrics and lane.product == "fraud":  # the gauge is the fraud endpoint's (its name says so)
        st.metrics.canary_share.set(new.share if new.effective_mode == "canary" else 0.0)
    if (old.effective_mode, old.share, old.canary_id) != (new.effective_mode, new.share, new.canary_id):
        log.info("%s routing now %s (share %.3f, canary %s, challenger v%s)", lane.product, new.effective_mode,
                 new.share, new.canary_id, new.challenger.version if new.challenger else None)


async def _refresh_challenger(app: FastAPI, lane: routing.Lane, *, force: bool = False) -> None:
    """Load the challenger the lane's routing asks for (or drop it when no longer wanted). A failed load is
    retried at most every ``feature_store_retry_s`` (not every poll) and leaves the champion deciding;
    a refused one (no running canary of its version) is paged."""
    from starlette.concurrency import run_in_threadpool

    st = app.state
    route: Routing = lane.route
    key = f"{lane.product}:challenger"
    if not (route.wants_challenger and st.cfg.challenger_alias):
        cleared(st, key)
        if route.challenger is not None:
            _set_route(st, lane, route.with_challenger(None))
        return
    current = route.challenger
    if not force and current is not None and (route.challenger_version in (None, current.version)):
        return
    if not force and time.monotonic() < lane.challenger_retry_at:
        return
    try:
        new = await _load_if_moved(st, lane, st.cfg.challenger_alias, current, as_challenger=True)
        if new is None:
            return
    except Exception as exc:  # noqa: BLE001 - the champion keeps deciding; retry later
        if isinstance(exc, ModelRefused):
            await run_in_threadpool(refused, st, key, exc, current)
        lane.challenger_error = describe(exc)
        lane.challenger_retry_at = time.monotonic() + max(st.cfg.feature_store_retry_s, 1.0)
        log.warning("challenger %s@%s not loaded: %s", lane.model_name, st.cfg.challenger_alias,
                    lane.challenger_error)
        return
    lane.challenger_error = None
    cleared(st, key)
    _set_route(st, lane, lane.route.with_challenger(new))


async def _refresh_canary(app: FastAPI, lane: routing.Lane) -> None:
    """Re-read the lane's canary state; on a change swap the routing; while a canary runs, the one watcher
    process (:func:`_is_watch_leader`) checks its tripwires (riskloop.governance.canary.watch_once) and applies
    a rollback to itself at once (the others within a poll, from the state)."""
    from starlette.concurrency import run_in_threadpool

    st = app.state
    state = await run_in_threadpool(_read_canary_state, st, lane.model_name)
    new = routing.from_state(state, st.cfg)
    if not routing.same_terms(new, lane.route):
        _set_route(st, lane, new.with_challenger(lane.route.challenger))
    await _refresh_challenger(app, lane)
    if (st.cfg.canary_watch and state is not None and state.mode == "canary"
            and lane.route.effective_mode == "canary" and await run_in_threadpool(_is_watch_leader, st, lane)):
        rolled = await run_in_threadpool(canary.watch_once, st.settings, lane.model_name, state)
        if rolled is not None:
            _set_route(st, lane, routing.from_state(rolled, st.cfg))
            await _refresh_challenger(app, lane)


async def _load_if_moved(st: Any, lane: routing.Lane, alias: str, current: LoadedModel | None, *,
                         as_challenger: bool = False) -> LoadedModel | None:
    """The lane's model ``alias`` points at now, loaded and cleared off the loop, if it is not ``current``
    (or ``current`` came from the last-known-good cache and the registry answers again); else ``None``."""
    from starlette.concurrency import run_in_threadpool

    version = await run_in_threadpool(alias_version, st.settings.tracking_uri, lane.model_name, alias)
    if current is not None and current.version == version and current.source == "registry":
        return None
    return await run_in_threadpool(lambda: lane.load(alias, as_challenger=as_challenger))


async def _refresh_champion(app: FastAPI) -> None:
    """If the champion alias moved, load the new version off the loop and swap it in, once the
    governance record clears it; a refused version is paged and the model served stays."""
    from starlette.concurrency import run_in_threadpool

    st = app.state
    try:
        new = await _load_if_moved(st, st.lanes["fraud"], st.cfg.model_alias, st.model)
    except ModelRefused as exc:
        await run_in_threadpool(refused, st, "fraud:champion", exc, st.model)
        return
    except Exception as exc:  # noqa: BLE001 - keep serving what we have; try again next time
        log.warning("alias poll of %s@%s failed: %s", st.settings.fraud_model_name, st.cfg.model_alias, exc)
        return
    cleared(st, "fraud:champion")  # the alias is back on the model served, or a cleared one replaces it
    if new is not None:
        _swap(st, new)


async def _poll(app: FastAPI) -> None:
    """The one background poller: the canary state every ``canary_poll_s`` (cheap: one indexed row),
    the devices other processes allowed every ``known_device_poll_s``, the champion and challenger
    aliases every ``model_poll_s`` (registry calls)."""
    from starlette.concurrency import run_in_threadpool

    st = app.state
    cfg: ServingSettings = st.cfg
    card_poll_s = cfg.card_location_poll_s if st.cards is not None else 0.0
    periods = (cfg.model_poll_s, cfg.canary_poll_s, cfg.known_device_poll_s, card_poll_s)
    tick = min(p for p in periods if p > 0)
    next_canary = next_devices = next_cards = time.monotonic()
    next_alias = next_canary + cfg.model_poll_s
    while True:
        await asyncio.sleep(tick)
        if cfg.canary_poll_s > 0 and time.monotonic() >= next_canary:
            next_canary = time.monotonic() + cfg.canary_poll_s
            for lane in st.lanes.values():
                try:
                    await _refresh_canary(app, lane)
                except Exception as exc:  # noqa: BLE001 - keep the last routing; try again next tick
                    log.warning("%s canary state poll failed (routing unchanged): %s", lane.product, exc)
        if cfg.known_device_poll_s > 0 and time.monotonic() >= next_devices:
            next_devices = time.monotonic() + cfg.known_device_poll_s
            try:
                await run_in_threadpool(_refresh_devices, st)
            except Exception as exc:  # noqa: BLE001 - this process's own devices still count
                log.warning("known-device refresh failed: %s", exc)
        if card_poll_s > 0 and time.monotonic() >= next_cards:
            next_cards = time.monotonic() + card_poll_s
            try:
                await run_in_threadpool(_refresh_cards, st)
            except Exception as exc:  # noqa: BLE001 - this process's own sightings still count
                log.warning("card location refresh failed: %s", exc)
        if cfg.model_poll_s > 0 and time.monotonic() >= next_alias:
            next_alias = time.monotonic() + cfg.model_poll_s
            await _refresh_champion(app)
            await credit.refresh(st, st.settings.tracking_uri, st.settings.credit_model_name, cfg.credit_model_alias,
                                 st.settings.run_dir / "models")
            for lane in st.lanes.values():
                await _refresh_challenger(app, lane, force=True)


async def decide_fraud(st: Any, body: FraudScoreRequest, request_id: str) -> bytes:
    """One fraud decision, encoded: the whole of ``POST /v1/score/fraud`` after authentication and
    validation, shared by the FastAPI route and :class:`serving.fastpath.ScoreFastPath`. Raises
    ``HTTPException`` for the refusals a valid body can still get (PAN 422/503, log backlog 503)."""
    t0 = time.perf_counter()
    cfg: ServingSettings = st.cfg
    champion: LoadedModel | None = st.model  # one read: a concurrent reload cannot mix versions
    route: Routing = st.lanes["fraud"].route  # one read: the mode, share and challenger of one snapshot
    decided_at = datetime.now(UTC)
    policy: Policy = st.fraud_policy  # one read: the version, lists and emergency rules of one snapshot
    if policy.rules_only:  # an emergency stop: the rules alone decide, as when the model is down
        champion = None
    # deciding; shadow (or a canary route's fallback)
    mode, model, other = routing.assign(route, champion, body.transaction_id or request_id)

    ts = body.timestamp.astimezone(UTC)  # the marts derive these flags in UTC too
    request_time = {"amount": minor_to_major(body.amount_minor, body.currency),
                    "is_weekend": 1.0 if ts.weekday() >= 5 else 0.0,
                    "is_night": 1.0 if ts.hour <= 6 else 0.0}
    req = body.model_dump(mode="json")  # pan is excluded: only its token, BIN and last four are kept
    body, req = card_numbers_elsewhere(st.pan, body, req, request_id)
    if body.pan is not None:
        if st.pan is None:
            raise HTTPException(503, detail={"error": "pan_tokenization_unavailable",
                                             "detail": "no PAN token key configured"})
        try:
            card = st.pan.tokenize(body.pan)
        except InvalidPan as exc:
            log.warning("score request %s refused: %s", request_id, exc)
            raise HTTPException(422, detail={"error": "invalid_pan", "detail": str(exc)}) from None
        req.update(pan_token=card.token, card_bin=card.bin, card_last4=card.last4)
    signals = {"device_known": st.devices.known(body.customer_id, body.device_id)}
    if st.cards is not None:  # the policy has an impossible_travel rule
        signals.update(st.cards.signals(body.card_token, body.country, ts))

    score: float | None = None
    reasons: list[dict] = []
    stamps: dict[str, str | None] = {}
    shadow: dict[str, Any] | None = None
    degraded = model is None
    values: dict[str, float] = {}
    if model is not None or policy.feature_names:
        try:
            if not await st.online.ensure_async():
                raise FeatureStoreUnavailable(st.online.last_error or "feature store not available")
            offered = st.online.offered
            inputs, _ = optional_inputs(policy.feature_names, offered)
            if model is not None:
                inputs.update(plan_inputs(model.features, offered))
                if other is not None and other.features != model.features:
                    inputs.update(plan_inputs(other.features, offered))
            values, stamps = await st.online.fetch_async(
                inputs, {"customer_id": body.customer_id, "terminal_id": body.terminal_id,
                         "card_token": body.card_token}, request_time)
        except (FeatureStoreUnavailable, FeatureMismatch) as exc:
            degraded = True
            values, stamps = {}, {}
            if st.metrics and model is not None:
                st.metrics.feature_store_errors.inc()
            log.warning("degraded decision for request %s: %s", request_id, exc)
    # What the rules read (and the log keeps, so a replay sees the same): the policy's features,
    # then the model's inputs below.
    features = {n: (None if math.isnan(values[n]) else values[n]) for n in policy.feature_names if n in values}
    if model is not None and not degraded:
        def vector_of(m: LoadedModel) -> list[float]:
            return [request_time[n] if n in request_time else values[n] for n in m.features]

        def score_with(m: LoadedModel) -> tuple[list[float], np.ndarray, float, np.ndarray]:
            vector = vector_of(m)
            x = np.asarray([vector], dtype=np.float64)
            return (vector, x, *m.predict(x))

        model, (vector, x, score, contribs), shadow = routing.decide_routed(
            mode, model, other, score_with, lambda m: score_with(m)[2], request_id,
            st.metrics.shadow if st.metrics else None)
        reasons = top_reasons(list(model.features), x[0], contribs, cfg.max_reasons)
        features.update({n: (None if math.isnan(v) else v) for n, v in zip(model.features, vector, strict=True)})

    decision, rules, shadow_rules = policy.evaluate(score, req, features, signals, stamps)
    if policy.seq:  # the store's state it ran under (0: an empty store), so a replay rebuilds the same lists
        signals["policy_seq"] = policy.seq
    if shadow_rules:  # watched, never deciding (riskloop policy shadow)
        signals["shadow_rules"] = shadow_rules

    decision_id = uuid.uuid4()
    model_name = model.name if model else st.settings.fraud_model_name
    model_version = model.version if model else None
    model_alias = model.alias if model else cfg.model_alias
    latency_ms = (time.perf_counter() - t0) * 1000.0
    row = {
        "decision_id": decision_id, "request_id": request_id, "decided_at": decided_at,
        "model_name": model_name, "model_version": model_version, "model_alias": model_alias,
        "score": score, "decision": decision, "reasons": reasons, "rules": rules,
        "features": features, "feature_timestamps": stamps,
        "request": req, "latency_ms": latency_ms, "degraded": degraded,
        "product": "fraud", "policy_version": policy.id, "signals": signals,
        "serving_mode": mode, "shadow": shadow,
    }
    await record_or_refuse_async(st.writer, row)
    if decision == "allow":  # only once logged: the warm-up after a restart reads the same fact
        st.devices.add(body.customer_id, body.device_id)
    if st.cards is not None:
        st.cards.observe(req)
    if st.metrics:
        st.metrics.decided(decision, degraded, model_alias, model_version, latency_ms / 1000.0)
    # Validated once here and encoded by pydantic-core; the route returns these bytes as a
    # Response so that FastAPI does not dump, re-validate and re-encode it for response_model.
    return FraudScoreResponse(
        decision_id=decision_id, decision=decision, score=score,
        model=ModelInfo(name=model_name, version=model_version, alias=model_alias),
        reasons=reasons, rules=rules, degraded=degraded, policy_version=policy.id).model_dump_json().encode()


def _model_info(app: FastAPI) -> LoadedModelInfo:
    st = app.state
    m: LoadedModel | None = st.model
    if m is None:
        return LoadedModelInfo(loaded=False, name=st.settings.fraud_model_name, alias=st.cfg.model_alias,
                               error=st.model_error)
    return LoadedModelInfo(loaded=True, name=m.name, alias=m.alias, version=m.version, run_id=m.run_id,
                           features=list(m.features), loaded_at=m.loaded_at, error=st.model_error,
                           source=m.source)


def _connect(settings: Settings) -> psycopg.Connection:
    return psycopg.connect(dsn(settings), connect_timeout=3, autocommit=True)


def create_app(settings: Settings | None = None, serving_settings: ServingSettings | None = None, *,
               feature_store_factory: Callable[[], Any] | None = None) -> FastAPI:
    """Build the app. ``feature_store_factory`` replaces ``riskloop.features.store.feature_store(settings)``
    (tests use it to point the store somewhere broken); everything else comes from settings."""
    # The serving role (riskloop.core.roles): it appends to the decision log, never alters it.
    settings = (settings or get_settings()).as_role("serving")
    cfg = serving_settings or ServingSettings()
    keys = KeyRing.from_settings(settings, api_keys=cfg.api_keys, extra_admin=cfg.admin_token)  # malformed: fail at start
    register_settings(settings, cfg)  # logs and the errors returned never show these (riskloop.core.redact)
    fraud_policy = load_policy(cfg.fraud_policy)  # an invalid policy fails the deploy, not a payment
    credit_policy = load_policy(cfg.credit_policy)
    if (fraud_policy.policy, credit_policy.policy) != ("fraud", "credit"):
        raise PolicyError(f"policies swapped: fraud_policy is {fraud_policy.id}, credit_policy is {credit_policy.id}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st = app.state
        st.settings, st.cfg, st.keys, st.fraud_policy = settings, cfg, keys, fraud_policy
        # The configured files decide until the policy store has an approved version (serving.policy_watch).
        st.fraud_file_policy, st.credit_file_policy, st.credit_policy = fraud_policy, credit_policy, credit_policy
        st.policy_state, st.policy_error = StoreState(), None
        st.devices = KnownDevices()
        horizon = horizon_h(fraud_policy)
        st.cards = CardLocations(horizon) if horizon is not None else None
        try:
            st.pan = tokenizer(settings)
        except PanKeyMissing as exc:  # requests carrying a PAN get a 503; others are scored
            log.error("score requests carrying a card number will be refused: %s", exc)
            st.pan = None
        try:
            st.subject_keys = subject_keys(settings)
        except SubjectKeyMissing as exc:  # decisions would keep personal fields in clear, out of erasure's reach
            if not settings.allow_unsealed_personal_fields:
                raise SubjectKeyMissing(f"{exc}. Serving does not log personal fields unsealed; to accept that "
                                        "(no erasure possible), set RISKLOOP_ALLOW_UNSEALED_PERSONAL_FIELDS=true") from exc
            log.error("personal fields of decisions will be logged unsealed (no erasure possible; "
                      "RISKLOOP_ALLOW_UNSEALED_PERSONAL_FIELDS): %s", exc)
            st.subject_keys = None
        log.info("fraud policy %s (sha256 %s) from %s", fraud_policy.id, fraud_policy.digest[:12], cfg.fraud_policy)
        if len(keys) == 0:
            log.warning("RISKLOOP_API_KEYS is not set: every /v1 endpoint will answer 401")
        st.metrics = _make_metrics(cfg.metrics_dir)
        if st.metrics is not None:
            st.metrics.add_collector(CaseCollector(settings))
        st.online = OnlineFeatures(feature_store_factory or _default_feature_store_factory(settings),
                                   cfg.feature_service, retry_s=cfg.feature_store_retry_s, read=cfg.online_read,
                                   timeout_s=cfg.online_timeout_s, pool_size=cfg.online_pool_size,
                                   cache_size=cfg.online_cache_size)
        st.model, st.model_error = None, None
        st.refused = {}  # refused models by key (serving.app.refused), listed by /readyz
        # One lane per product: its routing snapshot and challenger (serving.routing)
        st.lanes = {
            "fraud": routing.Lane("fraud", settings.fraud_model_name, champion=lambda: st.model, route=routing.from_settings(cfg),
                                  load=lambda alias, *, at_start=False, as_challenger=False: _load_and_check(
                                      settings, cfg, st.online, alias=alias, at_start=at_start,
                                      as_challenger=as_challenger)),
            "credit": routing.Lane("credit", settings.credit_model_name, champion=lambda: st.credit_model,
                                   route=routing.from_settings(cfg),
                                   load=lambda alias, *, at_start=False, as_challenger=False: credit.load_and_check(
                                       settings, settings.credit_model_name, alias, settings.run_dir / "models",
                                       at_start=at_start, as_challenger=as_challenger)),
        }
        st.poll_conn = None  # the poller's connection (_on_poll_conn)
        try:
            # Tables are the migrations' (`riskloop db upgrade`), never created by a serving process.
            with _connect(settings) as conn:
                behind = migrations.pending_on(conn, settings)
                if behind is None:
                    policy_watch.refresh_once(st, conn)  # the approved version before the first request
                    st.devices.warm(conn, cfg.known_device_lookback_days)
                    if st.cards is not None:
                        st.cards.warm(conn)
            if behind is not None:
                log.error("%s; /readyz says 503 until it is", behind)
        except psycopg.Error as exc:  # the writer retries on connect; /readyz says 503 meanwhile
            log.error("could not read %s at startup: %s", decision_log.TABLE, exc)
        m = st.metrics
        st.writer = DecisionLogWriter(
            dsn(settings), maxsize=cfg.log_queue_size, batch_size=cfg.log_batch_size,
            enqueue_timeout_s=cfg.log_enqueue_timeout_s, linger_s=cfg.log_linger_s,
            commit_timeout_s=cfg.log_commit_timeout_s, synchronous_commit=cfg.log_synchronous_commit,
            case_rules=CaseRules.from_settings(settings),
            on_written=m.log_written.inc if m else None, on_error=m.log_errors.inc if m else None,
            on_dead_letter=m.log_dead_letters.inc if m else None, subject_keys=st.subject_keys)
        if m:
            m.track_queue(st.writer)
        st.writer.start()
        if st.online.ensure(force=True):
            _, unread = optional_inputs(fraud_policy.feature_names, st.online.offered)
            if unread:  # the deploy runs, but these rules can never fire: say so where on-call looks
                log.error("policy %s reads features %s that feature service %s does not offer: their rules "
                          "cannot fire", fraud_policy.id, unread, cfg.feature_service)
        credit.setup(st, settings.tracking_uri, settings.credit_model_name, cfg.credit_model_alias,
                     settings.run_dir / "models",
                     OnlineFeatures(feature_store_factory or _default_feature_store_factory(settings),
                                    cfg.credit_feature_service, retry_s=cfg.feature_store_retry_s))
        try:
            st.model = _load_and_check(settings, cfg, st.online, at_start=True)
        except Exception as exc:  # noqa: BLE001 - start anyway: rules-only + /readyz 503 until a reload
            st.model_error = describe(exc)
            log.error("no model served: %s", st.model_error)
            if isinstance(exc, ModelRefused):
                refused(st, "fraud:champion", exc, None)
        for lane in st.lanes.values():
            try:
                lane.route = routing.from_state(_read_canary_state(st, lane.model_name), cfg)
            except psycopg.Error as exc:
                log.error("%s canary state unreadable at start, routing from settings (%s): %s", lane.product,
                          lane.route.mode, exc)
            if lane.route.wants_challenger and lane.champion() is not None:
                await _refresh_challenger(app, lane)
            _set_route(st, lane, lane.route)
        await st.online.connect()
        polled = (cfg.model_poll_s, cfg.canary_poll_s, cfg.known_device_poll_s,
                  cfg.card_location_poll_s if st.cards is not None else 0.0)
        poller = asyncio.create_task(_poll(app)) if any(p > 0 for p in polled) else None
        st.policy_watch = policy_watch.PolicyWatcher(st, cfg.policy_poll_s) if cfg.policy_poll_s > 0 else None
        if st.policy_watch is not None:
            st.policy_watch.start()
        # Everything built so far (Feast, the model, the registry's objects: hundreds of thousands)
        # lives as long as the process. Frozen, it is never scanned again: a full collection over it
        # stalled every request of the worker for a quarter of a second under load.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if st.policy_watch is not None:
                st.policy_watch.close()
            if poller is not None:
                poller.cancel()
                with suppress(asyncio.CancelledError):
                    await poller  # a poll in flight ends before its connection is closed
            if st.poll_conn is not None:
                st.poll_conn.close()
            await st.online.aclose()
            st.writer.close(cfg.log_shutdown_timeout_s)
            if st.metrics is not None and st.metrics.multiproc_dir:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid(), st.metrics.multiproc_dir)  # its live gauges go

    app = FastAPI(title="riskloop scoring", version="0.1.0", lifespan=lifespan)
    # The webhook routes answered without the framework around them (serving.webhooks); added
    # first so that it runs inside the request-id middleware.
    app.add_middleware(WebhookFastPath)
    # Every other body: 401 without a key, then 413 over its route's limit, before it is read (serving.limits).
    app.add_middleware(BodyLimits, max_body_bytes=cfg.api_max_body_bytes,
                       limits={"/v1/score/fraud": cfg.max_body_bytes, LIST_IMPORT_PATH: cfg.list_import_max_body_bytes})
    # Every request gets an id (X-Request-ID or a new one): on its log lines, in its response header.
    app.add_middleware(RequestIdMiddleware)
    # Outermost, outside even Starlette's error middleware (whose per-send wrapper alone cost a tenth
    # of a worker's Python time under load): valid fraud scoring requests are answered before any of
    # the above (serving.fastpath); the rest go on to the route, whose errors stay FastAPI's.
    build_stack = app.build_middleware_stack

    def build_with_fast_path() -> Any:
        return ScoreFastPath(build_stack(), path="/v1/score/fraud", model=FraudScoreRequest, action="score",
                             max_body_bytes=cfg.max_body_bytes, handler=decide_fraud)

    app.build_middleware_stack = build_with_fast_path  # type: ignore[method-assign]
    app.include_router(webhooks_router(settings))  # POST /webhooks/{stripe,standard}
    app.state.keys = keys
    app.include_router(decisions_router)
    app.include_router(policy_router)  # /v1/policy (serving.policy_api)
    app.include_router(review_router)  # GET /review, /review/api/* (serving.review)
    app.include_router(cases_router)  # /v1/cases (serving.cases_api)
    app.include_router(cases_page_router)  # GET /cases

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, minus the echoed ``input``: a body with a card number is never sent back
        (nor logged by a proxy) in clear."""
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)
    app.include_router(credit.router)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness only: the process answers. Dependencies belong to /readyz."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request) -> JSONResponse:
        st = request.app.state
        checks: dict[str, Any] = {"model": st.model is not None, "writer": st.writer.alive}
        try:
            with _connect(st.settings) as conn:
                checks["schema"] = migrations.pending_on(conn, st.settings) is None
            checks["database"] = True
        except psycopg.Error:
            checks["database"] = False
        ready = all(checks.values())
        # Informational: a down feature store degrades decisions, it does not make us unready.
        checks["feature_store"] = st.online.ensure()
        checks["decision_log_queue"] = st.writer.depth()
        checks["decision_log_error"] = st.writer.last_error  # set while decisions are refused 503
        # Rows set aside since this process started (the table has them all; the tripwire pages on them).
        checks["decision_log_dead_letters"] = st.writer.dead_lettered
        # Informational: false only when RISKLOOP_ALLOW_UNSEALED_PERSONAL_FIELDS let serving start without a master key.
        checks["personal_fields_sealed"] = st.subject_keys is not None
        checks["online_cache"] = st.online.cache_stats()
        checks["model_source"] = st.model.source if st.model is not None else None
        # Models the registry points at but serving refused (no promotion decision for their bytes,
        # no running canary, an unsafe artifact): why, and which version serves instead.
        checks["refused_models"] = list(st.refused.values())
        checks["worker_pid"] = os.getpid()  # which of several workers answered
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/v1/model", response_model=LoadedModelInfo, dependencies=[Depends(require("read_model"))])
    def model_info(request: Request) -> LoadedModelInfo:
        return _model_info(request.app)

    @app.post("/v1/admin/reload", response_model=LoadedModelInfo, dependencies=[Depends(require("admin"))])
    def reload_model(request: Request) -> LoadedModelInfo:
        """Re-resolve the alias; the old model keeps serving until the new one is fully loaded."""
        st = request.app.state
        try:
            new = _load_and_check(st.settings, st.cfg, st.online)
        except Exception as exc:  # noqa: BLE001 - report, keep serving the previous model
            if isinstance(exc, ModelRefused):
                refused(st, "fraud:champion", exc, st.model)
            st.model_error = describe(exc)
            log.error("reload failed, still serving the previous model: %s", st.model_error)
            raise HTTPException(status_code=503, detail={"error": st.model_error,
                                                         "serving": _model_info(request.app).model_dump(mode="json")})
        cleared(st, "fraud:champion")
        _swap(st, new)
        return _model_info(request.app)

    @app.get("/v1/canary", dependencies=[Depends(require("read_model"))])
    def canary_info(request: Request) -> dict[str, Any]:
        """The routing this process applies now, per product: mode, share, the canary and the loaded challenger
        (the fraud model's at the top level, the credit model's under ``credit``)."""
        st = request.app.state

        def lane(name: str) -> dict[str, Any]:
            ln = st.lanes[name]
            leader = ln.watch_lock_conn is not None and ln.watch_lock_conn is st.poll_conn
            return {**ln.describe(), "tripwire_watcher": leader}

        return {**lane("fraud"), "credit": lane("credit")}

    @app.post("/v1/score/fraud", response_model=FraudScoreResponse, dependencies=[Depends(require("score"))])
    async def score_fraud(body: FraudScoreRequest, request: Request,
                          x_request_id: str | None = Header(default=None)) -> Response:
        """Documents the endpoint (OpenAPI) and answers what :class:`ScoreFastPath` hands over:
        requests it does not answer itself (bad key, invalid body: the errors are FastAPI's)."""
        return Response(await decide_fraud(request.app.state, body, x_request_id or uuid.uuid4().hex),
                        media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        m: _Metrics | None = request.app.state.metrics
        if m is None:
            raise HTTPException(status_code=404, detail="prometheus_client not installed")
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def create_worker_app() -> FastAPI:
    """The app of one of several uvicorn workers (each a fresh process): riskloop's logging
    configured in it, then :func:`create_app` from the environment."""
    from riskloop.core.logs import configure

    configure(get_settings())
    return create_app()


def _multiproc_dir(settings: Settings, port: int) -> Path:
    """A fresh prometheus_client multiprocess directory for one server: the files of an earlier
    run would add its counts to this one's."""
    import shutil

    path = settings.run_dir / f"prometheus-serve-{port}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _uvicorn_text_logging() -> dict[str, Any]:
    """uvicorn's own text logging config with riskloop's redaction on each of its handlers (its loggers
    do not propagate to riskloop's handler, which redacts everything else)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": "riskloop.core.redact.RedactingFilter"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact"]
    return config


def run(host: str = "127.0.0.1", port: int = 8000, workers: int | None = None) -> None:
    """Serve with uvicorn: ``workers`` processes (default ``RISKLOOP_SERVING_WORKERS``; unset, one per core).

    Each worker has its own model, online-read pool and decision-log writer; what must agree
    across them is shared through Postgres (known devices, the canary watcher's lock) and, for
    ``/metrics``, prometheus_client's multiprocess directory, which this sets before any worker
    starts. riskloop's logging config (:func:`riskloop.core.logs.configure`) owns the output; with
    ``RISKLOOP_LOG_JSON`` uvicorn's own loggers propagate to it instead of printing text.
    uvloop + httptools (C event loop and HTTP parser) and no access log unless
    RISKLOOP_SERVING_ACCESS_LOG=1: the hot path's share of a request (docs/benchmarks/history.md, "Serving")."""
    import uvicorn

    from riskloop.core.logs import configure

    settings = get_settings()
    cfg = ServingSettings()
    workers = workers or cfg.worker_count(database_here=settings.embedded)
    configure(settings)
    kwargs: dict[str, Any] = {"log_config": None if settings.log_json else _uvicorn_text_logging()}
    factory = "serving.app:create_app"
    if workers > 1:
        metrics_dir = str(_multiproc_dir(settings, port))  # both read by the workers
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["RISKLOOP_SERVING_METRICS_DIR"] = metrics_dir
        factory, kwargs["workers"] = "serving.app:create_worker_app", workers
    log.info("serving on %s:%d with %d worker(s)", host, port, workers)
    uvicorn.run(factory, factory=True, host=host, port=port, loop="uvloop", http="httptools",
                access_log=cfg.access_log, **kwargs)
