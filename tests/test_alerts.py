"""Alerts: delivery to real loopback sinks (HTTP, SMTP), retries, and the hysteresis state machine
on the real database."""

from __future__ import annotations

import dataclasses
import json
import uuid
from email.message import Message

import psycopg
import pytest
from sinks import http_sink, smtp_sink

from riskloop.core.config import PROJECT_ROOT, Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example key


def sample_alert(settings: Settings):
    from riskloop.core.alerts import Alert, report_url, runbook_url

    return Alert(event_id=str(uuid.uuid4()), incident_id=str(uuid.uuid4()), kind="input_drift",
                 key="riskloop-fraud", status="firing",
                 summary="riskloop-fraud v3: 2/6 inputs drifted: amount wasserstein=0.41 (threshold 0.1)",
                 runbook_url=runbook_url(settings, "input_drift"),
                 report_url=report_url(settings, "/tmp/reports/drift_x.html"), details={"share_drifted": 0.33})


def body_text(msg: Message) -> str:
    return msg.get_payload(decode=True).decode() if not msg.is_multipart() else msg.get_payload(0).get_payload()


def test_one_alert_reaches_slack_signed_webhook_email_and_log(caplog) -> None:
    from standardwebhooks import Webhook

    from riskloop.core.alerts import deliver

    with http_sink() as http, smtp_sink() as smtp:
        settings = Settings(alert_slack_webhook_url=http.url("/slack"), alert_webhook_url=http.url("/hook"),
                            alert_webhook_secret=SECRET, alert_smtp_host="127.0.0.1", alert_smtp_port=smtp.port,
                            alert_email_to="oncall@example.org, risk@example.org",
                            alert_report_base_url="https://reports.example.org/riskloop")
        alert = sample_alert(settings)
        with caplog.at_level("ERROR", logger="riskloop.alerts"):
            result = deliver(settings, alert)

        assert {k: v["ok"] for k, v in result.items()} == {"log": True, "slack": True, "webhook": True, "email": True}
        slack = json.loads(http.bodies("/slack")[0])["text"]
        for needle in ("[FIRING] input_drift riskloop-fraud", "amount wasserstein=0.41",
                       "runbook: docs/runbooks/input_drift.md",
                       "report: https://reports.example.org/riskloop/drift_x.html"):
            assert needle in slack

        (_, headers, body), = [r for r in http.requests if r[0] == "/hook"]
        payload = Webhook(SECRET).verify(body, headers)  # raises unless the signature is valid and fresh
        assert headers["webhook-id"] == alert.event_id
        assert payload["type"] == "riskloop.alert.firing"
        assert payload["data"]["runbook_url"] == "docs/runbooks/input_drift.md"
        assert payload["data"]["details"] == {"share_drifted": 0.33}
        with pytest.raises(Exception):  # a tampered body must not verify
            Webhook(SECRET).verify(body.replace(b"0.33", b"0.99"), headers)

        (mail,) = smtp.messages
        assert mail["To"] == "oncall@example.org, risk@example.org"
        assert "[FIRING] input_drift riskloop-fraud" in mail["Subject"]
        assert "amount wasserstein=0.41" in body_text(mail) and "docs/runbooks/input_drift.md" in body_text(mail)

    record = next(r for r in caplog.records if r.name == "riskloop.alerts")
    assert record.alert["incident_id"] == alert.incident_id


def test_failed_delivery_is_retried_then_reported_never_raised() -> None:
    from conftest import free_port

    from riskloop.core.alerts import deliver

    with http_sink() as http:
        http.fail_next = 2
        dead = free_port()  # nothing listens there
        settings = Settings(alert_slack_webhook_url=http.url("/slack"), alert_webhook_url=f"http://127.0.0.1:{dead}/",
                            alert_webhook_secret=SECRET, alert_retries=2, alert_retry_backoff_s=0.5)
        delays: list[float] = []
        result = deliver(settings, sample_alert(settings), sleep=delays.append)

    assert result["slack"] == {"ok": True, "attempts": 3, "error": None}
    assert len(http.bodies("/slack")) == 1
    assert result["webhook"]["ok"] is False and result["webhook"]["attempts"] == 3
    assert "ConnectError" in result["webhook"]["error"]
    assert delays == [0.5, 1.0, 0.5, 1.0]  # exponential backoff, per sink


