"""The scoring service against the real stack: Postgres warehouse + Feast online store + MLflow.

Set-up is real end to end: synthetic marts (tests/fixtures_marts.py) in a warehouse of this
module's own → ``riskloop.features.store.apply`` + materialize → ``training.train.train_fraud``
registers the model with alias ``champion`` → ``serving.app.create_app`` under FastAPI's
TestClient (which runs the lifespan: model download, Feast store, decision-log writer).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from principals import TRAINER, principal

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.core.subject_keys import reveal

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

CUSTOMER_FEATURES = [f"customer_{kind}_{w}" for kind in ("nb_tx", "avg_amount") for w in ("1d", "7d", "30d")]
TERMINAL_FEATURES = [f"terminal_{kind}_{w}" for kind in ("nb_tx", "risk") for w in ("1d", "7d", "30d")]
REQUEST_FEATURES = ["amount", "is_weekend", "is_night"]
AMOUNT_FEATURES = ["amount_vs_customer_avg_30d", "amount_vs_customer_avg_7d", "amount_vs_customer_max_30d",
                   "amount_vs_customer_zscore_30d"]  # the on-demand view customer_amount_ratios
DECISIONS = {"allow", "review", "step_up", "deny"}
# Admin may score, read decisions and reload: one key for the fixtures; roles are tested in test_serving_auth.
ADMIN_KEY = "test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


# --- the whole set-up ------------------------------------------------------------------------

class Stack:
    """What the tests need to know about the set-up."""

    def __init__(self, settings: Settings, marts: Any, model_version: str, features: list[str]) -> None:
        self.settings = settings
        self.marts = marts
        self.model_version = model_version
        self.features = features

    def store(self):
        from riskloop.features.store import feature_store

        return feature_store(self.settings)

    def broken_store(self):
        """The same repo pointed at a port nothing listens on (the feature store's server is down)."""
        from conftest import free_port

        from riskloop.features.store import feature_store

        pg = self.settings.pg
        down = type(pg)(host=pg.host, port=free_port(), user=pg.user, password=pg.password)
        return feature_store(self.settings.model_copy(update={"database_url": down.url(self.settings.warehouse_db,
                                                                                        driver="")}))


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str]) -> Iterator[Stack]:
    from fixtures_marts import isolated_settings, make_marts, write_marts

    from riskloop.features import store as features
    from training.train import train_fraud

    base = isolated_settings("riskloop_t_serving")
    # A model name of our own: other modules of the session register riskloop-fraud versions too.
    settings = base.model_copy(update={"fraud_model_name": f"test-serving-fraud-{uuid.uuid4().hex[:8]}"})
    marts = make_marts(days=30, customers=60, terminals=30, seed=5)
    write_marts(settings, marts)
    features.apply(settings)
    # The full range (start=), not incremental: the Feast registry and online store are shared by
    # the session, another module may already have materialized a later end.
    features.materialize(settings, marts.as_of.to_pydatetime(), start=(marts.as_of - timedelta(days=60)).to_pydatetime())
    result = train_fraud(settings, {"n_estimators": 40})
    assert "champion" in result.aliases
    yield Stack(settings, marts, result.version, list(result.features))


@pytest.fixture()
def app_factory(stack: Stack) -> Callable[..., Any]:
    from serving.app import create_app
    from serving.config import ServingSettings

    def make(store_factory: Callable[[], Any] | None = None, **cfg: Any):
        cfg.setdefault("api_keys", f"{ADMIN_KEY}:admin")
        cfg.setdefault("model_poll_s", 0)  # alias moves are picked up by /v1/admin/reload, except where tested
        return create_app(stack.settings, ServingSettings(**cfg), feature_store_factory=store_factory)

    return make


@pytest.fixture()
def client(app_factory) -> Iterator[TestClient]:
    with TestClient(app_factory(), headers=AUTH) as c:
        yield c


def _request(stack: Stack, **overrides: Any) -> dict[str, Any]:
    tx = stack.marts.fct_transactions.iloc[-1]
    body = {"transaction_id": "tx-1", "card_token": "tok_abc", "customer_id": tx.customer_id,
            "terminal_id": tx.terminal_id, "amount_minor": 12_345, "currency": "EUR",
            "timestamp": "2024-03-30T02:15:00+00:00"}  # a Saturday night
    body.update(overrides)
    return body


def _log_rows(settings: Settings, where: str = "true", params: tuple = ()) -> list[dict[str, Any]]:
    with psycopg.connect(dsn(settings)) as conn:
        cur = conn.execute(f"select * from serving.decision_log where {where}", params)
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for row, request in zip(rows, reveal(conn, [r["request"] for r in rows], settings), strict=True):
            row["request"] = request  # personal fields are stored sealed
        return rows


