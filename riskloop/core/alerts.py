"""Alerts on-call can trust: what tripped, by how much, where the evidence and the runbook are.

Three layers, each usable alone (what a model's drift or the decision stream says is turned into
checks by :mod:`riskloop.monitoring.checks`):

* **Checks → incidents** (:func:`process`). A monitor run produces :class:`Check` s (one per alert
  kind and key: a model's input drift, one product's approval rate, one rule's override rate...),
  each breached, clean, or ``None`` (too little data to say). A small state machine per
  ``(kind, key)`` in ``monitoring.alert_state`` adds hysteresis: an incident is *raised* after
  ``RISKLOOP_ALERT_RAISE_AFTER`` consecutive breaches and *resolved* after
  ``RISKLOOP_ALERT_CLEAR_AFTER`` consecutive clean runs; while it is open, further breaches send
  nothing (one incident, one alert), and ``None`` never moves it (no flapping on thin data).
  Every raise/resolve is appended to ``monitoring.alert_events`` with the delivery outcome.
* **Delivery** (:func:`deliver`): the log always, and whichever sinks Settings configure — a
  Slack-compatible incoming webhook, a generic HTTP webhook signed with the Standard Webhooks
  scheme, SMTP e-mail. Each sink is retried with exponential backoff; a sink that still fails is
  logged and reported in the result, never raised: an alert must not crash the job it reports on.
  The error reported and stored is redacted (:mod:`riskloop.core.redact`): a refused Slack POST's
  error names the webhook URL, whose path is the secret.
* **Airflow failures** (:func:`task_failed`): the DAGs' ``on_failure_callback``; it imports this
  module only when a failure happens, so parsing a DAG file still imports nothing of riskloop.
"""

from __future__ import annotations

import json
import logging
import smtplib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.core.redact import describe, redact, register_settings

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("riskloop.alerts")

SCHEMA = "monitoring"
STATE_TABLE = f"{SCHEMA}.alert_state"
EVENTS_TABLE = f"{SCHEMA}.alert_events"
# Every alert kind has a runbook docs/runbooks/<kind>.md (a test keeps the two in step).
KINDS = ("input_drift", "approval_rate_drop", "review_rate_spike", "override_spike", "degraded_rate",
         "latency_p99", "promotion_blocked", "airflow_failure", "contract_violation", "canary_rollback",
         "performance_drop", "settlement_breaks", "case_sla_breach", "case_queue_growth", "decision_log_dead_letter",
         "model_refused", "emergency_stop")

# --- what a monitor run observed ---------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One observation of one alert kind and key. ``breached`` None: not enough data to judge."""

    kind: str
    key: str
    breached: bool | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    report_url: str | None = None


