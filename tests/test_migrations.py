"""The warehouse's tables come from one place, its Alembic migrations, and from no serving process."""

from __future__ import annotations

import json
import os

import psycopg
import pytest
from typer.testing import CliRunner

from riskloop.core import migrations
from riskloop.core.config import Settings

PLATFORM_TABLES = ("monitoring.alert_state", "monitoring.alert_events", "monitoring.drift_reports",
                   "governance.model_approvals", "governance.promotion_decisions", "governance.canary_state",
                   "serving.decision_log", "serving.known_devices", "serving.card_locations", "serving.decision_overrides",
                   "raw.webhook_inbox", "raw.contract_runs", "realtime.payment_events", "realtime.stream_offsets",
                   "cases.case_events", "cases.cases", "cases.open_entities", "serving.decision_outcomes",
                   "serving.decision_log_dead_letters", "governance.retention_runs", "policy.versions",
                   "policy.version_events", "policy.lists", "policy.list_events", "policy.emergency_events",
                   "governance.pan_rotations", "serving.pan_token_map",
                   "policy.list_changes", "policy.list_change_events",
                   "privacy.subject_keys", "privacy.erasures", "privacy.erased_entities")
APPEND_ONLY = ("monitoring.alert_events", "governance.model_approvals", "governance.promotion_decisions",
               "governance.canary_state", "serving.decision_log", "serving.decision_overrides", "cases.case_events",
               "serving.decision_outcomes", "serving.decision_log_dead_letters", "governance.retention_runs",
               "policy.versions", "policy.version_events", "policy.lists", "policy.list_events", "policy.emergency_events",
               "governance.pan_rotations",
               "policy.list_changes", "policy.list_change_events", "privacy.erasures", "privacy.erased_entities")


def _fresh(stack_env: dict[str, str], name: str) -> Settings:
    """An empty database on the session's server, not migrated."""
    base = Settings()
    with psycopg.connect(base.pg.url("postgres", driver=""), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return Settings(database_url=base.pg.url(name, driver=""))


def _existing(settings: Settings) -> set[str]:
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        return {t for t in PLATFORM_TABLES if conn.execute("select to_regclass(%s)", (t,)).fetchone()[0]}


def test_head_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations.config(Settings()))
    assert script.get_heads() == [migrations.HEAD]


def test_upgrade_creates_every_table_once_and_again_changes_nothing(stack_env: dict[str, str]) -> None:
    settings = _fresh(stack_env, "riskloop_t_migrations")
    assert migrations.current(settings) is None and _existing(settings) == set()
    assert "run `riskloop db upgrade`" in migrations.pending(settings)

    assert migrations.upgrade(settings) == migrations.HEAD
    assert _existing(settings) == set(PLATFORM_TABLES) and migrations.pending(settings) is None
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver=""), autocommit=True) as conn:
        for table in APPEND_ONLY:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(f"truncate {table} cascade")  # cascade: past the FK
        # A warehouse whose tables an earlier riskloop created before migrations existed: the
        # baseline applies over them (every statement is idempotent) and records the revision.
        conn.execute(f"drop table public.{migrations.VERSION_TABLE}")
    assert migrations.current(settings) is None
    assert migrations.upgrade(settings) == migrations.HEAD
    assert migrations.upgrade(settings) == migrations.HEAD  # at head: nothing to do


def test_db_commands_upgrade_and_report_the_revision(stack_env: dict[str, str]) -> None:
    from riskloop.cli import app

    settings = _fresh(stack_env, "riskloop_t_migrations_cli")
    env = {**os.environ, "RISKLOOP_DATABASE_URL": settings.database_url or ""}
    runner = CliRunner()
    behind = runner.invoke(app, ["db", "current"], env=env)
    assert behind.exit_code == 1, behind.output
    assert json.loads(behind.stdout) == {"database": "riskloop_t_migrations_cli", "current": None,
                                         "expected": migrations.HEAD}
    done = runner.invoke(app, ["db", "upgrade"], env=env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.strip().splitlines()[-1])["after"] == migrations.HEAD
    assert runner.invoke(app, ["db", "current"], env=env).exit_code == 0


def test_the_receiver_creates_no_table_and_says_the_warehouse_is_behind(stack_env: dict[str, str],
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A serving process never migrates: on a warehouse nobody upgraded, the webhook receiver starts,
    logs what to run, and creates nothing (its events get 503 from the writer meanwhile)."""
    from fastapi.testclient import TestClient

    from serving.webhooks import create_webhook_app

    settings = _fresh(stack_env, "riskloop_t_migrations_serving")
    with caplog.at_level("ERROR"), TestClient(create_webhook_app(settings)):
        pass
    assert _existing(settings) == set()
    assert any("run `riskloop db upgrade`" in r.getMessage() for r in caplog.records)