def _wait_logged(settings: Settings, decision_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _log_rows(settings, "decision_id = %s", (decision_id,))
        if rows:
            return rows[0]
        time.sleep(0.05)
    raise AssertionError(f"decision {decision_id} not in serving.decision_log after {timeout}s")


# --- tests -------------------------------------------------------------------------------------

def test_score_contract(client: TestClient, stack: Stack) -> None:
    r = client.post("/v1/score/fraud", json=_request(stack), headers={"X-Request-ID": "req-contract"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"decision_id", "decision", "score", "model", "reasons", "rules", "degraded",
                         "policy_version"}
    assert body["policy_version"] == "fraud-v2"
    assert body["decision"] in DECISIONS
    assert isinstance(body["score"], float) and 0.0 <= body["score"] <= 1.0
    assert body["model"] == {"name": stack.settings.fraud_model_name, "version": stack.model_version,
                             "alias": "champion"}
    assert body["degraded"] is False
    assert isinstance(body["rules"], list)
    reasons = body["reasons"]
    assert len(reasons) <= 4
    for reason in reasons:
        assert set(reason) == {"code", "feature", "value", "contribution"}
        assert reason["code"].startswith("R") and reason["feature"] in stack.features
        assert reason["contribution"] > 0
    contribs = [x["contribution"] for x in reasons]
    assert contribs == sorted(contribs, reverse=True)
    assert r.headers["X-Request-ID"] == "req-contract"


def test_decision_logged_with_exact_vector(client: TestClient, stack: Stack) -> None:
    import mlflow
    import xgboost as xgb
    from mlflow import MlflowClient

    req = _request(stack)
    body = client.post("/v1/score/fraud", json=req).json()
    row = _wait_logged(stack.settings, body["decision_id"])
    assert row["decision"] == body["decision"] and row["degraded"] is False
    assert row["model_name"] == stack.settings.fraud_model_name and row["model_version"] == stack.model_version
    assert row["model_alias"] == "champion"
    assert row["score"] == pytest.approx(body["score"], abs=1e-12)
    assert row["reasons"] == body["reasons"] and row["rules"] == body["rules"]
    assert row["request"]["customer_id"] == req["customer_id"] and row["request"]["amount_minor"] == 12_345
    assert row["latency_ms"] > 0
    # The vector: every model input, in the model's order, request-time values computed from the body…
    assert set(row["features"]) == set(stack.features)  # jsonb keeps no key order; the model's is its param
    assert row["features"]["amount"] == 123.45
    assert row["features"]["is_weekend"] == 1.0 and row["features"]["is_night"] == 1.0
    # …and the store values exactly what Feast serves online for these entities.
    online = stack.store().get_online_features(
        features=stack.store().get_feature_service("fraud_model_v1"),
        entity_rows=[{"customer_id": req["customer_id"], "terminal_id": req["terminal_id"],
                      "card_token": req["card_token"], "amount": 123.45}]
    ).to_dict()
    for name in CUSTOMER_FEATURES + TERMINAL_FEATURES:
        assert row["features"][name] == pytest.approx(float(online[name][0])), name
    # The amount-to-history ratios: serving's own computation equals Feast's on-demand view online.
    assert set(AMOUNT_FEATURES) <= set(stack.features)
    for name in AMOUNT_FEATURES:
        assert row["features"][name] == pytest.approx(float(online[name][0]), rel=1e-12), name
    # every stored view read has its event time logged; the card never paid live: no real-time row
    assert set(row["feature_timestamps"]) == {"customer_spending", "terminal_risk", "card_realtime", "customer_realtime"}
    assert row["feature_timestamps"]["card_realtime"] is None and row["feature_timestamps"]["terminal_risk"]
    # Re-scoring the logged vector with the registered model reproduces the logged score.
    uri = MlflowClient(stack.settings.tracking_uri, stack.settings.tracking_uri).get_model_version_download_uri(
        stack.settings.fraud_model_name, stack.model_version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=stack.settings.tracking_uri)
    model = next(f for f in __import__("pathlib").Path(local).iterdir() if f.name.startswith("model."))
    booster = xgb.Booster(model_file=str(model))
    x = np.array([[np.nan if row["features"][n] is None else row["features"][n] for n in stack.features]])
    assert float(booster.inplace_predict(x)[0]) == pytest.approx(row["score"], rel=1e-6)
    # GET /v1/decisions/{id} returns the logged row.
    got = client.get(f"/v1/decisions/{body['decision_id']}")
    assert got.status_code == 200 and got.json()["features"] == row["features"] and got.json()["persisted"]


def test_decision_log_is_append_only(client: TestClient, stack: Stack) -> None:
    body = client.post("/v1/score/fraud", json=_request(stack)).json()
    _wait_logged(stack.settings, body["decision_id"])
    for stmt in ("update serving.decision_log set decision = 'allow' where decision_id = %s",
                 "delete from serving.decision_log where decision_id = %s"):
        with psycopg.connect(dsn(stack.settings)) as conn:
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute(stmt, (body["decision_id"],))
    with psycopg.connect(dsn(stack.settings)) as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute("truncate serving.decision_log cascade")  # cascade: past the overrides FK, to the trigger
    assert len(_log_rows(stack.settings, "decision_id = %s", (body["decision_id"],))) == 1


def test_analyze_of_the_log_skips_its_json_columns(client: TestClient, stack: Stack) -> None:
    """Autoanalyze of a growing log must not read its JSON (the cost that stalled serving): after
    an ANALYZE the planner has statistics on the key and time columns and none on the JSON ones."""
    from serving.decision_log import JSON_COLUMNS

    body = client.post("/v1/score/fraud", json=_request(stack)).json()
    _wait_logged(stack.settings, body["decision_id"])
    with psycopg.connect(dsn(stack.settings), autocommit=True) as conn:
        conn.execute("analyze serving.decision_log")
        analysed = {r[0] for r in conn.execute("select attname from pg_stats where schemaname = 'serving' "
                                               "and tablename = 'decision_log'")}
    assert {"decision_id", "decided_at", "model_name", "decision"} <= analysed
    assert not analysed & JSON_COLUMNS, analysed & JSON_COLUMNS


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda b: b.pop("customer_id"), "customer_id"),
    (lambda b: b.update(amount_minor=-5), "amount_minor"),
    (lambda b: b.update(amount_minor=0), "amount_minor"),
    (lambda b: b.update(amount_minor="100"), "amount_minor"),
    (lambda b: b.update(currency="ZZZ"), "currency"),
    (lambda b: b.update(currency="eur"), "currency"),
    (lambda b: b.update(timestamp="2024-03-30T02:15:00"), "timestamp"),  # naive: ambiguous
    (lambda b: b.update(timestamp="yesterday"), "timestamp"),
])
def test_malformed_input_is_422_and_not_logged(client: TestClient, stack: Stack, mutate, field: str) -> None:
    before = len(_log_rows(stack.settings))
    body = _request(stack)
    mutate(body)
    r = client.post("/v1/score/fraud", json=body)
    assert r.status_code == 422, r.text
    assert any(err["loc"][-1] == field for err in r.json()["detail"]), r.json()
    assert client.app.state.writer.depth() == 0
    assert len(_log_rows(stack.settings)) == before