@dataclass(frozen=True)
class Alert:
    """A raised or resolved incident, as delivered to every sink."""

    event_id: str
    incident_id: str
    kind: str
    key: str
    status: str  # firing | resolved
    summary: str
    runbook_url: str
    report_url: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def title(self) -> str:
        return f"[{self.status.upper()}] {self.kind} {self.key}"

    def text(self) -> str:
        """The human message (Slack text, e-mail body, log line): what, by how much, where to look."""
        lines = [self.title, self.summary]
        if self.report_url:
            lines.append(f"report: {self.report_url}")
        lines.append(f"runbook: {self.runbook_url}")
        lines.append(f"incident: {self.incident_id}")
        for r in self.details.get("related_incidents") or ():
            lines.append(f"related: {r['kind']} {self.key} incident {r['incident_id']}, firing since {r['opened_at']}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = self.at.isoformat()
        out["title"] = self.title
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Alert":
        kwargs = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        kwargs["at"] = datetime.fromisoformat(kwargs["at"])
        return cls(**kwargs)


def runbook_url(settings: Settings, kind: str) -> str:
    return f"{settings.alert_runbook_base_url.rstrip('/')}/{kind}.md"


def report_url(settings: Settings, report_path: str | None) -> str | None:
    """A link to a saved HTML report: under the public base URL if configured, else a file:// URI."""
    if not report_path:
        return None
    if settings.alert_report_base_url:
        return f"{settings.alert_report_base_url.rstrip('/')}/{Path(report_path).name}"
    return Path(report_path).resolve().as_uri()


# --- delivery ----------------------------------------------------------------------------------

Sender = Callable[[Settings, Alert], None]


def _send_slack(settings: Settings, alert: Alert) -> None:
    import httpx

    assert settings.alert_slack_webhook_url is not None
    resp = httpx.post(settings.alert_slack_webhook_url.get_secret_value(), json={"text": alert.text()},
                      timeout=settings.alert_timeout_s)
    resp.raise_for_status()


def _send_webhook(settings: Settings, alert: Alert) -> None:
    """POST the alert as JSON with Standard Webhooks headers; the event id is the ``webhook-id``, so a
    receiver can drop the duplicate a retry after a lost response may cause."""
    import httpx

    from riskloop.core.signatures import sign_standard

    if settings.alert_webhook_secret is None:
        raise ValueError("RISKLOOP_ALERT_WEBHOOK_URL is set but RISKLOOP_ALERT_WEBHOOK_SECRET is not: refusing to "
                         "send an unsigned alert")
    assert settings.alert_webhook_url is not None
    body = json.dumps({"type": f"riskloop.alert.{alert.status}", "data": alert.to_dict()}, default=str).encode()
    headers = sign_standard(alert.event_id, body, settings.alert_webhook_secret.get_secret_value(), int(time.time()))
    resp = httpx.post(settings.alert_webhook_url, content=body, timeout=settings.alert_timeout_s,
                      headers={**headers, "content-type": "application/json"})
    resp.raise_for_status()


def _send_email(settings: Settings, alert: Alert) -> None:
    msg = EmailMessage()
    msg["Subject"] = f"riskloop {alert.title}"
    msg["From"] = settings.alert_email_from
    msg["To"] = ", ".join(_recipients(settings))
    msg["Message-ID"] = f"<{alert.event_id}@riskloop>"
    msg.set_content(alert.text())
    assert settings.alert_smtp_host is not None
    with smtplib.SMTP(settings.alert_smtp_host, settings.alert_smtp_port, timeout=settings.alert_timeout_s) as smtp:
        if settings.alert_smtp_starttls:
            smtp.starttls()
        if settings.alert_smtp_user:
            password = settings.alert_smtp_password.get_secret_value() if settings.alert_smtp_password else ""
            smtp.login(settings.alert_smtp_user, password)
        smtp.send_message(msg)


def _recipients(settings: Settings) -> list[str]:
    return [a.strip() for a in settings.alert_email_to.split(",") if a.strip()]


def sinks(settings: Settings) -> dict[str, Sender]:
    """The configured sinks besides the log (which always gets the alert)."""
    out: dict[str, Sender] = {}
    if settings.alert_slack_webhook_url is not None:
        out["slack"] = _send_slack
    if settings.alert_webhook_url:
        out["webhook"] = _send_webhook
    if settings.alert_smtp_host and _recipients(settings):
        out["email"] = _send_email
    elif settings.alert_smtp_host:
        log.warning("RISKLOOP_ALERT_SMTP_HOST is set but RISKLOOP_ALERT_EMAIL_TO is empty: no alert e-mail")
    return out


def deliver(settings: Settings, alert: Alert, *, only: Iterable[str] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Log the alert, then send it to every configured sink (or those in ``only``) with retries;
    never raises. Returns ``{sink: {"ok": bool, "attempts": n, "error": str | None}}``, errors redacted."""
    register_settings(settings)  # also where riskloop.core.logs.configure never ran (an Airflow task)
    level = logging.ERROR if alert.status == "firing" else logging.WARNING
    log.log(level, "riskloop alert %s", json.dumps(alert.to_dict(), default=str), extra={"alert": alert.to_dict()})
    results: dict[str, Any] = {"log": {"ok": True, "attempts": 1, "error": None}}
    wanted = set(only) if only is not None else None
    for name, send in sinks(settings).items():
        if wanted is not None and name not in wanted:
            continue
        attempts, error = 0, None
        while attempts <= settings.alert_retries:
            attempts += 1
            try:
                send(settings, alert)
                error = None
                break
            except Exception as exc:  # noqa: BLE001 - any sink failure is retried, then reported
                error = describe(exc)
                if attempts <= settings.alert_retries:
                    delay = settings.alert_retry_backoff_s * 2 ** (attempts - 1)
                    log.warning("alert %s to %s failed (attempt %d, retry in %.1fs): %s", alert.event_id, name,
                                attempts, delay, error)
                    sleep(delay)
        if error is not None:
            log.error("alert %s (%s) NOT delivered to %s after %d attempts: %s", alert.event_id, alert.title, name,
                      attempts, error)
        results[name] = {"ok": error is None, "attempts": attempts, "error": error}
    return results


# --- the state machine -------------------------------------------------------------------------

def _transition(conn: "psycopg.Connection", settings: Settings, check: Check, now: datetime) -> Alert | None:
    """Apply one check to its (kind, key) state row (locked); the raised/resolved alert, if any."""
    from psycopg.types.json import Jsonb

    row = conn.execute(
        f"select status, consecutive_breaches, consecutive_clean, incident_id from {STATE_TABLE} "
        "where kind = %s and key = %s for update", (check.kind, check.key)).fetchone()
    if row is None:
        conn.execute(f"insert into {STATE_TABLE} (kind, key, status, last_evaluated_at) values (%s, %s, 'ok', %s) "
                     "on conflict do nothing", (check.kind, check.key, now))
        row = conn.execute(
            f"select status, consecutive_breaches, consecutive_clean, incident_id from {STATE_TABLE} "
            "where kind = %s and key = %s for update", (check.kind, check.key)).fetchone()
    status, breaches, clean, incident = row
    alert_status: str | None = None
    if check.breached is True:
        breaches, clean = breaches + 1, 0
        if status != "firing" and breaches >= settings.alert_raise_after:
            status, incident, alert_status = "firing", uuid.uuid4(), "firing"
        elif status != "firing":
            status = "pending"
    elif check.breached is False:
        breaches, clean = 0, clean + 1
        if status == "firing" and clean >= settings.alert_clear_after:
            status, alert_status = "ok", "resolved"
        elif status == "pending":
            status = "ok"
    conn.execute(
        f"""update {STATE_TABLE} set status = %s, consecutive_breaches = %s, consecutive_clean = %s,
            incident_id = %s, opened_at = case when %s = 'firing' then %s else opened_at end,
            last_summary = %s, last_details = %s, last_evaluated_at = %s where kind = %s and key = %s""",
        (status, breaches, clean, incident, alert_status, now, check.summary, Jsonb(check.details), now,
         check.kind, check.key))
    if alert_status is None:
        return None
    details = check.details
    if alert_status == "firing":
        # The same key's other open incidents (a model's input drift, then its performance drop):
        # separate conditions with their own runbooks, but on-call should see they are one story.
        related = [{"kind": k, "incident_id": str(i), "opened_at": o.isoformat()} for k, i, o in conn.execute(
            f"select kind, incident_id, opened_at from {STATE_TABLE} where key = %s and kind <> %s "
            "and status = 'firing' order by opened_at", (check.key, check.kind)).fetchall()]
        if related:
            details = {**details, "related_incidents": related}
    return Alert(event_id=str(uuid.uuid4()), incident_id=str(incident), kind=check.kind, key=check.key,
                 status=alert_status, summary=check.summary, details=details, report_url=check.report_url,
                 runbook_url=runbook_url(settings, check.kind), at=now)


def process(settings: Settings, checks: Iterable[Check]) -> list[Alert]:
    """Run every check through its state machine and deliver what was raised or resolved.

    The state moves in one transaction per check, *then* the alert is delivered (a slow sink holds
    no lock) and the event row written with the outcome per sink. A sink that missed the last
    raise/resolve of a key gets that same alert (same ``event_id``, so receivers can deduplicate)
    again on the next run, until it takes it: an incident is never lost to one failed POST.
    Returns the alerts raised or resolved by this run.
    """
    from psycopg.types.json import Jsonb

    sent: list[Alert] = []
    for check in checks:
        if check.kind not in KINDS:
            raise ValueError(f"unknown alert kind {check.kind!r} (kinds: {KINDS})")
        _redeliver(settings, check.kind, check.key)
        now = datetime.now(UTC)
        with db.connect(settings) as conn:
            alert = _transition(conn, settings, check, now)
        log.info("alert check %s %s: %s (%s)", check.kind, check.key,
                 {True: "breach", False: "clean", None: "no verdict"}[check.breached], check.summary)
        if alert is None:
            continue
        deliveries = deliver(settings, alert)
        with db.connect(settings) as conn:
            conn.execute(
                f"""insert into {EVENTS_TABLE} (event_id, incident_id, kind, key, status, at, summary, details,
                    report_url, runbook_url, deliveries) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (alert.event_id, alert.incident_id, alert.kind, alert.key, alert.status, alert.at, alert.summary,
                 Jsonb(alert.details), alert.report_url, alert.runbook_url, Jsonb(deliveries)))
            _set_undelivered(conn, alert, deliveries)
        sent.append(alert)
    return sent


def _set_undelivered(conn: "psycopg.Connection", alert: Alert, deliveries: dict[str, Any]) -> None:
    from psycopg.types.json import Jsonb

    failed = sorted(name for name, r in deliveries.items() if not r["ok"])
    conn.execute(f"update {STATE_TABLE} set undelivered = %s where kind = %s and key = %s",
                 (Jsonb({"alert": alert.to_dict(), "sinks": failed}) if failed else None, alert.kind, alert.key))


def _redeliver(settings: Settings, kind: str, key: str) -> None:
    """Re-send the key's last raise/resolve to the sinks that have not received it yet."""
    with db.connect(settings) as conn:
        row = conn.execute(f"select undelivered from {STATE_TABLE} where kind = %s and key = %s and "
                           "undelivered is not null", (kind, key)).fetchone()
    if row is None:
        return
    alert, missing = Alert.from_dict(row[0]["alert"]), row[0]["sinks"]
    log.warning("re-sending alert %s (%s) to %s, which did not receive it", alert.event_id, alert.title, missing)
    deliveries = deliver(settings, alert, only=missing)
    with db.connect(settings) as conn:
        _set_undelivered(conn, alert, {k: v for k, v in deliveries.items() if k in missing})


def notify(settings: Settings, kind: str, key: str, summary: str, details: dict[str, Any] | None = None,
           report: str | None = None) -> Alert:
    """A one-off alert with no hysteresis (an event, not a condition: e.g. a refused promotion)."""
    alert = Alert(event_id=str(uuid.uuid4()), incident_id=str(uuid.uuid4()), kind=kind, key=key, status="firing",
                  summary=summary, details=details or {}, report_url=report, runbook_url=runbook_url(settings, kind))
    deliver(settings, alert)
    return alert


# --- Airflow failure callback ------------------------------------------------------------------

def alert_fields(context: dict[str, Any]) -> dict[str, Any]:
    """The alert's fields from an Airflow callback context (task- or DAG-level; keys may be missing)."""
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    run = context.get("dag_run")
    exc = context.get("exception") or context.get("reason")
    return {
        "alert": "airflow_failure",
        "dag_id": getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "run_id": getattr(ti, "run_id", None) or getattr(run, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
        "logical_date": str(context.get("logical_date")) if context.get("logical_date") else None,
        "error": describe(exc) if isinstance(exc, BaseException) else redact(str(exc)) if exc else exc,
        "log_url": getattr(ti, "log_url", None),
    }


def task_failed(context: dict[str, Any]) -> dict[str, Any]:
    """Log one ERROR record for a failed task or DAG run and send it to the configured sinks;
    never raises (a broken alert must not hide the failure it reports)."""
    try:
        fields = alert_fields(context)
    except Exception as exc:  # noqa: BLE001 - the callback must not fail
        fields = {"alert": "airflow_failure", "error": f"could not read the callback context: {exc}"}
    log.error("riskloop alert %s", json.dumps(fields, default=str), extra={"alert": fields})
    try:
        settings = Settings()
        if sinks(settings):
            key = "/".join(str(fields.get(k)) for k in ("dag_id", "task_id") if fields.get(k)) or "unknown"
            notify(settings, "airflow_failure", key, f"{key} failed (run {fields.get('run_id')}, try "
                   f"{fields.get('try_number')}): {fields.get('error')}", details=fields, report=fields.get("log_url"))
    except Exception:  # noqa: BLE001
        log.exception("airflow failure alert could not be sent beyond the log")
    return fields