def test_webhook_without_secret_is_not_sent_unsigned() -> None:
    from riskloop.core.alerts import deliver

    with http_sink() as http:
        settings = Settings(alert_webhook_url=http.url("/hook"), alert_retries=0)
        result = deliver(settings, sample_alert(settings))
    assert result["webhook"]["ok"] is False and "SECRET" in result["webhook"]["error"]
    assert http.requests == []


def test_every_alert_kind_has_a_runbook() -> None:
    from riskloop.core.alerts import KINDS

    for kind in KINDS:
        path = PROJECT_ROOT / "docs" / "runbooks" / f"{kind}.md"
        assert path.is_file(), path
        assert f"`{kind}`" in path.read_text().splitlines()[0]


def test_drift_check_groups_inputs_and_applies_per_feature_thresholds() -> None:
    from riskloop.monitoring.checks import drift_check
    from riskloop.monitoring.drift import ColumnDrift, DriftResult

    per = {"amount": ColumnDrift("amount", "wasserstein", 0.1, 0.41, True),
           "avg_7d": ColumnDrift("avg_7d", "wasserstein", 0.1, 0.15, True),
           "is_night": ColumnDrift("is_night", "K-S p_value", 0.05, 0.01, True),
           "nb_tx": ColumnDrift("nb_tx", "wasserstein", 0.1, 0.02, False)}
    result = DriftResult(report_id=str(uuid.uuid4()), model_name="m", model_version="3", model_alias="champion",
                         verdict="critical", reason="", n_reference=1000, n_current=500, features=tuple(per),
                         per_feature=per, share_drifted=0.75, report_path="/tmp/r.html")

    # avg_7d tolerated up to 0.2; is_night only below p 0.001; nb_tx now drifts at 0.01
    settings = Settings(alert_min_samples=100,
                        alert_feature_thresholds={"avg_7d": 0.2, "is_night": 0.001, "nb_tx": 0.01})
    check = drift_check(settings, result)
    assert check.kind == "input_drift" and check.key == "m" and check.breached is True
    assert set(check.details["drifted"]) == {"amount", "nb_tx"}
    assert "amount wasserstein=0.41 (threshold 0.1)" in check.summary and "2/4 inputs" in check.summary
    assert check.report_url == "file:///tmp/r.html"

    lenient = Settings(alert_min_samples=100, alert_feature_thresholds={"amount": 0.5, "avg_7d": 0.5,
                                                                        "is_night": 0.001})
    assert drift_check(lenient, result).breached is False
    assert drift_check(Settings(alert_min_samples=501), result).breached is None  # too few rows: no verdict


def test_a_few_inputs_past_evidentlys_threshold_are_chance_not_a_page() -> None:
    """Forty inputs are forty tests: on an unchanged world one or two cross Evidently's p 0.05 by chance.
    They page together (the share the drift verdict warns from), or alone when the operator gave that
    input a threshold of its own, or when the model's score moved."""
    from riskloop.monitoring.checks import drift_check
    from riskloop.monitoring.drift import ColumnDrift, DriftResult

    def result(n_drifted: int, score_drifted: bool = False) -> DriftResult:
        per = {f"x{i}": ColumnDrift(f"x{i}", "K-S p_value", 0.05, 0.01 if i < n_drifted else 0.4, i < n_drifted)
               for i in range(40)}
        score = ColumnDrift("score", "K-S p_value", 0.05, 0.01 if score_drifted else 0.5, score_drifted)
        return DriftResult(report_id=str(uuid.uuid4()), model_name="m", model_version="1", model_alias="champion",
                           verdict="ok", reason="", n_reference=5000, n_current=5000, features=tuple(per),
                           per_feature=per, score_drift=score, share_drifted=n_drifted / 40, warning_share=0.2)

    settings = Settings(alert_min_samples=100)
    chance = drift_check(settings, result(6))
    assert chance.breached is False
    assert "6/40 inputs drifted" in chance.summary and "within chance" in chance.summary
    assert set(chance.details["drifted"]) == {f"x{i}" for i in range(6)}  # still reported, for the record
    assert drift_check(settings, result(8)).breached is True  # a fifth of the inputs: the verdict's warning share
    assert drift_check(settings, result(2, score_drifted=True)).breached is True
    watched = Settings(alert_min_samples=100, alert_feature_thresholds={"x0": 0.05})
    assert drift_check(watched, result(1)).breached is True  # the operator asked for this input alone