def test_bad_json_is_422(client: TestClient, stack: Stack) -> None:
    before = len(_log_rows(stack.settings))
    r = client.post("/v1/score/fraud", content=b'{"customer_id": ', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"
    assert len(_log_rows(stack.settings)) == before


def test_oversized_or_non_json_body(client: TestClient, stack: Stack) -> None:
    """The fast path refuses a flood before parsing it (413) and hands a body that is not JSON to
    the route, whose answer it was before (422); neither is decided or logged."""
    before = len(_log_rows(stack.settings))
    huge = {**_request(stack), "padding": "x" * 70_000}
    r = client.post("/v1/score/fraud", json=huge, headers={"X-Request-ID": "req-huge"})
    assert r.status_code == 413 and "bytes" in r.json()["detail"] and r.headers["x-request-id"] == "req-huge"
    r = client.post("/v1/score/fraud", content=b"customer_id=C1", headers={"content-type": "text/plain"})
    assert r.status_code == 422, r.text
    assert client.app.state.writer.depth() == 0
    assert len(_log_rows(stack.settings)) == before


def test_unknown_customer_scores_with_missing_features(client: TestClient, stack: Stack) -> None:
    body = client.post("/v1/score/fraud", json=_request(stack, customer_id="C-never-seen",
                                                        terminal_id="T-never-seen")).json()
    assert body["degraded"] is False and body["decision"] in DECISIONS
    row = _wait_logged(stack.settings, body["decision_id"])
    assert all(row["features"][n] is None for n in CUSTOMER_FEATURES + TERMINAL_FEATURES)
    assert row["features"]["amount"] == 123.45


@pytest.mark.parametrize(("currency", "major"), [("JPY", 12_345.0), ("KWD", 12.345), ("USD", 123.45)])
def test_amount_reaches_the_model_in_major_units_of_its_currency(client: TestClient, stack: Stack,
                                                                 currency: str, major: float) -> None:
    """The marts convert minor units with each currency's ISO 4217 exponent (dbt's minor_to_major),
    so serving must too: a yen amount divided by 100 would be a 100x-off model input and ratio."""
    body = client.post("/v1/score/fraud", json=_request(stack, currency=currency)).json()
    assert body["decision"] in DECISIONS
    features = _wait_logged(stack.settings, body["decision_id"])["features"]
    assert features["amount"] == pytest.approx(major)
    assert features["customer_avg_amount_30d"] is not None  # a known customer: the ratio is computed
    assert features["amount_vs_customer_avg_30d"] == pytest.approx(major / (features["customer_avg_amount_30d"] + 1))


def test_hard_amount_limit_denies(client: TestClient, stack: Stack) -> None:
    body = client.post("/v1/score/fraud", json=_request(stack, amount_minor=5_000_000)).json()
    assert body["decision"] == "deny" and "HARD_AMOUNT_LIMIT" in body["rules"]


def test_degraded_when_feature_store_unreachable(app_factory, stack: Stack) -> None:
    with TestClient(app_factory(store_factory=stack.broken_store), headers=AUTH) as c:
        r = c.post("/v1/score/fraud", json=_request(stack))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["degraded"] is True and body["score"] is None and body["reasons"] == []
        assert body["decision"] == "allow"  # 123.45 is under the rules-only review limit
        big = c.post("/v1/score/fraud", json=_request(stack, amount_minor=90_000)).json()
        assert big["degraded"] is True and big["decision"] == "review"
        assert big["rules"] == ["DEGRADED_AMOUNT_REVIEW"]
        assert c.get("/readyz").json()["checks"]["feature_store"] is False
    row = _wait_logged(stack.settings, body["decision_id"], timeout=1)  # flushed on shutdown
    assert row["degraded"] is True and row["score"] is None and row["features"] == {}


class _FailingReads:
    """A real store whose online reads fail (its database went away after startup)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_online_features(self, *a: Any, **k: Any) -> Any:
        raise psycopg.OperationalError("connection refused")


def test_degraded_when_online_read_fails(app_factory, stack: Stack) -> None:
    # online_read=sdk: the failure is injected into the SDK's read (the direct read: next tests).
    with TestClient(app_factory(store_factory=lambda: _FailingReads(stack.store()), online_read="sdk"),
                    headers=AUTH) as c:
        body = c.post("/v1/score/fraud", json=_request(stack)).json()
    assert body["degraded"] is True and body["model"]["version"] == stack.model_version


def test_recovers_when_feature_store_comes_back(app_factory, stack: Stack) -> None:
    builds = []

    def factory() -> Any:
        builds.append(1)
        return _FailingReads(stack.store()) if len(builds) == 1 else stack.store()

    with TestClient(app_factory(store_factory=factory, feature_store_retry_s=0, online_read="sdk"),
                    headers=AUTH) as c:
        assert c.post("/v1/score/fraud", json=_request(stack)).json()["degraded"] is True
        assert c.post("/v1/score/fraud", json=_request(stack)).json()["degraded"] is False
    assert len(builds) == 2


def test_direct_read_matches_feast_sdk(stack: Stack) -> None:
    """The one-statement read returns exactly what Feast's own get_online_features returns."""
    import asyncio

    from serving.online import OnlineFeatures, plan_inputs

    tx = stack.marts.fct_transactions
    rows = [{"customer_id": c, "terminal_id": t, "card_token": k} for c, t, k in
            zip(tx.customer_id.unique()[:20], tx.terminal_id.unique()[:20], tx.card_token.unique()[:20], strict=False)]
    rows += [{"customer_id": "no-such-customer", "terminal_id": tx.terminal_id.iloc[0], "card_token": "no-such-card"},
             {"customer_id": tx.customer_id.iloc[0], "terminal_id": "no-such-terminal",
              "card_token": tx.card_token.iloc[0]}]
    amounts = [{"amount": 5.0 + 11.0 * i} for i in range(len(rows))]  # the on-demand inputs read it
    sdk = OnlineFeatures(stack.store, "fraud_model_v1", read="sdk")
    sql = OnlineFeatures(stack.store, "fraud_model_v1", read="sql", timeout_s=5.0)
    assert sdk.ensure() and sql.ensure()
    inputs = plan_inputs(stack.features, sdk.offered)

    async def read_all() -> list:
        try:
            return [await sql.fetch_async(inputs, r, a) for r, a in zip(rows, amounts, strict=True)]
        finally:
            await sql.aclose()

    direct = asyncio.run(read_all())
    found = 0
    for r, a, (values, stamps) in zip(rows, amounts, direct, strict=True):
        ref_values, ref_stamps = sdk.fetch_row(inputs, r, a)
        assert stamps == ref_stamps, r
        assert values.keys() == ref_values.keys()
        for name, v in values.items():
            assert (np.isnan(v) and np.isnan(ref_values[name])) or v == ref_values[name], (r, name)
        found += sum(not np.isnan(v) for v in values.values())
    assert found > 0  # not a comparison of two empty reads


def test_online_reader_times_out_without_losing_its_connection(stack: Stack) -> None:
    """A read past the timeout raises at once, but its query is not cancelled: the connection
    comes back when the answer does and serves the next read (no reconnect per timeout); a read
    waiting for the one busy connection gets it when it is released, or opens a fresh one when
    it dies."""
    import asyncio
    import dataclasses

    from serving.online_sql import SqlReader, build_plan

    store = stack.store()
    plan = build_plan(store, store.get_feature_service("fraud_model_v1"))
    # The read itself, made slow on demand: the session's rl.sleep setting (seconds).
    # (No row: random() < 0 keeps the planner from skipping the sleep, as a constant false would.)
    plan = dataclasses.replace(plan, views=(), sql="select 0::int, ''::text, ''::bytea, null::timestamp "
                               "from pg_sleep(coalesce(nullif(current_setting('rl.sleep', true), ''), '0')::float8) "
                               "where random() < 0")
    reader = SqlReader(plan, timeout_s=0.2, max_size=1)

    async def scenario() -> None:
        await reader.connect()
        conn = reader._idle[0]
        await conn.execute("set rl.sleep = 0.6")
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await reader.read({})
        assert time.monotonic() - t0 < 0.5  # the request degrades at its timeout, not at the answer
        assert reader._idle == [] and not conn.is_closed()  # still running its query
        with pytest.raises(TimeoutError):  # the only connection is busy: waits, then gives up
            await reader.read({})
        await asyncio.sleep(0.6)
        assert reader._idle == [conn] and not conn.is_closed()  # back, the same connection
        await conn.execute("set rl.sleep = 0")
        assert await reader.read({}) == {}
        assert reader._idle == [conn] and reader._opened == 1

        await conn.execute("set rl.sleep = 0.1")
        first = asyncio.ensure_future(reader.read({}))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(reader.read({}))  # waits for the connection `first` holds
        assert await first == {} and await second == {}
        assert reader._idle == [conn] and reader._opened == 1

        # The one connection dies mid-read while another read waits: that read opens a fresh one.
        import asyncpg

        await conn.execute("set rl.sleep = 0.15")
        first = asyncio.ensure_future(reader.read({}))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(reader.read({}))
        admin = await asyncpg.connect(**plan.connect)
        await admin.execute("select pg_terminate_backend($1)", conn.get_server_pid())
        await admin.close()
        with pytest.raises(Exception):  # noqa: B017 - whatever asyncpg raises for a killed session
            await first
        assert await second == {}  # within its 0.2 s, on a new connection
        assert reader._opened == 1 and len(reader._idle) == 1 and reader._idle[0] is not conn
        fresh = reader._idle[0]
        await reader.close()
        assert fresh.is_closed()

    asyncio.run(scenario())


def test_online_cache_loads_views_whole_and_drops_what_the_store_changes(stack: Stack) -> None:
    """The direct read's cache (serving.online_cache): once on, each view is loaded whole, so a first
    read makes no round trip, and an entity the store has no row of is answered "no row" without one;
    a Feast write drops only the entities it wrote (the next read of those goes to the store and
    returns the new value; an entity that was absent and is written is read, not answered "no row"); a
    killed LISTEN session or a dropped trigger switches the cache off (reads still answered by the
    store) until the listener has re-connected, re-installed and loaded again."""
    import asyncio

    import asyncpg
    import pandas as pd

    from serving.online_sql import SqlReader, build_plan

    store = stack.store()
    plan = build_plan(store, store.get_feature_service("fraud_model_v1"))
    t_idx = next(i for i, v in enumerate(plan.views) if v.join_keys[0][0] == "terminal_id")
    feature = next(f for f in plan.views[t_idx].features if f.startswith("terminal_risk_"))
    column = f"{plan.views[t_idx].name}__{feature}"
    terminal = f"cache-test-{uuid.uuid4().hex[:8]}"  # entities of its own: the online store is shared
    later = f"cache-later-{uuid.uuid4().hex[:8]}"
    customer = str(stack.marts.fct_transactions.customer_id.iloc[0])
    row = {"customer_id": customer, "terminal_id": terminal, "card_token": "tok_cache_test"}
    row_later = {**row, "terminal_id": later}

    def write(value: float, who: str = terminal) -> None:
        data: dict[str, list[Any]] = {"terminal_id": [who], "event_timestamp": [pd.Timestamp.now(tz="UTC").floor("s")]}
        for f in plan.views[t_idx].features:  # every field of the view (counts are Int64)
            data[f] = [value] if f == feature else [1] if ("nb_tx" in f or "frauds" in f) else [0.0]
        store.write_to_online_store(plan.views[t_idx].name, pd.DataFrame(data))

    write(0.25)
    reader = SqlReader(plan, timeout_s=5.0, max_size=2, cache_size=100_000)
    cache = reader.cache
    assert cache is not None
    cache._verify_s, cache._settle_s = 0.2, 0.05

    async def until(cond, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)

    def loaded() -> bool:
        return cache.enabled and cache.stats()["loaded_whole"] == len(plan.views)

    async def scenario() -> None:
        await reader.connect()
        await until(loaded, "the views were never loaded whole")
        conn = reader._idle[0]
        first = await reader.read(row)
        assert first[column] == [0.25] and (cache.hits, cache.misses) == (1, 0)
        card_view = next(v for v in plan.views if v.join_keys[0][0] == "card_token")
        assert all(first[f"{card_view.name}__{f}"] == [None] for f in card_view.features)  # no row: no read
        assert await reader.read(row_later) is not None and (cache.hits, cache.misses) == (2, 0)
        assert reader._idle == [conn]  # no connection was taken for any of them

        entries = cache.stats()["entries"]
        await asyncio.to_thread(write, 0.75)  # Feast's own writer, in its own transaction
        await until(lambda: cache.invalidations >= 1, "the write was not notified")
        assert cache.stats()["entries"] == entries - 1  # that terminal only
        assert (await reader.read(row))[column] == [0.75] and cache.misses == 1
        assert (await reader.read(row))[column] == [0.75] and cache.hits == 3

        await asyncio.to_thread(write, 0.5, later)  # an entity that had no row has one now
        await until(lambda: cache.invalidations >= 2, "the new entity was not notified")
        assert (await reader.read(row_later))[column] == [0.5] and cache.misses == 2

        # The listener's session killed: off at once, empty, reads go to the store; back on later.
        admin = await asyncpg.connect(**plan.connect)
        try:
            await admin.execute("select pg_terminate_backend($1)", cache._conn.get_server_pid())
            await until(lambda: cache.stats()["entries"] == 0, "a lost listener left the cache's entries")
            hits = cache.hits
            assert (await reader.read(row))[column] == [0.75] and cache.hits == hits
            await until(loaded, "the listener did not come back")

            # A trigger gone (as after `feast apply` recreated a table): off, re-installed, on again.
            assert cache.stats()["entries"] > 0
            await admin.execute(f'drop trigger riskloop_online_changed on "{plan.tables[t_idx]}"')
            await until(lambda: cache.stats()["entries"] == 0, "a missing trigger left the cache's entries")
            await until(loaded, "the trigger was not re-installed")
            invalidations = cache.invalidations
            await asyncio.to_thread(write, 0.125)  # notified again: the trigger is really back
            await until(lambda: cache.invalidations > invalidations, "the re-installed trigger did not notify")
            assert (await reader.read(row))[column] == [0.125]
        finally:
            await admin.close()
            await reader.close()
        assert cache._conn is None and not cache.enabled

    asyncio.run(scenario())


def _two_view_plan() -> Any:
    """A plan of two string-keyed views, as build_plan makes one (no store needed to notify it)."""
    from feast.value_type import ValueType

    from serving.online_sql import SqlPlan, _View

    return SqlPlan(sql="", views=(_View("c", (("customer_id", ValueType.STRING),), ("f",)),
                                  _View("t", (("terminal_id", ValueType.STRING),), ("f",))),
                   key_version=3, connect={}, tables=("t_customer", "t_terminal"))


def _changed(table: str, join_key: str, value: str) -> str:
    """The payload the store's row trigger sends for that entity (riskloop.core.roles)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = serialize_entity_key(EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)]),
                               entity_key_serialization_version=3)
    return f"{table} {key.hex()}"


def test_online_cache_keeps_no_read_that_raced_a_change_and_evicts_least_recent() -> None:
    """A read whose query began before a change notification must not store what it fetched; a
    change drops only its entity; each view keeps at most max_entries, the least recently read out first."""
    from serving.online_cache import OnlineCache

    cache = OnlineCache(_two_view_plan(), max_entries=2, warm=False)
    cache.enabled = True  # as the listener sets it once LISTEN and the triggers hold
    entry = ((1.0, 10),)
    before = cache.epochs()
    cache._on_notify(None, 0, "riskloop_online_changed", _changed("t_terminal", "terminal_id", "t1"))  # while the read ran
    cache.put([("c1",), ("t1",)], [entry, entry], before)
    assert cache.get([("c1",), ("t1",)]) is None and cache.stats()["entries"] == 0
    cache._on_notify(None, 0, "riskloop_online_changed", "some_other_table")  # not ours: nothing dropped
    now = cache.epochs()
    for key in ("a", "b"):
        cache.put([(key,), (key,)], [entry, entry], now)
    cache._on_notify(None, 0, "riskloop_online_changed", _changed("t_terminal", "terminal_id", "b"))
    assert cache.get([("b",), ("b",)]) is None  # terminal b dropped
    assert cache.get([("a",), ("a",)]) == [entry, entry] and cache.stats()["entries"] == 3  # customer b kept
    now = cache.epochs()
    cache.put([("c",), ("c",)], [entry, entry], now)  # evicts customer "b", the least recent
    assert [("b",) in v for v in cache._views] == [False, False]
    assert cache.get([("a",), ("a",)]) is not None and cache.get([("c",), ("c",)]) is not None
    cache._on_notify(None, 0, "riskloop_online_changed", "t_customer")  # a TRUNCATE: the whole view
    assert cache.get([("a",), ("a",)]) is None and cache.stats()["entries"] == 2
    cache.enabled = False
    assert cache.get([("c",), ("c",)]) is None  # off: every read goes to the store


def test_online_cache_view_loaded_whole_answers_absent_entities_until_one_is_written() -> None:
    """A view loaded whole answers an entity it lacks with the store's "no row" entry; once the
    store notifies a write of that entity it is read through until a read stores it; trimming the
    view (more entities than max_entries) ends the "no row" answers."""
    from serving.online_cache import OnlineCache

    cache = OnlineCache(_two_view_plan(), max_entries=3, warm=False)
    cache.enabled = True
    entry, absent = ((1.0, 10),), ((None, 0),)
    cache._views = [{("c1",): entry}, {("t1",): entry}]
    cache._complete = [True, True]
    assert cache.get([("c1",), ("t9",)]) == [entry, absent]  # t9: no row in the store, no read
    cache._on_notify(None, 0, "riskloop_online_changed", _changed("t_terminal", "terminal_id", "t9"))
    assert cache.get([("c1",), ("t9",)]) is None  # written since: read it
    cache.put([("c1",), ("t9",)], [entry, entry], cache.epochs())
    assert cache.get([("c1",), ("t9",)]) == [entry, entry]
    cache.put([("c2",), ("t2",)], [entry, absent], cache.epochs())  # read through, still no row: not kept
    assert cache._views[1].keys() == {("t1",), ("t9",)}
    cache.put([("c3",), ("t3",)], [entry, entry], cache.epochs())
    cache.put([("c4",), ("t4",)], [entry, entry], cache.epochs())  # over max_entries: t1 out, no longer whole
    assert cache.get([("c4",), ("t1",)]) is None and cache._complete == [False, False]


def test_reason_codes_name_the_amount_ratios() -> None:
    """A ratio is its own reason (the amount is unusual *for this customer*), not the plain amount's."""
    from serving.reasons import reason_code, top_reasons

    assert {reason_code(n) for n in AMOUNT_FEATURES} == {"R08_AMOUNT_UNUSUAL_FOR_CUSTOMER"}
    assert reason_code("customer_amount_ratios__amount_vs_customer_max_30d") == "R08_AMOUNT_UNUSUAL_FOR_CUSTOMER"
    assert reason_code("amount") == "R05_TRANSACTION_AMOUNT"
    got = top_reasons(["amount", "amount_vs_customer_avg_30d"], np.array([900.0, 12.0]), np.array([0.1, 1.5, -2.0]), 2)
    assert [(r["code"], r["feature"], r["value"]) for r in got] == [
        ("R08_AMOUNT_UNUSUAL_FOR_CUSTOMER", "amount_vs_customer_avg_30d", 12.0), ("R05_TRANSACTION_AMOUNT", "amount", 900.0)]


def test_amount_ratios_online_equal_offline(stack: Stack) -> None:
    """The amount-to-history inputs are the same in training and serving for the same payments:
    Feast's point-in-time join (its on-demand view over customer_spending, what training reads)
    and serving's one online read plus riskloop.features.amount_features on the request's amount."""
    import asyncio

    import pandas as pd

    from serving.online import OnlineFeatures, plan_inputs

    customers = sorted(stack.marts.customer_spending_features["customer_id"].unique())
    terminal = stack.marts.fct_transactions.terminal_id.iloc[0]
    amounts = [round(0.5 + 37.3 * i, 2) for i in range(len(customers))]
    # Payments just after the materialized end: online holds each customer's latest row, which is
    # the row the point-in-time join picks for them (all rows lie within the view's 30-day TTL).
    entity_df = pd.DataFrame({"customer_id": customers, "terminal_id": terminal, "card_token": "tok_none", "amount": amounts,
                              "event_timestamp": stack.marts.as_of})
    offline = stack.store().get_historical_features(
        entity_df=entity_df, features=stack.store().get_feature_service("fraud_model_v1")).to_df()
    offline = offline.set_index("customer_id").loc[customers]

    sql = OnlineFeatures(stack.store, "fraud_model_v1", read="sql", timeout_s=5.0)
    assert sql.ensure()
    inputs = plan_inputs(AMOUNT_FEATURES, sql.offered)  # reads the customer_spending fields they need

    async def read_all() -> list:
        try:
            return [(await sql.fetch_async(inputs, {"customer_id": c, "terminal_id": terminal, "card_token": "tok_none"},
                                             {"amount": a}))[0]
                    for c, a in zip(customers, amounts, strict=True)]
        finally:
            await sql.aclose()

    online = pd.DataFrame(asyncio.run(read_all()), index=customers)
    assert online[AMOUNT_FEATURES].notna().all().all() and (online["amount_vs_customer_zscore_30d"] > 0).any()
    sources = ["customer_avg_amount_30d", "customer_avg_amount_7d", "customer_max_amount_30d",
               "customer_std_amount_30d"]
    pd.testing.assert_frame_equal(online[sources + AMOUNT_FEATURES].astype(float),
                                  offline[sources + AMOUNT_FEATURES].astype(float),
                                  check_names=False, rtol=1e-12)


def test_direct_read_timeout_degrades(app_factory, stack: Stack) -> None:
    """A store slower than online_timeout_s: a rules-only decision, flagged, never a 5xx."""
    def errors(c: TestClient) -> float:
        return next(float(line.split()[-1]) for line in c.get("/metrics").text.splitlines()
                    if line.startswith("riskloop_feature_store_errors_total "))

    with TestClient(app_factory(online_timeout_s=1e-6), headers=AUTH) as c:
        before = errors(c)
        for _ in range(2):  # and again: a timeout does not unbind the store
            r = c.post("/v1/score/fraud", json=_request(stack))
            assert r.status_code == 200, r.text
            assert r.json()["degraded"] is True and r.json()["score"] is None
        assert errors(c) == before + 2


def test_last_known_good_model_when_registry_unreachable(app_factory, stack: Stack) -> None:
    from conftest import free_port

    from serving.app import create_app
    from serving.config import ServingSettings

    with TestClient(app_factory(), headers=AUTH) as c:  # a successful load keeps the model on disk
        assert c.get("/readyz").json()["checks"]["model_source"] == "registry"
        expected = c.post("/v1/score/fraud", json=_request(stack)).json()
    # with credentials in the registry's URL: the errors the server returns never show the password
    down = stack.settings.model_copy(update={"mlflow_tracking_uri": f"http://risk:Reg1stry-pw@127.0.0.1:{free_port()}"})
    with TestClient(create_app(down, ServingSettings(api_keys=f"{ADMIN_KEY}:admin")), headers=AUTH) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["model_source"] == "last_known_good"
        assert c.get("/v1/model").json()["source"] == "last_known_good"
        body = c.post("/v1/score/fraud", json=_request(stack)).json()
        assert body["model"]["version"] == stack.model_version and body["degraded"] is False
        assert body["score"] == expected["score"] and body["reasons"] == expected["reasons"]
        reload = c.post("/v1/admin/reload")
        assert reload.status_code == 503  # a reload needs the registry
        assert "127.0.0.1" in reload.text and "Reg1stry-pw" not in reload.text + c.get("/v1/model").text
        assert c.get("/v1/model").json()["version"] == stack.model_version  # and keeps serving


def _promote(stack: Stack, version: str) -> None:
    """``version`` (the challenger) through review and the promotion gate, which moves ``@champion``:
    serving swaps in only a version the gate promoted (test_model_gate). Metrics, contracts and the
    canary are test_promotion's and test_canary's concern."""
    from riskloop.governance.promotion import evaluate_promotion
    from riskloop.governance.review import record

    record(stack.settings, stack.settings.fraud_model_name, version, "approved", principal("alice"), "for serving")
    relaxed = stack.settings.model_copy(update={"promotion_require_contracts": False, "canary_required": False})
    decision = evaluate_promotion(relaxed, stack.settings.fraud_model_name, margin=1.0)
    assert decision.promoted and decision.new_champion_version == version, decision.reason


def test_moved_alias_picked_up_under_load(app_factory, stack: Stack) -> None:
    """The poller swaps the model the gate promoted while requests keep coming: none fails, none
    mixes versions."""
    import threading

    from mlflow import MlflowClient

    from training.train import train_fraud

    new_version = train_fraud(stack.settings, {"n_estimators": 20}, principal=TRAINER).version  # alias challenger only
    registry = MlflowClient(stack.settings.tracking_uri, stack.settings.tracking_uri)
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()
    with TestClient(app_factory(model_poll_s=0.2), headers=AUTH) as c:
        def load() -> None:
            while not stop.is_set():
                r = c.post("/v1/score/fraud", json=_request(stack))
                seen.append((r.status_code, r.json()["model"]["version"] if r.status_code == 200 else r.text))

        workers = [threading.Thread(target=load) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            time.sleep(0.5)
            _promote(stack, new_version)
            deadline = time.monotonic() + 30
            while c.get("/v1/model").json()["version"] != new_version and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            for w in workers:
                w.join()
            # back to the first version: promoted too (its bootstrap), so serving takes it back
            registry.set_registered_model_alias(stack.settings.fraud_model_name, "champion", stack.model_version)
    assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v in seen]
    assert versions[0] == stack.model_version and versions[-1] == new_version
    assert set(versions) == {stack.model_version, new_version}


def test_model_endpoint_and_reload(client: TestClient, stack: Stack) -> None:
    from mlflow import MlflowClient

    from training.train import train_fraud

    info = client.get("/v1/model").json()
    assert info["loaded"] and info["version"] == stack.model_version and info["features"] == stack.features
    new_version = train_fraud(stack.settings, {"n_estimators": 20}, principal=TRAINER).version  # alias challenger only
    registry = MlflowClient(stack.settings.tracking_uri, stack.settings.tracking_uri)
    _promote(stack, new_version)
    try:
        assert client.get("/v1/model").json()["version"] == stack.model_version  # not until reloaded
        reloaded = client.post("/v1/admin/reload")
        assert reloaded.status_code == 200 and reloaded.json()["version"] == new_version
        body = client.post("/v1/score/fraud", json=_request(stack)).json()
        assert body["model"]["version"] == new_version
    finally:
        registry.set_registered_model_alias(stack.settings.fraud_model_name, "champion", stack.model_version)


def test_admin_token(app_factory) -> None:
    with TestClient(app_factory(admin_token="s3cret")) as c:  # legacy token: one more admin key
        assert c.post("/v1/admin/reload").status_code == 401
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_health_ready_metrics_and_unknown_decision(client: TestClient, stack: Stack) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] is True
    assert client.get("/v1/decisions/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/v1/decisions/not-a-uuid").status_code == 422
    client.post("/v1/score/fraud", json=_request(stack))
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "riskloop_fraud_decisions_total" in metrics.text


