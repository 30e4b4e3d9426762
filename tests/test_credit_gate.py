"""The credit model under the same gates as fraud, fairness included.

Two small worlds built like tests/test_promotion.py's end-to-end gate (synthetic marts written by hand,
Feast applied, versions trained by ``training``; the gate rebuilds the credit test window through Feast
and reads the applicants' age band from ``marts.credit_applicant_groups``): one fair, one where the
simulated world is biased against one age band. The gate runs through the real ``riskloop promote`` CLI.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
from principals import TRAINER, cli_env

from riskloop.core.config import Settings

pytestmark = pytest.mark.slow

APPLICATIONS = 6000  # a test window of about 1,200 applications: group rates within a few points
# These synthetic marts' world defaults about a third of the time (the simulator's, a tenth): the PD
# below which an application counts as approved is set to the credit policy's decline threshold.
APPROVE_BELOW = 0.5


@dataclass
class CreditWorld:
    settings: Settings
    champion: object  # training.train.TrainResult: a small model, the first version
    good: object  # a fuller one, the challenger


def _world(database: str, seed: int, bias: float) -> CreditWorld:
    from fixtures_marts import isolated_settings, make_marts, write_marts

    from riskloop.features import store as features
    from training.train import train_credit

    settings = isolated_settings(database).model_copy(update={
        "credit_model_name": f"test-credit-gate-{uuid.uuid4().hex[:8]}", "canary_required": False,
        # marts written by hand: no contract run ever checked them
        "promotion_require_contracts": False, "fairness_approve_below": APPROVE_BELOW})
    write_marts(settings, make_marts(days=30, customers=60, terminals=30, seed=seed,
                                     applications=APPLICATIONS, credit_bias=bias))
    features.apply(settings)
    champion = train_credit(settings, {"n_estimators": 10, "max_depth": 2}, principal=TRAINER)
    good = train_credit(settings, {"n_estimators": 60}, principal=TRAINER)
    return CreditWorld(settings, champion, good)


@pytest.fixture(scope="module")
def fair(stack_env: dict[str, str]) -> CreditWorld:
    return _world("riskloop_t_credit_fair", seed=21, bias=0.0)


def use_world(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's environment: this world's warehouse and credit model, the waivers its settings carry."""
    for k, v in {"RISKLOOP_DATABASE_URL": settings.database_url, "RISKLOOP_CREDIT_MODEL_NAME": settings.credit_model_name,
                 "RISKLOOP_CANARY_REQUIRED": "false", "RISKLOOP_PROMOTION_REQUIRE_CONTRACTS": "false",
                 "RISKLOOP_FAIRNESS_APPROVE_BELOW": str(APPROVE_BELOW)}.items():
        monkeypatch.setenv(k, v)


def promote(settings: Settings) -> dict:
    """``riskloop promote --model <credit model>`` as an admin runs it; the decision as JSON."""
    from typer.testing import CliRunner

    from riskloop.cli import app

    out = CliRunner().invoke(app, ["promote", "--model", settings.credit_model_name], env=cli_env("trainer"))
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_protected_attribute_is_never_a_model_input(fair: CreditWorld) -> None:
    """The age band is in the warehouse (its own mart) but in no feature view, feature service or model."""
    from riskloop.features.store import CREDIT_SERVICE, feature_store
    from riskloop.models.fairness import PROTECTED_ATTRIBUTE

    store = feature_store(fair.settings)
    for view in store.list_feature_views():
        assert PROTECTED_ATTRIBUTE not in {f.name for f in view.features}, view.name
    service = store.get_feature_service(CREDIT_SERVICE)
    assert all(PROTECTED_ATTRIBUTE not in {f.name for f in p.features} for p in service.feature_view_projections)
    for result in (fair.champion, fair.good):
        assert PROTECTED_ATTRIBUTE not in result.features and PROTECTED_ATTRIBUTE not in result.params["features"]
    # ...while each run measured the groups it never saw
    assert 0.8 <= fair.good.metrics["fairness_air"] <= 1.0
    assert {"approval_rate.under_35", "approval_rate.35_to_54", "approval_rate.55_and_over"} <= set(fair.good.metrics)


