"""Serving decides only with what the gate let through, models are data, and one registry client.

Against the session stack's real MLflow server and Postgres: small XGBoost models registered as
training registers them (tests/test_promotion.py), the scoring app under FastAPI's TestClient, and
``riskloop serve`` started as a user starts it (a process of its own, no MLflow variable in its
environment) for the review page's actions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from riskloop.core.config import Settings

ADMIN = "gate-admin-key-0123456789abcdef"
REVIEWER = "gate-reviewer-key-0123456789abc"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def clf():
    import xgboost as xgb
    from test_promotion import FEATURES, synth

    train = synth(800, seed=21)
    return xgb.XGBClassifier(n_estimators=8, max_depth=2, n_jobs=1).fit(train[FEATURES], train["label"])


def _no_feature_store():
    raise RuntimeError("no feature store in this test: the model's clearance is what is tested")


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def _decisions(settings: Settings, name: str) -> list[tuple[str, str, str | None]]:
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        return conn.execute("select decision, new_champion_version, content_hash from governance.promotion_decisions "
                            "where model_name = %s order by decided_at", (name,)).fetchall()


def _request() -> dict[str, Any]:
    return {"transaction_id": f"tx-{uuid.uuid4().hex[:8]}", "card_token": "tok_gate", "customer_id": "c1",
            "terminal_id": "t1", "amount_minor": 4_200, "currency": "EUR", "timestamp": "2024-03-12T14:00:00+00:00"}


# --- serving serves only what the gate promoted ----------------------------------------------------

def test_champion_moved_outside_the_gate_is_refused_and_paged(settings: Settings, clf) -> None:
    from mlflow import MlflowClient
    from pydantic import SecretStr
    from sinks import http_sink
    from test_alerts import SECRET
    from test_promotion import fresh_name, register

    from riskloop.governance.promotion import bootstrap_champion
    from riskloop.models.registry import download_version, hash_tree
    from serving.app import create_app
    from serving.config import ServingSettings

    name = fresh_name()
    v1 = register(settings, name, clf, ("challenger",))
    first = bootstrap_champion(settings, name, v1)  # what training does for a model's first version
    with tempfile.TemporaryDirectory() as tmp:
        v1_hash = hash_tree(download_version(settings.tracking_uri, name, v1, tmp))
    assert first.promoted and first.champion_version is None and first.content_hash == v1_hash
    assert _decisions(settings, name) == [("promoted", v1, v1_hash)]
    v2 = register(settings, name, clf, ("challenger",))  # never reviewed, never through the gate

    with http_sink() as sink:
        app_settings = settings.model_copy(update={
            "fraud_model_name": name, "credit_model_name": f"no-credit-{uuid.uuid4().hex[:6]}",
            "alert_webhook_url": sink.url("/hook"), "alert_webhook_secret": SecretStr(SECRET), "alert_retries": 0})
        app = create_app(app_settings, ServingSettings(api_keys=f"{ADMIN}:admin", model_poll_s=0.2, canary_poll_s=0),
                         feature_store_factory=_no_feature_store)
        with TestClient(app, headers=AUTH) as c:
            assert c.get("/v1/model").json()["version"] == v1
            assert c.get("/readyz").json()["checks"]["refused_models"] == []

            MlflowClient(settings.tracking_uri, settings.tracking_uri).set_registered_model_alias(name, "champion", v2)

            def refused() -> list[dict[str, Any]]:
                return c.get("/readyz").json()["checks"]["refused_models"]

            _wait(lambda: refused() != [], 60, "the moved alias refused")
            ready = c.get("/readyz")
            assert ready.status_code == 200  # the previous model serves: still ready
            [entry] = ready.json()["checks"]["refused_models"]
            assert (entry["key"], entry["model_name"], entry["alias"], entry["version"], entry["serving_version"]) == \
                ("fraud:champion", name, "champion", v2, v1)
            assert "no promotion decision" in entry["reason"] and len(entry["content_hash"]) == 64
            assert c.get("/v1/model").json()["version"] == v1
            scored = c.post("/v1/score/fraud", json=_request())
            assert scored.status_code == 200 and scored.json()["model"]["version"] == v1
            reload = c.post("/v1/admin/reload")
            assert reload.status_code == 503 and "no promotion decision" in reload.text
            assert c.get("/v1/model").json()["version"] == v1

            _wait(lambda: sink.bodies("/hook"), 30, "on-call paged")
            time.sleep(1.0)  # more polls meet the same refusal: still one page
            [page] = [json.loads(b) for b in sink.bodies("/hook")]
            assert page["type"] == "riskloop.alert.firing"
            assert (page["data"]["kind"], page["data"]["key"]) == ("model_refused", f"{name}@champion")
            assert page["data"]["runbook_url"].endswith("model_refused.md") and f"v{v2}" in page["data"]["summary"]

            # the alias back on the promoted version: the refusal is over
            MlflowClient(settings.tracking_uri, settings.tracking_uri).set_registered_model_alias(name, "champion", v1)
            _wait(lambda: refused() == [], 30, "the refusal cleared")


def test_no_start_on_an_unpromoted_champion_and_bootstrap_only_once(settings: Settings, clf) -> None:
    from test_promotion import fresh_name, register

    from riskloop.governance.promotion import PromotionError, bootstrap_champion
    from serving.app import create_app
    from serving.config import ServingSettings

    name = fresh_name()
    v1 = register(settings, name, clf, ("champion", "challenger"))  # champion set by hand: no decision
    app = create_app(settings.model_copy(update={"fraud_model_name": name,
                                                 "credit_model_name": f"no-credit-{uuid.uuid4().hex[:6]}"}),
                     ServingSettings(api_keys=f"{ADMIN}:admin", model_poll_s=0, canary_poll_s=0),
                     feature_store_factory=_no_feature_store)
    with TestClient(app, headers=AUTH) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["model"] is False
        [entry] = ready.json()["checks"]["refused_models"]
        assert entry["version"] == v1 and entry["serving_version"] is None
        assert c.post("/v1/score/fraud", json=_request()).json()["model"]["version"] is None
    with pytest.raises(PromotionError, match="already has a champion"):
        bootstrap_champion(settings, name, v1)
    assert _decisions(settings, name) == []


def test_a_challenger_decides_only_in_a_started_canary_of_its_version(settings: Settings, clf) -> None:
    from test_promotion import fresh_name, register

    from riskloop.governance import canary
    from riskloop.governance.promotion import bootstrap_champion
    from serving.app import create_app
    from serving.config import ServingSettings

    name = fresh_name()
    v1 = register(settings, name, clf, ("challenger",))
    bootstrap_champion(settings, name, v1)
    v2 = register(settings, name, clf, ("challenger",))
    app_settings = settings.model_copy(update={"fraud_model_name": name,
                                               "credit_model_name": f"no-credit-{uuid.uuid4().hex[:6]}"})

    def serve(**cfg: Any):
        return create_app(app_settings, ServingSettings(api_keys=f"{ADMIN}:admin", model_poll_s=0, canary_poll_s=0.2,
                                                        canary_watch=False, **cfg),
                          feature_store_factory=_no_feature_store)

    # a canary asked for by configuration alone: no canary of v2 was started, so v2 never decides
    with TestClient(serve(mode="canary", canary_share=1.0), headers=AUTH) as c:
        assert c.get("/v1/canary").json()["effective_mode"] == "champion"
        [entry] = c.get("/readyz").json()["checks"]["refused_models"]
        assert (entry["key"], entry["version"]) == ("fraud:challenger", v2) and "no canary" in entry["reason"]
        assert c.post("/v1/score/fraud", json=_request()).json()["model"] == {"name": name, "version": v1,
                                                                               "alias": "champion"}
    # started (recorded), it is routed its share
    canary.start(settings, name, share=1.0, min_minutes=0, min_decisions=0)
    try:
        with TestClient(serve(), headers=AUTH) as c:
            _wait(lambda: c.get("/v1/canary").json()["effective_mode"] == "canary", 30, "the canary routed")
            assert c.get("/readyz").json()["checks"]["refused_models"] == []
            assert c.post("/v1/score/fraud", json=_request()).json()["model"]["version"] == v2
    finally:
        canary.end(settings, name, "stop", "test over")


# --- a model is data -------------------------------------------------------------------------------

EVIL = '''
import os
from pathlib import Path

Path(os.environ["RISKLOOP_TEST_MARKER"]).write_text("model code ran")


class Model:
    def load_model(self, path):
        pass
'''


def _register_evil(settings: Settings, name: str, clf, marker_module: str) -> str:
    """An artifact as ``mlflow.xgboost.save_model`` writes it with ``code_paths``, its MLmodel then
    edited to name a class of that code: loading it the MLflow way imports (runs) the code."""
    import mlflow
    import mlflow.xgboost
    import yaml
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / f"{marker_module}.py"
        code.write_text(EVIL)
        model_dir = Path(tmp) / "model"
        mlflow.xgboost.save_model(clf, str(model_dir), code_paths=[str(code)])
        spec = yaml.safe_load((model_dir / "MLmodel").read_text())
        spec["flavors"]["xgboost"]["model_class"] = f"{marker_module}.Model"
        (model_dir / "MLmodel").write_text(yaml.safe_dump(spec))
        assert (model_dir / "code" / f"{marker_module}.py").exists()
        client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
        experiment = client.get_experiment_by_name("riskloop-tests") or client.get_experiment(
            client.create_experiment("riskloop-tests"))
        run = client.create_run(experiment.experiment_id)
        client.log_param(run.info.run_id, "features", "amount,is_night,terminal_risk_7d,customer_nb_tx_1d")
        for k in ("test_start", "test_end"):
            client.log_param(run.info.run_id, k, "2024-03-08T00:00:00+00:00" if k == "test_start"
                             else "2024-03-15T00:00:00+00:00")
        client.log_artifacts(run.info.run_id, str(model_dir), "model")
        client.set_terminated(run.info.run_id)
        try:
            client.create_registered_model(name)
        except Exception:  # noqa: BLE001 - already registered by an earlier version
            pass
        mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return str(mv.version)


def test_an_artifact_naming_another_class_and_shipping_code_is_refused_never_run(settings: Settings, clf,
                                                                                tmp_path, monkeypatch) -> None:
    from mlflow import MlflowClient
    from test_promotion import Loader, fresh_name, register

    from riskloop.governance.promotion import PromotionError, bootstrap_champion, evaluate_promotion
    from serving.model import ModelRefused, load_model

    marker = tmp_path / "marker"
    monkeypatch.setenv("RISKLOOP_TEST_MARKER", str(marker))
    module = f"riskloop_marker_{uuid.uuid4().hex[:8]}"
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)

    # serving: refused with the reason, its code never imported
    name = fresh_name()
    evil = _register_evil(settings, name, clf, module)
    client.set_registered_model_alias(name, "champion", evil)
    with pytest.raises(ModelRefused, match="unsafe artifact") as refused:
        load_model(settings.tracking_uri, name, "champion")
    assert "code/ folder" in refused.value.reason or "model class" in refused.value.reason
    # the bootstrap refuses it too: a first version that is not a plain booster never becomes champion
    other = fresh_name()
    first = _register_evil(settings, other, clf, module)
    with pytest.raises(PromotionError, match="refused as a model"):
        bootstrap_champion(settings, other, first)

    # the gate: the same artifact as a challenger is refused before anything of it runs
    gated = fresh_name()
    v1 = register(settings, gated, clf, ("challenger",))
    bootstrap_champion(settings, gated, v1)
    v2 = _register_evil(settings, gated, clf, module)
    client.set_registered_model_alias(gated, "challenger", v2)
    with pytest.raises(PromotionError, match=f"{gated} v{v2} refused as a model"):
        evaluate_promotion(settings.model_copy(update={"canary_required": False}), gated, load_test_set=Loader())
    assert not marker.exists(), "the artifact's code ran"
    assert module not in sys.modules
    assert client.get_model_version_by_alias(gated, "champion").version == v1


def test_the_booster_file_alone_is_read(tmp_path) -> None:
    """Each way an MLmodel can point elsewhere is refused with its reason (no registry needed)."""
    import mlflow.xgboost
    import xgboost as xgb
    import yaml
    from test_promotion import FEATURES, synth

    from riskloop.models.registry import UnsafeArtifact, read_booster

    train = synth(200, seed=4)
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(train[FEATURES], train["label"])
    good = tmp_path / "good"
    mlflow.xgboost.save_model(model, str(good))
    booster = read_booster(good)
    assert isinstance(booster, xgb.Booster) and booster.feature_names == FEATURES
    x = train[FEATURES].to_numpy()
    assert booster.inplace_predict(x) == pytest.approx(model.predict_proba(x)[:, 1])

    def variant(edit) -> Path:
        path = tmp_path / uuid.uuid4().hex[:6]
        shutil.copytree(good, path)
        spec = yaml.safe_load((path / "MLmodel").read_text())
        edit(spec, path)
        (path / "MLmodel").write_text(yaml.safe_dump(spec))
        return path

    cases = {
        "flavors other than xgboost": lambda s, p: s["flavors"].update(sklearn={"pickled_model": "model.pkl"}),
        "pyfunc loader": lambda s, p: s["flavors"]["python_function"].update(loader_module="evil"),
        "names code": lambda s, p: s["flavors"]["xgboost"].update(code="src"),
        "model format": lambda s, p: s["flavors"]["xgboost"].update(model_format="pkl"),
        "inside the artifact": lambda s, p: s["flavors"]["xgboost"].update(data="../../etc/model.ubj"),
        "no xgboost flavor": lambda s, p: s["flavors"].pop("xgboost"),
    }
    for reason, edit in cases.items():
        with pytest.raises(UnsafeArtifact, match=reason):
            read_booster(variant(edit))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UnsafeArtifact, match="no MLmodel"):
        read_booster(tmp_path / "nothing")


# --- one registry client -------------------------------------------------------------------------

@pytest.mark.slow
def test_review_actions_against_riskloop_serve_started_as_a_user_starts_it(settings: Settings, stack_env, clf,
                                                                         tmp_path) -> None:
    """No MLFLOW_* variable, a working directory of its own: every registry call of the review page
    goes to the configured server (before, the artifact hash went to a ``mlflow.db`` there: 500)."""

    from conftest import free_port, stop_process
    from test_promotion import fresh_name, register

    from riskloop.governance.promotion import bootstrap_champion

    name = fresh_name()
    v1 = register(settings, name, clf, ("challenger",))
    bootstrap_champion(settings, name, v1)
    v2 = register(settings, name, clf, ("challenger",))

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RISKLOOP_"))}
    env.update(stack_env)
    env.update({"RISKLOOP_API_KEYS": f"gate-reviewer:reviewer:{REVIEWER},gate-admin:admin:{ADMIN}",
                "RISKLOOP_FRAUD_MODEL_NAME": name, "RISKLOOP_CREDIT_MODEL_NAME": f"no-credit-{uuid.uuid4().hex[:6]}",
                "RISKLOOP_SERVING_MODEL_POLL_S": "0",
                "RISKLOOP_SERVING_CANARY_POLL_S": "0"})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "riskloop", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {REVIEWER}"}
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 180, "riskloop serve answering")
        with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
            assert http.get("/readyz").json()["checks"]["model"] is True  # v1, cleared by its bootstrap decision
            pending = http.get("/review/api/pending", params={"model": name})
            assert pending.status_code == 200 and pending.json()[0]["version"] == v2
            card = http.get(f"/review/api/models/{name}/versions/{v2}")
            assert card.status_code == 200, card.text
            rejected = http.post(f"/review/api/models/{name}/versions/{v2}/reject", json={"reason": "not convinced"})
            assert rejected.status_code == 200, rejected.text
            assert (rejected.json()["verdict"], rejected.json()["reviewer"]) == ("rejected", "gate-reviewer")
            approved = http.post(f"/review/api/models/{name}/versions/{v2}/approve", json={"reason": "read it again"})
            assert approved.status_code == 200, approved.text
            assert approved.json()["content_hash"] == card.json()["content_hash"] == rejected.json()["content_hash"]
    finally:
        stop_process(proc)
        log.close()
    assert not list(cwd.iterdir()), f"riskloop serve left {sorted(p.name for p in cwd.iterdir())} in its directory"