def test_not_ready_without_model(app_factory, stack: Stack) -> None:
    with TestClient(app_factory(model_alias="no-such-alias"), headers=AUTH) as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/v1/model").json()["loaded"] is False
        body = c.post("/v1/score/fraud", json=_request(stack)).json()
        assert body["degraded"] is True and body["model"]["version"] is None


def test_a_run_of_requests_is_scored_in_full(client: TestClient, stack: Stack) -> None:
    """Three hundred requests in a row against the warm app: every one answered with a decision and
    its own decision id, scored by the model or (an online read past its tight timeout on a busy
    machine) flagged degraded with no score, never anything in between. Latency is measured in
    bench/serving_load.py and reported in BENCHMARKS.md, not bounded here."""
    tx = stack.marts.fct_transactions.tail(300)
    bodies = []
    for t in tx.itertuples():
        body = _request(stack, customer_id=t.customer_id, terminal_id=t.terminal_id,
                        amount_minor=int(round(t.amount * 100)) or 1)
        r = client.post("/v1/score/fraud", json=body)
        assert r.status_code == 200, r.text
        bodies.append(r.json())
    assert all(b["decision"] in DECISIONS and (b["score"] is None) == b["degraded"] for b in bodies), \
        [b for b in bodies if (b["score"] is None) != b["degraded"]][:3]
    assert any(not b["degraded"] for b in bodies)  # the store is up: the model scores
    assert len({b["decision_id"] for b in bodies}) == len(bodies)