def test_credit_challenger_promoted_then_a_worse_one_refused(fair: CreditWorld,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from test_promotion import aliases, approve, stored, version_tags

    from riskloop.governance.review import card
    from training.train import train_credit

    s, name = fair.settings, fair.settings.credit_model_name
    assert aliases(s, name) == {"champion": fair.champion.version, "challenger": fair.good.version}
    the_card = card(s, name, fair.good.version)
    assert "## Fairness" in the_card["description"] and "Adverse impact ratio" in the_card["description"]

    use_world(s, monkeypatch)
    approve(s, name, fair.good.version)
    d = promote(s)
    assert d["decision"] == "promoted", d["reason"]
    for m in ("auc_roc", "brier", "ece"):  # the gate's own figures on the training test window
        assert d["challenger_metrics"][m] == pytest.approx(fair.good.metrics[m]), m
    assert d["challenger_metrics"]["auc_roc"] > d["champion_metrics"]["auc_roc"]
    assert "fair across age bands" in d["reason"] and "card_precision" not in d["reason"]
    assert 0 < d["n_test_frauds"] < d["n_test"]  # the defaults of the test window
    assert aliases(s, name)["champion"] == fair.good.version
    row = stored(s, d["decision_id"])
    assert row["challenger_metrics"]["fairness_air"] >= s.fairness_air_floor

    worse = train_credit(s, {"n_estimators": 2, "max_depth": 1, "learning_rate": 0.05},  # nearly a constant
                         principal=TRAINER)
    approve(s, name, worse.version)
    d = promote(s)
    assert d["decision"] == "refused" and "worse than champion" in d["reason"], d["reason"]
    assert aliases(s, name)["champion"] == fair.good.version
    assert version_tags(s, name, worse.version)["promotion.decision"] == "refused"


def test_review_page_shows_the_credit_evidence(fair: CreditWorld) -> None:
    """After the test above: the refused challenger's card on /review (a real Chromium) shows the gate's
    credit figures and both versions' fairness figures on the same test window."""
    import shutil

    from test_promotion import aliases
    from test_review_page import CHROMIUM, browser, serve

    from serving.app import create_app
    from serving.config import ServingSettings

    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} not installed")
    s, name = fair.settings, fair.settings.credit_model_name
    challenger = aliases(s, name)["challenger"]
    key = "carol-reviewer-key-1234567890"
    app = create_app(s.model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"}),
                     ServingSettings(api_keys=f"carol:reviewer:{key}"))
    with serve(app) as base, browser() as b:
        page = b.new_page()
        page.goto(f"{base}/review")
        page.fill("#key", key)
        page.click("#load")
        page.wait_for_selector(f'#pending tr[data-model="{name}"]')
        page.click(f'#pending tr[data-model="{name}"] button.open')
        page.wait_for_selector("#card:not([hidden])")
        assert page.text_content("#card-title") == f"{name} v{challenger}"
        assert page.text_content("#gate").startswith("refused")
        for m in ("auc_roc", "brier", "ece"):
            assert page.query_selector(f'#gate-metrics tr[data-metric="{m}"]') is not None, m
        assert "one test window" in page.text_content("#fairness-source")
        air = page.text_content('#fairness tr[data-metric="fairness_air"]')
        assert air.count("0.") >= 2 or "1.0000" in air  # this version's and the champion's
        for band in ("under_35", "35_to_54", "55_and_over"):
            assert page.query_selector(f'#fairness tr[data-metric="approval_rate.{band}"]') is not None, band
        assert "## Fairness" in page.text_content("#model-card")


def test_fairness_gate_refuses_a_challenger_in_a_biased_world(stack_env: dict[str, str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The world is biased against the under_35 band: a model that never sees the band still approves it
    far less often, and the gate refuses it on the adverse impact ratio even though it is the better model."""
    from test_promotion import aliases, approve

    world = _world("riskloop_t_credit_biased", seed=21, bias=1.5)
    s, name = world.settings, world.settings.credit_model_name
    assert world.good.metrics["fairness_air"] < s.fairness_air_floor
    use_world(s, monkeypatch)
    approve(s, name, world.good.version)
    d = promote(s)
    assert d["decision"] == "refused", d["reason"]
    assert "fairness gate: adverse impact ratio" in d["reason"] and "< floor 0.8" in d["reason"]
    assert "worse than champion" not in d["reason"]  # refused for fairness alone
    assert aliases(s, name)["champion"] == world.champion.version


def test_fairness_gate_judges_gaps_against_the_champion(stack_env: dict[str, str]) -> None:
    from riskloop.governance.promotion import fairness_gate

    s = Settings()
    champ = {"fairness_air": 0.95, "fairness_tpr_gap": 0.04, "fairness_fpr_gap": 0.02}
    ok, why = fairness_gate(s, champ, {**champ, "fairness_tpr_gap": 0.08})
    assert ok, why
    ok, why = fairness_gate(s, champ, {**champ, "fairness_fpr_gap": 0.10})
    assert not ok and "fpr_gap 0.100 > champion 0.020 + margin 0.05" in why
    ok, why = fairness_gate(s, champ, {**champ, "fairness_air": 0.79})
    assert not ok and "adverse impact ratio 0.790 < floor 0.8" in why
    ok, why = fairness_gate(s, champ, {"fairness_air": float("nan")})
    assert not ok and "not assessable" in why
