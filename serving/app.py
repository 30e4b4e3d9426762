"""The fraud scoring service: ``create_app(settings) -> FastAPI``.

Nothing heavy happens at import: the model is fetched from the MLflow registry, the Feast store
built and the decision-log table ensured in the lifespan, and all of it lives on ``app.state``
(no module globals), so tests and several apps in one process never share state.

Scoring is a plain ``def`` handler on purpose: the Feast online read and XGBoost are blocking
calls, and Starlette runs sync handlers in its thread pool instead of stalling the event loop.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from riskloop.config import Settings, get_settings
from riskloop.db import dsn
from serving import decision_log
from serving.config import ServingSettings
from serving.decision_log import DecisionLogWriter, LogBackpressure
from serving.model import LoadedModel, ModelLoadError, load_model
from serving.online import FeatureMismatch, FeatureStoreUnavailable, OnlineFeatures, plan_inputs
from serving.reasons import top_reasons
from serving.schemas import (
    DecisionRecord,
    FraudScoreRequest,
    FraudScoreResponse,
    LoadedModelInfo,
    ModelInfo,
)
from serving.webhooks import build_router as webhooks_router

log = logging.getLogger(__name__)

RULE_HARD_AMOUNT_LIMIT = "HARD_AMOUNT_LIMIT"
RULE_DEGRADED_AMOUNT_REVIEW = "DEGRADED_AMOUNT_REVIEW"


class _Metrics:
    """Prometheus metrics on a per-app registry (no process-global default registry)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.decisions = Counter("riskloop_fraud_decisions", "Fraud decisions returned.",
                                 ["decision", "degraded"], registry=self.registry)
        self.latency = Histogram("riskloop_fraud_score_latency_seconds", "Scoring time, request to decision.",
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
                                 registry=self.registry)
        self.feature_store_errors = Counter("riskloop_feature_store_errors", "Online reads that failed.",
                                            registry=self.registry)
        self.log_written = Counter("riskloop_decision_log_rows_written", "Decision-log rows committed.",
                                   registry=self.registry)
        self.log_errors = Counter("riskloop_decision_log_write_errors", "Failed decision-log batch inserts.",
                                  registry=self.registry)
        self.queue_depth = Gauge("riskloop_decision_log_queue_depth", "Decisions waiting for the writer.",
                                 registry=self.registry)


def _make_metrics() -> _Metrics | None:
    try:
        return _Metrics()
    except ImportError:  # prometheus_client is only a transitive dependency today
        log.warning("prometheus_client not installed: /metrics disabled")
        return None


def _default_feature_store_factory(settings: Settings) -> Callable[[], Any]:
    def factory() -> Any:
        from riskloop.features import feature_store

        return feature_store(settings)

    return factory


def _load_and_check(settings: Settings, cfg: ServingSettings, online: OnlineFeatures) -> LoadedModel:
    """Load the alias and, if the store is up, prove every model input has a source before serving it."""
    model = load_model(settings.tracking_uri, settings.fraud_model_name, cfg.model_alias)
    if online.ensure():
        try:
            plan_inputs(model.features, online.offered)
        except FeatureMismatch as exc:
            raise ModelLoadError(f"{model.name} v{model.version}: {exc}") from exc
    return model


def _model_info(app: FastAPI) -> LoadedModelInfo:
    st = app.state
    m: LoadedModel | None = st.model
    if m is None:
        return LoadedModelInfo(loaded=False, name=st.settings.fraud_model_name, alias=st.cfg.model_alias,
                               error=st.model_error)
    return LoadedModelInfo(loaded=True, name=m.name, alias=m.alias, version=m.version, run_id=m.run_id,
                           features=list(m.features), loaded_at=m.loaded_at, error=st.model_error)


def _connect(settings: Settings) -> psycopg.Connection:
    return psycopg.connect(dsn(settings), connect_timeout=3, autocommit=True)


