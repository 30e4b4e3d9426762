"""The embedded stack is real: Postgres answers SQL, MLflow answers its REST API, and `up` is idempotent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg

from riskloop.core.config import ALL_DATABASES, PgServer, Settings
from riskloop.ops import stack


def test_pg_server_url_round_trip() -> None:
    server, db = PgServer.from_url("postgresql://ann:p%40ss@db.example:6543/warehouse")
    assert (server.host, server.port, server.user, server.password, db) == (
        "db.example", 6543, "ann", "p@ss", "warehouse")
    assert server.url("x", driver="") == "postgresql://ann:p%40ss@db.example:6543/x"


def test_database_url_points_everything_elsewhere(monkeypatch) -> None:
    monkeypatch.setenv("RISKLOOP_DATABASE_URL", "postgresql://u:pw@pg.internal:5433/risk")
    s = Settings()
    assert not s.embedded
    assert s.warehouse_url == "postgresql+psycopg://u:pw@pg.internal:5433/risk"


def test_stack_databases_exist_and_up_is_idempotent(settings: Settings) -> None:
    with psycopg.connect(settings.pg.url("postgres", driver="")) as conn:
        names = {r[0] for r in conn.execute("select datname from pg_database")}
        version = conn.execute("show server_version").fetchone()[0]
    assert set(ALL_DATABASES) <= names
    assert int(version.split(".")[0]) >= 15
    again = stack.up(settings)
    assert again["postgres"] == "up" and again["mlflow"] == "up"


def test_status_json_cli(settings: Settings) -> None:
    out = subprocess.run([sys.executable, "-m", "riskloop", "status", "--json"], capture_output=True,
                         text=True, check=True, env=os.environ.copy())
    info = json.loads(out.stdout)
    assert info["database_url"].startswith("postgresql://")
    assert info["mlflow_tracking_uri"] == settings.tracking_uri
    assert info["mlflow"] == "up"


def test_mlflow_server_is_backed_by_postgres(settings: Settings) -> None:
    import httpx

    r = httpx.post(f"{settings.tracking_uri}/api/2.0/mlflow/experiments/create",
                   json={"name": "stack-smoke"}, timeout=30)
    assert r.status_code == 200, r.text
    with psycopg.connect(settings.pg.url("riskloop_mlflow", driver="")) as conn:
        names = {r[0] for r in conn.execute("select name from experiments")}
    assert "stack-smoke" in names


def test_settings_environ_hands_the_same_settings_to_a_child(monkeypatch) -> None:
    """What `riskloop up` gives the stream consumer it starts: set in code or read from the
    environment, the child reads back equal settings (secrets, JSON dicts, paths, bools included)."""
    s = Settings(database_url="postgresql://u:p%40w@db:5433/risk", pan_token_key="k-123",
                 review_identities={"abc123": "ann"}, stream_service=False, stream_poll_s=0.25,
                 alert_feature_thresholds={"amount": 0.2})
    for name in list(os.environ):
        if name.startswith("RISKLOOP_"):
            monkeypatch.delenv(name)
    for name, value in s.environ().items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child == s
    assert child.pan_token_key is not None and child.pan_token_key.get_secret_value() == "k-123"
    assert child.stream_service is False and child.review_identities == {"abc123": "ann"}


def test_plain_values_give_a_child_process_the_same_settings() -> None:
    """What the review page's promote job gets on its stdin: JSON of plain values, read back equal
    (nested models such as the case priorities included)."""
    import json

    from riskloop.core.config import CasePriority, plain_values

    s = Settings(database_url="postgresql://u:p@db:5433/risk", pan_token_key="k-123",
                 cases_priorities=[CasePriority(name="urgent", min_score=0.8, min_amount=1_000.0, sla_hours=2.0)])
    child = Settings(**json.loads(json.dumps(plain_values(s))))
    assert child == s and child.cases_priorities[0].name == "urgent"


def test_status_never_prints_the_database_password(settings: Settings) -> None:
    """Against a configured Postgres (RISKLOOP_DATABASE_URL with a password): neither the human output
    nor --json carries the password; the JSON still says where the database is."""
    import dataclasses

    server = dataclasses.replace(settings.pg, password="S3cret-pw!")
    env = {**os.environ, "RISKLOOP_DATABASE_URL": server.url(settings.warehouse_db, driver="")}
    human = subprocess.run([sys.executable, "-m", "riskloop", "status"], capture_output=True, text=True, check=True,
                           env={**env, "COLUMNS": "300"})
    as_json = subprocess.run([sys.executable, "-m", "riskloop", "status", "--json"], capture_output=True, text=True,
                             check=True, env=env)
    for out in (human.stdout, human.stderr, as_json.stdout, as_json.stderr):
        assert "S3cret" not in out and "S3cret-pw%21" not in out
    info = json.loads(as_json.stdout)
    # read as the analyst role (the login status reports), on the configured server
    assert info["database_url"] == f"postgresql://riskloop_analyst:***@{server.host}:{server.port}/{settings.warehouse_db}"
    assert info["postgres"] == "up" and "database_url" in human.stdout + human.stderr  # Rich: stderr
