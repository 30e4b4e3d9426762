"""Retention per data class, on a real warehouse and MLflow server: what aged out goes, and only that.

The append-only tables let a row go only inside a retention transaction and only when it is older
than the declared cutoff; a decision a kept case holds, or one overridden within the period, stays.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from typer.testing import CliRunner

from riskloop.core.config import Settings

NOW = datetime.now(UTC)
OLD, RECENT = NOW - timedelta(days=100), NOW - timedelta(days=1)


def _decision(conn: psycopg.Connection, at: datetime, model: tuple[str, str] | None = None) -> str:
    decision_id = str(uuid.uuid4())
    conn.execute("insert into serving.decision_log (decision_id, request_id, decided_at, decision, request, "
                 "model_name, model_version) values (%s, %s, %s, 'review', '{}'::jsonb, %s, %s)",
                 (decision_id, f"req-{decision_id[:8]}", at, *(model or (None, None))))
    return decision_id


def _case(conn: psycopg.Connection, decision_id: str, opened: datetime, closed: datetime | None) -> str:
    case_id = str(uuid.uuid4())
    events = [("opened", None, {}, opened), ("decision_added", decision_id, {}, opened)]
    if closed is not None:
        events.append(("closed", None, {"disposition": "legitimate", "reason": "customer confirmed"}, closed))
    for kind, dec, details, at in events:
        conn.execute("insert into cases.case_events (event_id, case_id, at, actor, kind, decision_id, details) "
                     "values (%s, %s, %s, 'analyst:test', %s, %s, %s)",
                     (str(uuid.uuid4()), case_id, at, kind, dec, json.dumps(details)))
    conn.execute(
        """insert into cases.cases (case_id, opened_at, source, status, priority, priority_rank, due_at,
               n_decisions, amount_at_risk, n_notes, disposition, disposition_reason, closed_at, closed_by,
               updated_at, last_seq)
           values (%s, %s, 'review', %s, 'P3', 3, %s, 1, 10.0, 0, %s, %s, %s, %s, %s, 3)""",
        (case_id, opened, "closed" if closed else "open", opened + timedelta(days=3),
         "legitimate" if closed else None, "customer confirmed" if closed else None, closed,
         "analyst:test" if closed else None, closed or opened))
    if closed is None:
        conn.execute("insert into cases.open_entities (entity, case_id) values (%s, %s)", (f"customer:{case_id}", case_id))
    return case_id


@pytest.fixture()
def warehouse(stack_env: dict[str, str]) -> tuple[Settings, dict[str, str]]:
    from fixtures_marts import isolated_settings

    settings = isolated_settings("riskloop_t_retention").model_copy(update={
        "retention_raw_payloads_days": 30, "retention_decisions_days": 30, "retention_cases_days": 30})
    ids: dict[str, str] = {}
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        ids["old_plain"] = _decision(conn, OLD)
        conn.execute("insert into serving.decision_outcomes (outcome_id, decision_id, outcome, recorded_at, actor) "
                     "values (%s, %s, 'failed', %s, 'scorer:test')", (str(uuid.uuid4()), ids["old_plain"], OLD))
        ids["old_overridden_lately"] = _decision(conn, OLD)
        conn.execute("insert into serving.decision_overrides (override_id, decision_id, overridden_at, previous_decision, "
                     "decision, reason, actor) values (%s, %s, %s, 'review', 'allow', 'chargeback won', 'reviewer:x')",
                     (str(uuid.uuid4()), ids["old_overridden_lately"], RECENT))
        ids["old_in_closed_case"] = _decision(conn, OLD)
        ids["closed_case"] = _case(conn, ids["old_in_closed_case"], OLD, OLD + timedelta(days=2))
        ids["old_in_open_case"] = _decision(conn, OLD)
        ids["open_case"] = _case(conn, ids["old_in_open_case"], OLD, None)
        ids["recent"] = _decision(conn, RECENT)
        ids["recent_case"] = _case(conn, ids["recent"], RECENT, RECENT + timedelta(hours=2))
        for at, name in ((OLD, "old"), (RECENT, "recent")):
            conn.execute("insert into raw.webhook_inbox (processor, event_id, event_type, signed_at, received_at, body) "
                         "values ('standard', %s, 'payment.authorized', %s, %s, '{}')", (f"evt-{name}", at, at))
        conn.execute("insert into serving.decision_log_dead_letters (dead_lettered_at, error, row_json) "
                     "values (%s, 'unstorable', '{}')", (OLD,))
    return settings, ids


def _present(settings: Settings) -> dict[str, set[str]]:
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        return {
            "decisions": {str(r[0]) for r in conn.execute("select decision_id from serving.decision_log")},
            "cases": {str(r[0]) for r in conn.execute("select case_id from cases.cases")},
            "case_events": {str(r[0]) for r in conn.execute("select distinct case_id from cases.case_events")},
            "inbox": {r[0] for r in conn.execute("select event_id from raw.webhook_inbox")},
            "dead_letters": {str(r[0]) for r in conn.execute("select dead_letter_id from serving.decision_log_dead_letters")},
            "outcomes": {str(r[0]) for r in conn.execute("select decision_id from serving.decision_outcomes")},
        }


def test_dry_run_counts_and_deletes_nothing_then_apply_deletes_exactly_what_aged_out(warehouse) -> None:
    from riskloop.governance import retention

    settings, ids = warehouse
    gov = settings.as_role("governance")  # retention runs as the governance role, which holds no DELETE
    before = _present(settings)
    dry = retention.apply(gov, dry_run=True, actor="test")
    assert _present(settings) == before
    rows = {c.data_class: c.rows for c in dry.classes}
    assert rows["raw_payloads"] == {"raw.webhook_inbox": 1}
    assert rows["cases"] == {"cases.open_entities": 0, "cases.case_events": 3, "cases.cases": 1}
    # the closed case's decision goes with its case; the open case's and the lately overridden one stay
    assert rows["decisions"]["serving.decision_log"] == 2 and rows["decisions"]["serving.decision_outcomes"] == 1
    assert rows["decisions"]["serving.decision_overrides"] == 0
    assert rows["decisions"]["serving.decision_log_dead_letters"] == 1
    assert rows["model_artifacts"] == {}  # no period set: kept

    done = retention.apply(gov, dry_run=False, actor="test")
    assert {c.data_class: c.rows for c in done.classes} == rows
    after = _present(settings)
    assert after["decisions"] == {ids["old_overridden_lately"], ids["old_in_open_case"], ids["recent"]}
    assert after["cases"] == after["case_events"] == {ids["open_case"], ids["recent_case"]}
    assert after["inbox"] == {"evt-recent"} and after["dead_letters"] == set() and after["outcomes"] == set()

    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        runs = conn.execute("select run_id::text, dry_run, data_class, target, rows, actor from governance.retention_runs "
                            "order by ran_at").fetchall()
    assert {r[0] for r in runs} == {dry.run_id, done.run_id}
    assert ("serving.decision_log", 2) in {(r[3], r[4]) for r in runs if r[0] == done.run_id and not r[1]}
    assert all(r[5] == "test" for r in runs)

    again = retention.apply(gov, dry_run=False, actor="test")  # idempotent: nothing more aged out
    assert sum(n for c in again.classes for n in c.rows.values()) == 0


def test_append_only_tables_still_refuse_everything_but_an_aged_out_delete(warehouse) -> None:
    settings, ids = warehouse
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        for statement in (f"delete from serving.decision_log where decision_id = '{ids['old_plain']}'",
                          f"update serving.decision_log set decision = 'allow' where decision_id = '{ids['old_plain']}'",
                          "truncate serving.decision_log cascade"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
            conn.rollback()
        # a declared cutoff lets nothing younger go, and never an update
        conn.execute("select set_config('riskloop.retention_cutoff', %s, true)", ((NOW - timedelta(days=30)).isoformat(),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("delete from cases.case_events where case_id = %s", (ids["recent_case"],))
        conn.rollback()
        conn.execute("select set_config('riskloop.retention_cutoff', %s, true)", ((NOW - timedelta(days=30)).isoformat(),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("update serving.decision_log set decision = 'allow' where decision_id = %s", (ids["old_plain"],))
        conn.rollback()
        # outside a transaction's declaration the cutoff is gone again
        conn.execute("select set_config('riskloop.retention_cutoff', %s, true)", ((NOW - timedelta(days=30)).isoformat(),))
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("delete from serving.decision_outcomes")


def test_model_versions_go_only_without_an_alias_and_unused_by_kept_decisions(warehouse) -> None:
    from riskloop.governance import retention
    from riskloop.models.registry import mlflow_client

    settings, _ = warehouse
    name = f"test-retention-{int(time.time() * 1000)}"
    settings = settings.model_copy(update={"retention_model_artifacts_days": 30, "fraud_model_name": name})
    client = mlflow_client(settings.tracking_uri)
    other = f"{name}-other-team"  # not riskloop's: never touched
    client.create_registered_model(other)
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(name))
    versions = [client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version
                for _ in range(3)]
    client.set_registered_model_alias(name, "champion", versions[0])
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        _decision(conn, RECENT, (name, str(versions[1])))
    later = NOW + timedelta(days=400)  # every version is then past its period

    dry = retention.apply(settings, dry_run=True, actor="test", as_of=later, classes=("model_artifacts",))
    assert [c.rows for c in dry.classes if c.data_class == "model_artifacts"] == [{"mlflow.model_versions": 1}]
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
    other_run = client.create_run(client.create_experiment(other))
    client.create_model_version(other, f"runs:/{other_run.info.run_id}/model", run_id=other_run.info.run_id)
    retention.apply(settings, dry_run=False, actor="test", as_of=later, classes=("model_artifacts",))
    assert len(client.search_model_versions(f"name = '{other}'")) == 1
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'")) == sorted(
        int(v) for v in versions[:2])


def test_cli_reports_the_run_as_json(warehouse) -> None:
    from principals import cli_env

    from riskloop.cli import app

    settings, _ = warehouse
    env = {**os.environ, "RISKLOOP_DATABASE_URL": settings.database_url or "", "RISKLOOP_RETENTION_CASES_DAYS": "30",
           **cli_env("trainer")}
    result = CliRunner().invoke(app, ["retention", "apply", "--dry-run", "--json", "--class", "cases"], env=env)
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout.strip().splitlines()[-1])
    assert run["dry_run"] is True and run["classes"]["cases"]["rows"]["cases.cases"] == 1
    assert run["classes"]["decisions"]["cutoff"] is None
    bad = CliRunner().invoke(app, ["retention", "apply", "--class", "everything"], env=env)
    assert bad.exit_code == 2 and "unknown data classes" in bad.output


def test_cli_applies_as_the_governance_role_and_records_its_principal(warehouse) -> None:
    """`riskloop retention apply` logs in as riskloop_governance (which may not DELETE the decision log)
    and records the CLI's principal as the run's actor; a key that is not an admin's is refused."""
    from principals import cli_env, principal

    from riskloop.cli import app

    settings, ids = warehouse
    env = {**os.environ, "RISKLOOP_DATABASE_URL": settings.database_url or "", "RISKLOOP_RETENTION_DECISIONS_DAYS": "30",
           "RISKLOOP_RETENTION_CASES_DAYS": "30"}
    refused = CliRunner().invoke(app, ["retention", "apply", "--json"], env={**env, **cli_env("alice")})
    assert refused.exit_code == 2 and "may not admin" in refused.output
    result = CliRunner().invoke(app, ["retention", "apply", "--json"], env={**env, **cli_env("trainer")})
    assert result.exit_code == 0, result.output
    assert ids["old_plain"] not in _present(settings)["decisions"]
    run_id = json.loads(result.stdout.strip().splitlines()[-1])["run_id"]
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        actors = {r[0] for r in conn.execute("select actor from governance.retention_runs where run_id = %s", (run_id,))}
    assert actors == {principal("trainer").actor}
    gov = settings.as_role("governance")
    with psycopg.connect(gov.pg.url(gov.warehouse_db, driver=""), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "riskloop_governance"
        for statement in ("delete from serving.decision_log", "update serving.decision_log set decision = decision"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not in the past"):
            conn.execute("select * from governance.retention_purge('decisions', now() + interval '1 day')")