def create_app(settings: Settings | None = None, serving_settings: ServingSettings | None = None, *,
               feature_store_factory: Callable[[], Any] | None = None) -> FastAPI:
    """Build the app. ``feature_store_factory`` replaces ``riskloop.features.feature_store(settings)``
    (tests use it to point the store somewhere broken); everything else comes from settings."""
    settings = settings or get_settings()
    cfg = serving_settings or ServingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st = app.state
        st.settings, st.cfg = settings, cfg
        st.metrics = _make_metrics()
        st.online = OnlineFeatures(feature_store_factory or _default_feature_store_factory(settings),
                                   cfg.feature_service, retry_s=cfg.feature_store_retry_s)
        st.model, st.model_error = None, None
        try:
            with _connect(settings) as conn:
                decision_log.ensure_table(conn)
        except psycopg.Error as exc:  # the writer retries it on connect; /readyz says 503 meanwhile
            log.error("could not ensure %s at startup: %s", decision_log.TABLE, exc)
        m = st.metrics
        st.writer = DecisionLogWriter(
            dsn(settings), maxsize=cfg.log_queue_size, batch_size=cfg.log_batch_size,
            enqueue_timeout_s=cfg.log_enqueue_timeout_s,
            spill_path=settings.run_dir / "decision_log_spill.jsonl",
            on_written=m.log_written.inc if m else None, on_error=m.log_errors.inc if m else None)
        if m:
            m.queue_depth.set_function(st.writer.depth)
        st.writer.start()
        st.online.ensure(force=True)
        try:
            st.model = _load_and_check(settings, cfg, st.online)
        except Exception as exc:  # noqa: BLE001 - start anyway: rules-only + /readyz 503 until a reload
            st.model_error = f"{type(exc).__name__}: {exc}"
            log.error("no model served: %s", st.model_error)
        try:
            yield
        finally:
            st.writer.close(cfg.log_shutdown_timeout_s)

    app = FastAPI(title="riskloop scoring", version="0.1.0", lifespan=lifespan)
    app.include_router(webhooks_router(settings))  # POST /webhooks/{stripe,standard}

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
                conn.execute("select 1")
            checks["database"] = True
        except psycopg.Error:
            checks["database"] = False
        ready = all(checks.values())
        # Informational: a down feature store degrades decisions, it does not make us unready.
        checks["feature_store"] = st.online.ensure()
        checks["decision_log_queue"] = st.writer.depth()
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/v1/model", response_model=LoadedModelInfo)
    def model_info(request: Request) -> LoadedModelInfo:
        return _model_info(request.app)

    @app.post("/v1/admin/reload", response_model=LoadedModelInfo)
    def reload_model(request: Request, authorization: str | None = Header(default=None)) -> LoadedModelInfo:
        """Re-resolve the alias; the old model keeps serving until the new one is fully loaded."""
        st = request.app.state
        if st.cfg.admin_token and authorization != f"Bearer {st.cfg.admin_token}":
            raise HTTPException(status_code=401, detail="admin token required")
        try:
            new = _load_and_check(st.settings, st.cfg, st.online)
        except Exception as exc:  # noqa: BLE001 - report, keep serving the previous model
            st.model_error = f"{type(exc).__name__}: {exc}"
            log.error("reload failed, still serving the previous model: %s", st.model_error)
            raise HTTPException(status_code=503, detail={"error": st.model_error,
                                                         "serving": _model_info(request.app).model_dump(mode="json")})
        old, st.model, st.model_error = st.model, new, None
        log.info("reloaded %s: v%s -> v%s", new.name, old.version if old else None, new.version)
        return _model_info(request.app)

    @app.post("/v1/score/fraud", response_model=FraudScoreResponse)
    def score_fraud(body: FraudScoreRequest, request: Request, response: Response,
                    x_request_id: str | None = Header(default=None)) -> FraudScoreResponse:
        t0 = time.perf_counter()
        st = request.app.state
        cfg: ServingSettings = st.cfg
        model: LoadedModel | None = st.model  # one read: a concurrent reload cannot mix versions
        request_id = x_request_id or uuid.uuid4().hex
        decided_at = datetime.now(UTC)

        ts = body.timestamp.astimezone(UTC)  # the marts derive these flags in UTC too
        request_time = {"amount": body.amount_minor / 100.0,
                        "is_weekend": 1.0 if ts.weekday() >= 5 else 0.0,
                        "is_night": 1.0 if ts.hour <= 6 else 0.0}
        rules: list[str] = []
        if body.amount_minor > cfg.hard_amount_limit_minor:
            rules.append(RULE_HARD_AMOUNT_LIMIT)

        score: float | None = None
        reasons: list[dict] = []
        features: dict[str, float | None] = {}
        stamps: dict[str, str | None] = {}
        degraded = model is None
        if model is not None:
            try:
                if not st.online.ensure():
                    raise FeatureStoreUnavailable(st.online.last_error or "feature store not available")
                inputs = plan_inputs(model.features, st.online.offered)
                values, stamps = st.online.fetch(inputs, body.customer_id, body.terminal_id)
            except (FeatureStoreUnavailable, FeatureMismatch) as exc:
                degraded = True
                stamps = {}
                if st.metrics:
                    st.metrics.feature_store_errors.inc()
                log.warning("degraded decision for request %s: %s", request_id, exc)
            else:
                vector = [request_time[n] if n in request_time else values[n] for n in model.features]
                x = np.asarray([vector], dtype=np.float64)
                score, contribs = model.predict(x)
                reasons = top_reasons(list(model.features), x[0], contribs, cfg.max_reasons)
                features = {n: (None if math.isnan(v) else v) for n, v in zip(model.features, vector, strict=True)}

        if RULE_HARD_AMOUNT_LIMIT in rules:
            decision = "deny"
        elif degraded:
            if body.amount_minor > cfg.degraded_review_limit_minor:
                rules.append(RULE_DEGRADED_AMOUNT_REVIEW)
                decision = "review"
            else:
                decision = "allow"
        else:
            assert score is not None
            decision = ("deny" if score >= cfg.deny_threshold
                        else "review" if score >= cfg.review_threshold else "allow")

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
            "request": body.model_dump(mode="json"), "latency_ms": latency_ms, "degraded": degraded,
        }
        try:
            st.writer.submit(row)
        except LogBackpressure as exc:
            # A decision that cannot be recorded is not given: the log is the audit trail.
            log.error("refusing request %s: %s", request_id, exc)
            raise HTTPException(status_code=503, detail="decision log backlog, retry",
                                headers={"Retry-After": "1"}) from exc
        if st.metrics:
            st.metrics.decisions.labels(decision=decision, degraded=str(degraded).lower()).inc()
            st.metrics.latency.observe(latency_ms / 1000.0)
        response.headers["X-Request-ID"] = request_id
        return FraudScoreResponse(
            decision_id=decision_id, decision=decision, score=score,
            model=ModelInfo(name=model_name, version=model_version, alias=model_alias),
            reasons=reasons, rules=rules, degraded=degraded)

    @app.get("/v1/decisions/{decision_id}", response_model=DecisionRecord)
    def get_decision(decision_id: UUID, request: Request) -> DecisionRecord:
        st = request.app.state
        queued = st.writer.pending(str(decision_id))
        if queued is not None:
            return DecisionRecord(**queued, persisted=False)
        try:
            with _connect(st.settings) as conn:
                row = decision_log.fetch(conn, str(decision_id))
        except psycopg.Error as exc:
            raise HTTPException(status_code=503, detail="decision log unreachable") from exc
        if row is None:
            raise HTTPException(status_code=404, detail=f"no decision {decision_id}")
        return DecisionRecord(**row, persisted=True)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        m: _Metrics | None = request.app.state.metrics
        if m is None:
            raise HTTPException(status_code=404, detail="prometheus_client not installed")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def run(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve with uvicorn (one worker: the model and the log writer are per process)."""
    import uvicorn

    uvicorn.run("serving.app:create_app", factory=True, host=host, port=port)