def events(settings: Settings, key: str) -> list[tuple]:
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        return conn.execute("select status, incident_id, summary from monitoring.alert_events where key = %s "
                            "order by at", (key,)).fetchall()


def test_hysteresis_raises_once_per_incident_and_resolves(settings: Settings) -> None:
    from riskloop.core.alerts import Check, process

    settings = settings.model_copy(update={"alert_raise_after": 2, "alert_clear_after": 2})
    key = f"model-{uuid.uuid4().hex[:6]}"

    def run(breached: bool | None) -> list[str]:
        return [a.status for a in process(settings, [Check("input_drift", key, breached, f"breached={breached}")])]

    assert run(True) == []            # 1 breach: pending
    assert run(False) == []           # a clean run resets it: nothing was ever raised
    assert run(True) == []
    assert run(None) == []            # no verdict: neither counts nor resets
    assert run(True) == ["firing"]    # 2 consecutive breaches: raised
    assert run(True) == []            # still the same incident: no second alert
    assert run(False) == []           # 1 clean run: not yet resolved
    assert run(True) == []            # breach again: the clean streak restarts, still one incident
    assert run(False) == [] and run(None) == []
    assert run(False) == ["resolved"]
    assert run(False) == []

    rows = events(settings, key)
    assert [r[0] for r in rows] == ["firing", "resolved"]
    assert rows[0][1] == rows[1][1]   # one incident id for its raise and its resolve
    assert rows[1][2] == "breached=False"
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from monitoring.alert_events")

    assert run(True) == [] and run(True) == ["firing"]  # a new incident
    assert len({r[1] for r in events(settings, key)}) == 2


def test_one_check_per_key_does_not_couple_keys(settings: Settings) -> None:
    from riskloop.core.alerts import Check, process

    settings = settings.model_copy(update={"alert_raise_after": 1, "alert_clear_after": 1})
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    sent = process(settings, [Check("latency_p99", a, True, "p99 900 ms"), Check("latency_p99", b, False, "ok")])
    assert [(x.key, x.status) for x in sent] == [(a, "firing")]
    with pytest.raises(ValueError, match="unknown alert kind"):
        process(settings, [Check("no_such_kind", a, True, "x")])