# --- several workers: `riskloop serve --workers 2` as a real server ------------------------------

@pytest.fixture(scope="module")
def two_workers(stack: Stack) -> Iterator[str]:
    """``python -m serving --workers 2`` (what ``riskloop serve --workers 2`` runs) on this module's
    stack, once both workers answer ``/readyz``; stopped (SIGTERM, the writers flush) at the end."""
    import os
    import subprocess
    import sys

    import httpx
    from conftest import free_port, stop_process

    port = free_port()
    env = {**os.environ, "RISKLOOP_DATABASE_URL": str(stack.settings.database_url),
           "RISKLOOP_FRAUD_MODEL_NAME": stack.settings.fraud_model_name, "RISKLOOP_API_KEYS": f"{ADMIN_KEY}:admin",
           "RISKLOOP_SERVING_MODEL_POLL_S": "0", "RISKLOOP_SERVING_KNOWN_DEVICE_POLL_S": "0.2"}
    for inherited in ("PROMETHEUS_MULTIPROC_DIR", "RISKLOOP_SERVING_METRICS_DIR"):  # Feast sets the first on import
        env.pop(inherited, None)
    log_path = stack.settings.run_dir / f"serve-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(port), "--workers", "2"], env=env,
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    pids: set[int] = set()
    deadline = time.monotonic() + 180
    try:
        while len(pids) < 2:  # a new connection each time: the kernel hands it to either worker
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"two ready workers not seen ({pids}):\n{log_path.read_text()[-3000:]}"
            try:
                r = httpx.get(f"{url}/readyz", timeout=5)
                if r.status_code == 200:
                    pids.add(r.json()["checks"]["worker_pid"])
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        stop_process(proc, timeout=60)


