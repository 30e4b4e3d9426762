"""Four eyes on principals: each way around the reviewer approval that self-declared identities allowed.

The author of a version is the principal riskloop recorded when it was registered
(``governance.model_authors``), never MLflow's ``user_id``; the reviewer is the principal of the key
that calls (the CLI's ``RISKLOOP_API_KEY``, the page's bearer key); names compare case-insensitively.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from principals import API_KEYS, bearer, cli_env, principal
from typer.testing import CliRunner

from riskloop.core.config import Settings
from riskloop.core.identity import Principal, fingerprint

LEGACY_REVIEWER = "legacy-unnamed-reviewer-key-01"


@pytest.fixture(scope="module")
def classifier() -> Any:
    import xgboost as xgb
    from test_promotion import FEATURES, synth

    train = synth(500, seed=3)
    return xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(train[FEATURES], train["label"])


def _cli(*args: str, env: dict[str, str]) -> Any:
    from riskloop.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def _approve(name: str, version: str, as_: str, env: dict[str, str] | None = None) -> Any:
    return _cli("review", "approve", name, version, "--reason", "card read", env=env or cli_env(as_))


def _said(out: Any) -> str:
    return " ".join(out.output.split())


def test_a_forged_mlflow_user_does_not_make_someone_else_the_author(settings: Settings, classifier,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """carol trains with USER / LOGNAME set to mallory (MLflow's user_id follows them): still carol's."""
    from mlflow import MlflowClient
    from test_promotion import fresh_name, register

    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    name = fresh_name()
    register(settings, name, classifier, ("champion", "challenger"))
    v2 = register(settings, name, classifier, ("challenger",), author=principal("carol"))
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    assert client.get_run(client.get_model_version(name, v2).run_id).info.user_id == "mallory"  # what MLflow believes

    out = _approve(name, v2, "carol")
    assert out.exit_code == 2 and "carol authored" in _said(out) and "cannot approve" in _said(out)
    card = json.loads(_cli("review", "show", name, v2, env=cli_env("alice")).stdout)
    assert card["author"] == "carol" and card["reviews"] == []
    assert client.get_model_version(name, v2).tags["riskloop.author"] == "carol"
    approved = json.loads(_approve(name, v2, "alice").stdout)
    assert (approved["reviewer"], approved["run_author"]) == ("alice", "carol")


def test_an_mlflow_user_tag_does_not_make_someone_else_the_author(settings: Settings, classifier) -> None:
    """The run's ``mlflow.user`` tag set to another name: the recorded author is still who trained."""
    import mlflow
    from mlflow import MlflowClient
    from test_promotion import FEATURES, fresh_name, register, synth

    from riskloop.governance.authors import record_author

    name = fresh_name()
    register(settings, name, classifier, ("champion", "challenger"))
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    mlflow.set_experiment("riskloop-tests")
    with mlflow.start_run(tags={"mlflow.user": "mallory"}) as run:
        info = mlflow.xgboost.log_model(classifier, name="model", registered_model_name=name,
                                        input_example=synth(5, 1)[FEATURES])
    v2 = str(info.registered_model_version)
    record_author(settings, name, v2, principal("carol"), run_id=run.info.run_id)
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    client.set_registered_model_alias(name, "challenger", v2)
    assert client.get_run(run.info.run_id).info.user_id == "mallory"
    out = _approve(name, v2, "carol")
    assert out.exit_code == 2 and "carol authored" in _said(out)
    listed = json.loads(_cli("review", "list", "--model", name, "--json", env=cli_env("alice")).stdout)
    assert listed[0]["author"] == "carol"


def test_a_version_without_a_recorded_author_cannot_be_approved(settings: Settings, classifier) -> None:
    """Registered straight into MLflow (no run, no riskloop training): nobody can show they are not its author."""
    import tempfile

    import mlflow.xgboost
    from mlflow import MlflowClient
    from test_promotion import fresh_name, register

    from riskloop.governance.review import UnknownAuthor, approval_gate, record

    name = fresh_name()
    register(settings, name, classifier, ("champion", "challenger"))
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    # a logged model of no run (MLflow 3), registered as the next version: nobody's training
    experiment = client.get_experiment_by_name("riskloop-tests")
    logged = client.create_logged_model(experiment.experiment_id, name="model")
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.xgboost.save_model(classifier, f"{tmp}/model")
        client.log_model_artifacts(logged.model_id, f"{tmp}/model")
    client.finalize_logged_model(logged.model_id, "READY")
    mv = client.create_model_version(name, f"models:/{logged.model_id}", model_id=logged.model_id)
    assert not mv.run_id  # no training run
    client.set_registered_model_alias(name, "challenger", mv.version)

    out = _approve(name, str(mv.version), "alice")
    assert out.exit_code == 2 and "no recorded author" in _said(out)
    with pytest.raises(UnknownAuthor):
        record(settings, name, str(mv.version), "approved", principal("bob"), "looks fine")
    # a rejection needs no author
    assert record(settings, name, str(mv.version), "rejected", principal("bob"), "who made this?").verdict == "rejected"
    assert not approval_gate(settings, name, str(mv.version)).ok
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn, pytest.raises(
            psycopg.errors.CheckViolation):  # nor can an approval row be written around the code
        conn.execute("insert into governance.model_approvals values (gen_random_uuid(), now(), %s, %s, %s, "
                     "'approved', 'alice', 'sneaky', null, null)", (name, str(mv.version), "0" * 64))


def test_the_reviewer_flag_no_longer_chooses_who_approves(settings: Settings, classifier) -> None:
    from test_promotion import fresh_name, register

    from riskloop.governance.review import history

    name = fresh_name()
    register(settings, name, classifier, ("champion", "challenger"))
    v2 = register(settings, name, classifier, ("challenger",), author=principal("carol"))
    out = _cli("review", "approve", name, v2, "--reason", "fine", "--reviewer", "bob", env=cli_env("carol"))
    assert out.exit_code == 2 and "--reviewer no longer chooses who you are" in _said(out)
    out = _cli("review", "approve", name, v2, "--reason", "fine", env={"RISKLOOP_API_KEYS": API_KEYS})
    assert out.exit_code == 2 and "RISKLOOP_API_KEY is not set" in _said(out)
    out = _cli("review", "approve", name, v2, "--reason", "fine",
               env={"RISKLOOP_API_KEYS": API_KEYS, "RISKLOOP_API_KEY": "a-key-nobody-was-issued-01"})
    assert out.exit_code == 2 and "not a configured key" in _said(out)
    out = _approve(name, v2, "trainer")  # an admin: may not review at all
    assert out.exit_code == 2 and "may not review model" in _said(out)
    assert history(settings, name, v2) == []


def test_an_unnamed_reviewer_key_takes_no_governance_action(settings: Settings, classifier) -> None:
    """A legacy ``key:reviewer`` used to approve as ``reviewer:<fingerprint>``, which never equals an author."""
    from fastapi.testclient import TestClient
    from test_promotion import fresh_name, register

    from riskloop.governance.review import history
    from serving.app import create_app
    from serving.config import ServingSettings

    name = fresh_name()
    register(settings, name, classifier, ("champion", "challenger"))
    v2 = register(settings, name, classifier, ("challenger",), author=principal("carol"))
    keys = f"{API_KEYS},{LEGACY_REVIEWER}:reviewer"
    app = create_app(settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"}),
                     ServingSettings(api_keys=keys))
    legacy = {"Authorization": f"Bearer {LEGACY_REVIEWER}"}
    with TestClient(app) as c:
        assert c.get("/review/api/pending", params={"model": name}, headers=legacy).status_code == 200  # may read
        for path in (f"versions/{v2}/approve", f"versions/{v2}/reject", "promote"):
            r = c.post(f"/review/api/models/{name}/{path}", json={"reason": "mine, fine"}, headers=legacy)
            assert r.status_code == 403 and "has no name" in r.json()["detail"], (path, r.text)
        r = c.post(f"/review/api/models/{name}/versions/{v2}/approve", json={"reason": "mine"}, headers=bearer("carol"))
        assert r.status_code == 403 and "carol authored" in r.json()["detail"]
        r = c.post(f"/review/api/models/{name}/versions/{v2}/approve", json={"reason": "read"}, headers=bearer("bob"))
        assert r.status_code == 200 and r.json()["reviewer"] == "bob" and r.json()["run_author"] == "carol"
    assert [a.reviewer for a in history(settings, name, v2)] == ["bob"]
    out = _approve(name, v2, "", env={"RISKLOOP_API_KEYS": keys, "RISKLOOP_API_KEY": LEGACY_REVIEWER})
    assert out.exit_code == 2 and f"reviewer:{fingerprint(LEGACY_REVIEWER)} has no name" in _said(out)


def test_author_and_reviewer_compare_case_insensitively(settings: Settings, classifier) -> None:
    """carol's second key, issued as "Carol", is still carol: no approving her own model with it."""
    from fastapi.testclient import TestClient
    from test_promotion import Loader, fresh_name, register

    from riskloop.governance.promotion import evaluate_promotion
    from serving.app import create_app
    from serving.config import ServingSettings

    other_key = "carol-second-key-0123456789"
    keys = f"{API_KEYS},Carol:reviewer:{other_key}"
    name = fresh_name()
    register(settings, name, classifier, ("champion", "challenger"))
    v2 = register(settings, name, classifier, ("challenger",), author=principal("carol"))
    out = _approve(name, v2, "", env={"RISKLOOP_API_KEYS": keys, "RISKLOOP_API_KEY": other_key})
    assert out.exit_code == 2 and "Carol authored" in _said(out)
    app = create_app(settings.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"}),
                     ServingSettings(api_keys=keys))
    with TestClient(app) as c:
        r = c.post(f"/review/api/models/{name}/versions/{v2}/approve", json={"reason": "mine"},
                   headers={"Authorization": f"Bearer {other_key}"})
        assert r.status_code == 403 and "cannot approve" in r.json()["detail"]
    assert "no reviewer approval" in evaluate_promotion(settings, name, load_test_set=Loader()).reason


def test_whoever_triggered_the_training_may_not_approve_it(settings: Settings, classifier) -> None:
    """A DAG run's version: authored by the service, triggered by a person; neither approves it."""
    from test_promotion import fresh_name, register

    from riskloop.governance.authors import author_of, record_author

    name = fresh_name()
    register(settings, name, classifier, ("champion", "challenger"))
    v2 = register(settings, name, classifier, ("challenger",), author=None)
    record_author(settings, name, v2, principal("svc-airflow"), triggered_by="Carol")
    assert author_of(settings, name, v2).people() == ["svc-airflow", "Carol"]
    out = _approve(name, v2, "carol")
    assert out.exit_code == 2 and "carol triggered the training of" in _said(out)
    assert json.loads(_approve(name, v2, "alice").stdout)["triggered_by"] == "Carol"
    with pytest.raises(ValueError, match="has no name"):
        record_author(settings, name, "999", Principal(None, "admin", "abc"))