def test_a_raise_names_the_same_keys_other_open_incidents(settings: Settings) -> None:
    """A model's input drift, then its performance drop: two incidents (two runbooks), and the second
    page says the first is open, so on-call reads them as one story. Resolved ones are not named."""
    from riskloop.core.alerts import Check, process

    settings = settings.model_copy(update={"alert_raise_after": 1, "alert_clear_after": 1})
    key, other = f"m-{uuid.uuid4().hex[:6]}", f"n-{uuid.uuid4().hex[:6]}"
    (drift,) = process(settings, [Check("input_drift", key, True, "amount drifted"),
                                  Check("input_drift", other, False, "fine")])
    assert "related_incidents" not in drift.details and "related:" not in drift.text()
    (perf,) = process(settings, [Check("performance_drop", key, True, "AP fell")])
    (related,) = perf.details["related_incidents"]
    assert related["kind"] == "input_drift" and related["incident_id"] == drift.incident_id
    assert f"related: input_drift {key} incident {drift.incident_id}, firing since" in perf.text()
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        (logged,) = conn.execute("select details from monitoring.alert_events where event_id = %s",
                                 (perf.event_id,)).fetchone()
    assert logged["related_incidents"] == [related]  # recorded with the event, for the incident review
    (resolved,) = process(settings, [Check("input_drift", key, False, "back to normal")])
    assert resolved.status == "resolved" and "related_incidents" not in resolved.details
    process(settings, [Check("performance_drop", key, False, "recovered")])
    (again,) = process(settings, [Check("performance_drop", key, True, "AP fell again")])
    assert "related_incidents" not in again.details  # the drift incident is closed now


def test_an_alert_a_sink_missed_is_resent_on_the_next_run(settings: Settings) -> None:
    from pydantic import SecretStr

    from riskloop.core.alerts import Check, process

    key = f"p-{uuid.uuid4().hex[:6]}"
    with http_sink() as http:
        s = settings.model_copy(update={"alert_raise_after": 1, "alert_retries": 0,
                                        "alert_slack_webhook_url": SecretStr(http.url("/slack"))})
        http.fail_next = 1  # the sink is down for the raise
        (raised,) = process(s, [Check("degraded_rate", key, True, "degraded 30% of 400")])
        assert http.bodies("/slack") == []
        assert process(s, [Check("degraded_rate", key, True, "degraded 31% of 400")]) == []  # same incident
        (text,) = [json.loads(b)["text"] for b in http.bodies("/slack")]  # ...but the missed raise arrives
        assert raised.incident_id in text and "degraded 30% of 400" in text
        process(s, [Check("degraded_rate", key, True, "degraded 29% of 400")])
        assert len(http.bodies("/slack")) == 1  # delivered once: not re-sent again