def _decisions_total(metrics_text: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics_text.splitlines()
               if line.startswith("riskloop_fraud_decisions_total{"))


def test_two_workers_share_devices_decisions_and_metrics(two_workers: str, stack: Stack) -> None:
    """What one process used to keep to itself, across two: a device allowed by either worker is
    known to both; a decision is readable right after it is scored, whichever worker is asked; and
    every /metrics scrape counts both workers' decisions. New connections each time, so the kernel
    spreads them over the workers."""
    import httpx

    def post(body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{two_workers}/v1/score/fraud", json=body, headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        got = httpx.get(f"{two_workers}/v1/decisions/{r.json()['decision_id']}", headers=AUTH, timeout=10)
        assert got.status_code == 200, got.text  # queued in one worker, read through either
        return r.json()

    def scrape() -> float:
        return _decisions_total(httpx.get(f"{two_workers}/metrics", timeout=10).text)

    before = scrape()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    first = post(_request(stack, device_id=device, amount_minor=1_000))
    assert first["decision"] == "allow", first
    customer = _request(stack)["customer_id"]
    deadline = time.monotonic() + 10
    while not _known_pair(stack.settings, customer, device):  # the writer shares it
        assert time.monotonic() < deadline, "allowed device not in serving.known_devices"
        time.sleep(0.05)
    time.sleep(1.0)  # > the workers' 0.2 s refresh
    big = [post(_request(stack, device_id=device, amount_minor=60_000)) for _ in range(8)]
    assert all("NEW_DEVICE_HIGH_AMOUNT" not in b["rules"] for b in big), [b["rules"] for b in big]
    new = post(_request(stack, device_id=f"dev-{uuid.uuid4().hex[:8]}", amount_minor=60_000))
    assert "NEW_DEVICE_HIGH_AMOUNT" in new["rules"]  # the rule is live: only a known device escapes it
    sent = 1 + len(big) + 1
    assert [scrape() - before for _ in range(6)] == [sent] * 6


def _known_pair(settings: Settings, customer: str, device: str) -> bool:
    with psycopg.connect(dsn(settings)) as conn:
        return conn.execute("select 1 from serving.known_devices where customer_id = %s and device_id = %s",
                            (customer, device)).fetchone() is not None


def test_velocity_rule_reads_the_streams_windows(client: TestClient, stack: Stack) -> None:
    """N+1 payments of one card in 10 minutes: N signed webhooks through the receiver and the stream
    consumer reach the online store, and the (N+1)th payment, scored, is reviewed by
    CARD_VELOCITY_10M (fraud-v2: more than 5 in 10 minutes); a card with one payment fewer, or whose
    burst ended 20 minutes ago, is not. The window values are logged and the decisions replay."""
    import base64

    from riskloop.core.signatures import WebhookSettings, signed_headers
    from riskloop.features.stream import StreamConsumer
    from riskloop.simulator.webhooks import standard_body
    from serving.replay import replay
    from serving.webhooks import create_webhook_app

    secret = "whsec_" + base64.b64encode(b"riskloop-velocity-test-key-32by!").decode()
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC).replace(microsecond=0)
    bursts = {"burst": (5, timedelta(0)), "fewer": (4, timedelta(0)), "over": (5, timedelta(minutes=20))}
    receiver = create_webhook_app(stack.settings, WebhookSettings(secrets_standard=secret))
    with TestClient(receiver) as hooks:
        for card, (n, ago) in bursts.items():
            for i in range(n):  # one payment every 2 minutes, the latest 1 minute before the scored one
                ev = {"event_id": f"vel_{run}_{card}_{i}", "event_type": "payment.authorized",
                      "occurred_at": now - ago - timedelta(minutes=1 + 2 * i), "payment_id": f"pay_{run}_{card}_{i}",
                      "card_token": f"tok_{run}_{card}", "customer_id": f"C_{run}_{card}", "terminal_id": "T1",
                      "amount_minor": 1_500, "currency": "EUR", "dispute_id": None}
                body = standard_body(ev)
                r = hooks.post("/webhooks/standard", content=body,
                               headers=signed_headers("standard", body, secret, int(time.time())))
                assert r.status_code == 200, r.text
    with StreamConsumer(stack.settings, name=f"velocity-{run}", store=stack.store()) as consumer:
        assert consumer.run_once().payments >= sum(n for n, _ in bursts.values())

    out = {card: client.post("/v1/score/fraud", json=_request(
        stack, card_token=f"tok_{run}_{card}", timestamp=now.isoformat())).json() for card in bursts}
    assert "CARD_VELOCITY_10M" in out["burst"]["rules"] and out["burst"]["decision"] in ("review", "deny")
    assert "CARD_VELOCITY_10M" not in out["fewer"]["rules"] and "CARD_VELOCITY_10M" not in out["over"]["rules"]
    row = _wait_logged(stack.settings, out["burst"]["decision_id"])
    assert row["policy_version"] == "fraud-v2" and row["features"]["card_tx_count_10m"] == 5
    assert datetime.fromisoformat(row["feature_timestamps"]["card_realtime"]) == now - timedelta(minutes=1)
    assert _wait_logged(stack.settings, out["over"]["decision_id"])["features"]["card_tx_count_10m"] == 5  # stale
    reason = client.get(f"/v1/decisions/{out['burst']['decision_id']}").json()["rule_reasons"]
    assert [r["id"] for r in reason] == out["burst"]["rules"]
    assert next(r for r in reason if r["id"] == "CARD_VELOCITY_10M")["description"].startswith(
        "Card burst: 5 earlier payments of this card within 10 minutes of its latest one, 60 s before this payment")
    for decision in out.values():
        _wait_logged(stack.settings, decision["decision_id"])
        result = replay(stack.settings, decision["decision_id"])
        assert result.matches, result.mismatches