def test_airflow_failure_goes_to_the_configured_sinks(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from riskloop.core.alerts import task_failed

    ti = SimpleNamespace(dag_id="riskloop_train", task_id="train_fraud", run_id="manual__1", try_number=2,
                         log_url="http://airflow/log/1")
    with http_sink() as http:
        monkeypatch.setenv("RISKLOOP_ALERT_SLACK_WEBHOOK_URL", http.url("/slack"))
        task_failed({"ti": ti, "exception": MemoryError("out of memory")})
        (text,) = [json.loads(b)["text"] for b in http.bodies("/slack")]
    assert "[FIRING] airflow_failure riskloop_train/train_fraud" in text and "MemoryError" in text
    assert "report: http://airflow/log/1" in text and "docs/runbooks/airflow_failure.md" in text


def test_performance_check_fires_on_an_ap_drop_beyond_the_margin_or_target_drift() -> None:
    from riskloop.monitoring.checks import performance_check
    from riskloop.monitoring.drift import DriftResult, Performance, TargetDrift

    perf = Performance(n_matured=400, n_positive=40, auc_roc=0.81, average_precision=0.42, test_auc_roc=0.9,
                       test_average_precision=0.6, label_delay_days=7, data_now="2024-03-31T00:00:00+00:00")
    stable = TargetDrift(method="z", threshold=0.01, p_value=0.4, drifted=False, reference_rate=0.1,
                         current_rate=0.1, n_reference=1000, n_current=400)
    base = dict(report_id=str(uuid.uuid4()), model_name="m", model_version="3", model_alias="champion",
                verdict="ok", reason="", n_reference=1000, n_current=500, features=("amount",))
    result = DriftResult(**base, performance=perf, target_drift=stable)

    check = performance_check(Settings(monitor_ap_margin=0.1), result)  # 0.6 - 0.42 = 0.18 > 0.1
    assert check.kind == "performance_drop" and check.key == "m" and check.breached is True
    assert "AP 0.42 is 0.18 below test AP 0.6 (margin 0.1)" in check.summary
    assert check.details["ap_dropped"] and not check.details["target_drifted"]
    assert performance_check(Settings(monitor_ap_margin=0.2), result).breached is False
    # With its bootstrap interval: a drop the interval's top also shows pages; one within the noise does not.
    sure = DriftResult(**base, performance=dataclasses.replace(perf, ap_ci95_low=0.38, ap_ci95_high=0.46),
                       target_drift=stable)
    check = performance_check(Settings(monitor_ap_margin=0.1), sure)
    assert check.breached is True and "(margin 0.1; at least 0.14 at 95 %)" in check.summary
    assert "40 frauds" in check.summary and "95 % interval 0.38-0.46" in check.summary
    noisy = DriftResult(**base, performance=dataclasses.replace(perf, ap_ci95_low=0.25, ap_ci95_high=0.58),
                        target_drift=stable)
    check = performance_check(Settings(monitor_ap_margin=0.1), noisy)
    assert check.breached is False and check.details["ap_drop_within_noise"] and not check.details["ap_dropped"]
    assert "within its sampling noise (interval top 0.58): not a breach" in check.summary

    shifted = DriftResult(**base, performance=perf, target_drift=TargetDrift(
        method="z", threshold=0.01, p_value=1e-6, drifted=True, reference_rate=0.1, current_rate=0.25,
        n_reference=1000, n_current=400))
    check = performance_check(Settings(monitor_ap_margin=0.2), shifted)
    assert check.breached is True and "fraud rate drifted" in check.summary and "25.00% matured" in check.summary
    assert performance_check(Settings(), DriftResult(**base)).breached is None  # nothing matured: no verdict


@pytest.mark.parametrize("where", ["unreachable", "refused"])
def test_a_failed_slack_delivery_never_logs_or_stores_the_webhook_url(settings: Settings, where: str) -> None:
    """The webhook URL's path is Slack's secret. Unreachable: the real hooks.slack.com URL (no route from a
    test). Refused: a loopback stand-in answering 500 as Slack does for a revoked hook; httpx's error then
    quotes the whole URL."""
    import io
    import logging

    from pydantic import SecretStr

    from riskloop.core.alerts import Check, process
    from riskloop.core.logs import configure

    key = f"slack-{uuid.uuid4().hex[:6]}"
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    text, as_json = io.StringIO(), io.StringIO()
    with http_sink() as http:
        http.fail_next = 100
        url = ("https://hooks.slack.com/services/T000/B000/SECRETXXX" if where == "unreachable"
               else http.url("/services/T000/B000/SECRETXXX"))
        s = settings.model_copy(update={"alert_raise_after": 1, "alert_retries": 1, "alert_retry_backoff_s": 0.0,
                                        "alert_timeout_s": 2.0, "alert_slack_webhook_url": SecretStr(url)})
        try:
            configure(s.model_copy(update={"log_json": True}), stream=as_json).set_name("json")  # kept beside...
            configure(s, stream=text)  # ...the text handler
            (alert,) = process(s, [Check("degraded_rate", key, True, "degraded 30% of 400")])
        finally:
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
        if where == "refused":
            assert http.requests == []  # it did reach the stand-in, which refused it
    with psycopg.connect(s.pg.url(s.warehouse_db, driver="")) as conn:
        (deliveries,) = conn.execute("select deliveries from monitoring.alert_events where event_id = %s",
                                     (alert.event_id,)).fetchone()
    assert deliveries["slack"]["ok"] is False and deliveries["slack"]["error"]
    if where == "refused":
        assert "500" in deliveries["slack"]["error"] and "for url '***'" in deliveries["slack"]["error"]
    assert "NOT delivered to slack" in text.getvalue() and "NOT delivered to slack" in as_json.getvalue()
    for out in (json.dumps(deliveries), text.getvalue(), as_json.getvalue()):
        assert "SECRETXXX" not in out
