"""The database roles of riskloop's components and what each may do, as SQL.

Each long-running process logs in as its component's role (``Settings.db_role``), never as the owner:
the owner (the stack's login: the embedded server's superuser, or ``RISKLOOP_DATABASE_URL``'s user)
owns the tables, so only it can alter them or disable their append-only triggers. The grants follow
the SQL each component runs:

* ``serving`` reads the decisions, cases, governance, monitoring, realtime and marts tables and
  appends to what it writes: the decision log and its dead letters, outcomes, overrides, case rows,
  approvals, canary changes, alerts, the webhook inbox. It may UPDATE only the mutable state it keeps
  (card locations, open cases, alert state), and DELETE only the open-case index;
* ``ingest`` (loaders, contracts, the stream consumer) writes the raw, quarantine and realtime schemas;
* ``transform`` (dbt) reads everything and builds the staging, intermediate and marts schemas;
* ``governance`` (promotion, review, canary, monitoring, the tripwire watcher, cases sync, retention,
  the policy CLI) reads everything and appends to its tables; retention deletes only through the
  owner's ``governance.retention_purge``, never by a DELETE of its own;
* ``analyst`` reads everything and writes nothing.

Airflow and MLflow (the services the embedded stack starts) log in as ``riskloop_airflow`` and
``riskloop_mlflow``: each owns its own database and the tables in it, and is granted nothing else.

Default privileges extend the same grants to tables created later by migrations, loaders or dbt.
Roles are cluster-wide; the grants are per database (the warehouse and the Feast store).
"""

from __future__ import annotations

import logging

import psycopg

from riskloop.core.config import DB_ROLES, SERVICE_DATABASES, Settings, db_role_name

log = logging.getLogger(__name__)

# Every schema of the warehouse riskloop uses (dbt's three included, created here so their default
# privileges exist before dbt's first table).
SCHEMAS = ("raw", "quarantine", "realtime", "staging", "intermediate", "marts",
           "serving", "cases", "governance", "monitoring", "policy", "privacy")
# Schemas only the components that need them read: the customers' wrapped data keys
# (riskloop.core.subject_keys) are read by serving (to seal) and governance (to erase and reveal);
# ingest reads only the erased entities' hashes (the online store's writers skip them).
PRIVATE = ("privacy",)
_SHARED = tuple(s for s in SCHEMAS if s not in PRIVATE)

# Schemas whose every table a component reads.
READS: dict[str, tuple[str, ...]] = {
    "ingest": ("raw", "quarantine", "realtime", "marts"),
    "transform": _SHARED,
    "serving": ("realtime", "marts", "serving", "cases", "governance", "monitoring", "policy"),
    "governance": SCHEMAS,
    "analyst": _SHARED,
}

# Schemas whose every table (present and future) a component writes, and where it creates tables.
OWNS: dict[str, tuple[str, ...]] = {
    "ingest": ("raw", "quarantine", "realtime"),
    "transform": ("staging", "intermediate", "marts"),
}

# The policy store's tables (riskloop.decisions.policy_store): every change is appended.
POLICY_WRITES = {
    "policy.versions": "insert",
    "policy.version_events": "insert",
    "policy.lists": "insert",
    "policy.list_events": "insert",
    "policy.emergency_events": "insert",
    "policy.list_changes": "insert",
    "policy.list_change_events": "insert",
}

# Single tables a component writes, with exactly the privileges its statements need.
WRITES: dict[str, dict[str, str]] = {
    "serving": {
        "serving.decision_log": "insert",
        "serving.decision_log_dead_letters": "insert",
        "serving.decision_outcomes": "insert",
        "serving.decision_overrides": "insert",
        "serving.known_devices": "insert",
        "serving.card_locations": "insert, update",
        "cases.cases": "insert, update",
        "cases.case_events": "insert",
        "cases.open_entities": "insert, delete",
        "governance.model_approvals": "insert",
        "governance.promotion_decisions": "insert",
        "governance.canary_state": "insert",
        "monitoring.alert_events": "insert",
        "monitoring.alert_state": "insert, update",
        "raw.webhook_inbox": "insert, select (processor, event_id)",  # returning the stored keys
        # the policy store's API (serving.policy_api): drafts, reviews, lists, emergency stops, all appended
        **POLICY_WRITES,
        # a customer's data key, created on the first decision that needs it (never updated or deleted here)
        "privacy.subject_keys": "select, insert",
    },
    "ingest": {
        "monitoring.alert_events": "insert",
        "monitoring.alert_state": "insert, update",
        # materialize and the stream consumer skip erased customers and cards (riskloop.features.suppression)
        "privacy.erased_entities": "select",
    },
    "governance": {
        "governance.model_approvals": "insert",
        "governance.promotion_decisions": "insert",
        "governance.canary_state": "insert",
        "monitoring.alert_events": "insert",
        "monitoring.alert_state": "insert, update",
        "monitoring.drift_reports": "insert",
        "serving.decision_outcomes": "insert",
        "cases.cases": "insert, update",
        "cases.case_events": "insert",
        "cases.open_entities": "insert, delete",
        "raw.contract_runs": "insert",
        "governance.retention_runs": "insert",
        # `riskloop policy …` (the CLI's side of the policy store)
        **POLICY_WRITES,
        # erasure (riskloop.governance.erasure): the key goes, the mutable copies of the person's data go
        "privacy.subject_keys": "delete",
        "privacy.erasures": "insert",
        "privacy.erased_entities": "insert",
        "serving.known_devices": "delete",
        "serving.card_locations": "delete",
        "realtime.payment_events": "delete",
    },
    "analyst": {
        "privacy.erasures": "select",
    },
}

# Sequences a component draws from explicitly (identity columns need no grant of their own).
SEQUENCES: dict[str, tuple[str, ...]] = {
    "serving": ("policy.change_seq",),
    "governance": ("policy.change_seq",),
}

# Functions a component may call, owned by the tables' owner (SECURITY DEFINER): retention deletes
# through one, so no component holds DELETE on an append-only table.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "governance": ("governance.retention_purge(text, timestamptz)",),
}

# The Feast store's database (schema public: registry and online tables).
FEAST_TABLES: dict[str, str] = {
    # feast apply (riskloop.features.store.apply, as ingest: it owns what it creates), push, materialize
    "ingest": "select, insert, update, delete, trigger",
    "transform": "select",
    "serving": "select, trigger",  # reads, and keeps its cache-invalidation trigger installed
    "governance": "select, delete",  # erasure deletes a customer's online rows
    "analyst": "select",
}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(qualified: str) -> str:
    schema, name = qualified.split(".")
    return f"{_ident(schema)}.{_ident(name)}"


def create_roles_psql() -> list[str]:
    """psql statements creating each role that is missing, with its password from a psql variable
    (``-v riskloop_serving_password=…``), and setting the password of one that exists."""
    out = []
    for component in DB_ROLES:
        role = db_role_name(component)
        out.append(f"select format('create role %I login', '{role}') "
                   f"where not exists (select from pg_roles where rolname = '{role}') \\gexec")
        out.append(f"select format('alter role %I login password %L', '{role}', :'{role}_password') \\gexec")
    return out


def warehouse_grants(owner: str, table_exists=None) -> list[str]:
    """Grants on the warehouse, run as its owner ``owner`` (who then also owns the schemas made here).
    ``table_exists(qualified) -> bool`` skips single-table grants on tables not created yet."""
    out = [f"create schema if not exists {_ident(s)}" for s in SCHEMAS]
    roles = {c: db_role_name(c) for c in DB_ROLES}
    out.append(f"grant usage on schema {', '.join(map(_ident, SCHEMAS))} to {', '.join(map(_ident, roles.values()))}")
    # The migration check (riskloop.core.migrations.pending) of every process.
    out.append(f"grant select on table public.alembic_version to {', '.join(map(_ident, roles.values()))}")
    for component, schemas in READS.items():
        role = _ident(roles[component])
        for schema in schemas:
            out.append(f"grant select on all tables in schema {_ident(schema)} to {role}")
            out.append(f"alter default privileges for role {_ident(owner)} in schema {_ident(schema)} "
                       f"grant select on tables to {role}")
    for component, schemas in OWNS.items():
        role = _ident(roles[component])
        for schema in schemas:
            out.append(f"grant usage, create on schema {_ident(schema)} to {role}")
            out.append(f"grant select, insert, update, delete on all tables in schema {_ident(schema)} to {role}")
            out.append(f"grant usage, select on all sequences in schema {_ident(schema)} to {role}")
            out.append(f"alter default privileges for role {_ident(owner)} in schema {_ident(schema)} "
                       f"grant select, insert, update, delete on tables to {role}")
            out.append(f"alter default privileges for role {_ident(owner)} in schema {_ident(schema)} "
                       f"grant usage, select on sequences to {role}")
            # What the component creates itself stays readable by the others that read the schema.
            readers = [_ident(roles[c]) for c, read in READS.items() if schema in read and c != component]
            out.append(f"alter default privileges for role {role} in schema {_ident(schema)} "
                       f"grant select on tables to {', '.join(readers)}")
    for component, tables in WRITES.items():
        role = _ident(roles[component])
        for table, privileges in tables.items():
            if table_exists is None or table_exists(table):
                out.append(f"grant {privileges} on table {_table(table)} to {role}")
    for component, sequences in SEQUENCES.items():
        for sequence in sequences:
            if table_exists is None or table_exists(sequence):
                out.append(f"grant usage on sequence {_table(sequence)} to {_ident(roles[component])}")
    for component, functions in FUNCTIONS.items():
        for function in functions:
            if table_exists is None or table_exists(function.split("(")[0]):
                out.append(f"grant execute on function {function} to {_ident(roles[component])}")
    return out


# The function serving's online cache hangs its triggers on (serving.online_cache), made by the owner
# here so that serving needs no CREATE on the store's schema: a role that may create tables there would
# own Feast's registry tables if it met an empty store first.
ONLINE_CHANGED_CHANNEL = "riskloop_online_changed"
# Row level: a row's change names its entity (``<table> <entity_key hex>``), so a stream's push drops
# only the entities it wrote, not the whole view; a TRUNCATE names the table alone. One notification
# per entity and transaction (Postgres folds identical payloads of one transaction into one).
ONLINE_CHANGED_FUNCTION = "riskloop_online_rows_changed"
ONLINE_CHANGED_SQL = f"""do $do$ begin
if to_regproc('public.{ONLINE_CHANGED_FUNCTION}') is null then
    create function public.{ONLINE_CHANGED_FUNCTION}() returns trigger language plpgsql as $$
    begin
        if TG_OP = 'TRUNCATE' then
            perform pg_notify('{ONLINE_CHANGED_CHANNEL}', TG_TABLE_NAME);
        elsif TG_OP = 'DELETE' then
            perform pg_notify('{ONLINE_CHANGED_CHANNEL}', TG_TABLE_NAME || ' ' || encode(OLD.entity_key, 'hex'));
        else
            perform pg_notify('{ONLINE_CHANGED_CHANNEL}', TG_TABLE_NAME || ' ' || encode(NEW.entity_key, 'hex'));
        end if;
        return null;
    end $$;
end if;
end $do$"""


def feast_grants(owner: str) -> list[str]:
    """Grants on the Feast store's database (schema public), run as its owner."""
    out = [ONLINE_CHANGED_SQL]
    for component, privileges in FEAST_TABLES.items():
        role = _ident(db_role_name(component))
        out.append(f"grant usage on schema public to {role}")
        out.append(f"grant {privileges} on all tables in schema public to {role}")
        out.append(f"alter default privileges for role {_ident(owner)} in schema public grant {privileges} on tables to {role}")
    ingest = _ident(db_role_name("ingest"))
    out.append(f"grant usage, select on all sequences in schema public to {ingest}")
    # ingest (feast apply, materialize) creates the registry and online tables of a new feature view, which
    # the others then read; serving only adds triggers (the TRIGGER privilege) on the function above.
    out.append(f"grant create on schema public to {ingest}")
    out.append(f"revoke create on schema public from {_ident(db_role_name('serving'))}")
    for component, privileges in FEAST_TABLES.items():
        if component != "ingest":
            out.append(f"alter default privileges for role {ingest} in schema public grant {privileges} on tables "
                       f"to {_ident(db_role_name(component))}")
    return out


def dba_script(owner: str, warehouse_db: str, feast_db: str) -> str:
    """The whole setup as one psql script, for a DBA when riskloop's login may not create roles."""
    lines = [
        "-- riskloop's database roles (riskloop db roles --sql). Run with psql as a role that may create",
        f"-- roles and is (or is a member of) the tables' owner {owner}, after `riskloop db upgrade`, e.g.:",
        "--   psql -v ON_ERROR_STOP=1 " + " ".join(f"-v {db_role_name(c)}_password=…" for c in DB_ROLES)
        + f" -d {warehouse_db} -f roles.sql",
        "-- Give each process its role's password: RISKLOOP_DB_ROLE=<component> RISKLOOP_DB_PASSWORD=….",
        *create_roles_psql(),
        f"\\connect {_ident(warehouse_db)}",
        f"set role {_ident(owner)};",
        *(s + ";" for s in warehouse_grants(owner)),
        f"\\connect {_ident(feast_db)}",
        f"set role {_ident(owner)};",
        *(s + ";" for s in feast_grants(owner)),
    ]
    return "\n".join(lines) + "\n"


def _may_create_roles(conn: psycopg.Connection) -> bool:
    row = conn.execute("select rolsuper or rolcreaterole from pg_roles where rolname = current_user").fetchone()
    return bool(row and row[0])


def apply(settings: Settings) -> dict[str, object]:
    """Create the roles (when the owner's login may) with their passwords from ``<home>/secrets`` (or
    ``RISKLOOP_DB_PASSWORD`` for ``db_role``), then grant; idempotent, run by ``riskloop up``.

    Returns what it did: ``roles`` created or updated, ``missing`` roles it could not create (the
    grants then wait for a DBA: ``riskloop db roles --sql``)."""
    from psycopg import sql

    owner = settings.owner_pg
    done: dict[str, object] = {"roles": [], "missing": []}
    with psycopg.connect(owner.url(settings.warehouse_db, driver=""), autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(hashtext('riskloop.roles'))")  # one `up` at a time; freed at close
        may = _may_create_roles(conn)
        existing = {r[0] for r in conn.execute("select rolname from pg_roles where rolname = any(%s)",
                                               ([db_role_name(c) for c in DB_ROLES],))}
        statements = []
        for component in DB_ROLES:
            role = db_role_name(component)
            if not may:
                if role not in existing:
                    done["missing"].append(role)  # type: ignore[union-attr]
                continue
            verb = "alter" if role in existing else "create"
            statements.append(sql.SQL(verb + " role {} login password {}").format(
                sql.Identifier(role), sql.Literal(settings.role_password(component))).as_string(conn))
            done["roles"].append(role)  # type: ignore[union-attr]
        if statements:  # one round trip
            try:
                conn.execute(";\n".join(statements))  # type: ignore[arg-type]
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                # created meanwhile by an `up` on another database of this server (the lock is per database)
                conn.execute(";\n".join(st.replace("create role", "alter role", 1) for st in statements))  # type: ignore[arg-type]
        if done["missing"]:
            log.warning("the roles %s do not exist and %s may not create them: components keep the owner's "
                        "login until a DBA runs `riskloop db roles --sql` (docs/guides/platform-engineer.md)",
                        ", ".join(done["missing"]), owner.user)  # type: ignore[arg-type]
            return done
        tables = {f"{s}.{t}" for s, t in conn.execute(
            "select schemaname, tablename from pg_tables where schemaname = any(%(s)s) "
            "union all select schemaname, sequencename from pg_sequences where schemaname = any(%(s)s) "
            "union all select n.nspname, p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
            "where n.nspname = any(%(s)s)",
            {"s": list(SCHEMAS)})}
        _run(conn, warehouse_grants(owner.user, tables.__contains__))
        _hand_over(conn, owner.user, "transform", OWNS["transform"])
        if may and settings.embedded:
            for service, database in SERVICE_DATABASES.items():
                _own_database(settings, conn, service, database)
    try:
        conn = psycopg.connect(owner.url(settings.feast_db, driver=""), autocommit=True)
    except psycopg.OperationalError as exc:  # not created yet (`riskloop up` creates it, then grants)
        log.info("no grants on %s yet: %s", settings.feast_db, exc)
        return done
    with conn:
        _run(conn, feast_grants(owner.user))
        _hand_over(conn, owner.user, "ingest", ("public",))
    return done


def _hand_over(conn: psycopg.Connection, owner: str, component: str, schemas: tuple[str, ...]) -> None:
    """What the owner's login made in ``schemas``, where ``component`` alone builds and replaces things
    (dbt's schemas; the Feast store, which ingest applies), handed to the component's role so it may
    rebuild them: a stack whose dbt or ``feast apply`` ran as the owner keeps working."""
    role = db_role_name(component)
    rows = conn.execute(
        "select case c.relkind when 'v' then 'view' when 'm' then 'materialized view' else 'table' end, "
        "format('%%I.%%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = any(%(s)s) and c.relkind in ('r', 'p', 'v', 'm') and pg_get_userbyid(c.relowner) = %(o)s "
        "union all select 'function', p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = any(%(s)s) and pg_get_userbyid(p.proowner) = %(o)s "
        "and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')",
        {"s": list(schemas), "o": owner}).fetchall()
    statements = [f"alter {kind} {name} owner to {_ident(role)}" for kind, name in rows]
    if not statements or owner == role:
        return
    try:
        conn.execute(";\n".join(statements))  # type: ignore[arg-type]
        log.info("handed %d objects of %s to %s", len(statements), ", ".join(schemas), role)
    except psycopg.errors.InsufficientPrivilege as exc:  # the owner's login is not a member of the role
        log.warning("could not hand %d objects of %s to %s (%s): a DBA runs `alter … owner to %s`",
                    len(statements), ", ".join(schemas), role, exc.diag.message_primary, role)


def _own_database(settings: Settings, conn: psycopg.Connection, service: str, database: str) -> None:
    """The service's login role (no superuser, no CREATEROLE/CREATEDB) owning ``database`` and every
    object in it: a stack made when the owner's login ran the service has its tables handed over in place."""
    from psycopg import sql

    role = db_role_name(service)
    exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
    attributes = " role {} login nosuperuser nocreaterole nocreatedb password {}"
    values = (sql.Identifier(role), sql.Literal(settings.role_password(service)))
    try:
        conn.execute(sql.SQL(("alter" if exists else "create") + attributes).format(*values))
    except psycopg.errors.DuplicateObject:  # created meanwhile by an `up` on another database of this server
        conn.execute(sql.SQL("alter" + attributes).format(*values))
    if conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone() is None:
        return  # not created yet: `riskloop up` creates it before it applies the roles
    conn.execute(sql.SQL("alter database {} owner to {}").format(sql.Identifier(database), sql.Identifier(role)))
    with psycopg.connect(settings.owner_pg.url(database, driver=""), autocommit=True) as own:
        own.execute(sql.SQL("alter schema public owner to {}").format(sql.Identifier(role)))
        objects = own.execute(
            "select c.relkind, format('%%I.%%I', n.nspname, c.relname) from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%%' "
            "and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f') and c.relowner <> (select oid from pg_roles where rolname = %s) "
            # sequences of a table's column follow their table
            "and not (c.relkind = 'S' and exists (select 1 from pg_depend d where d.objid = c.oid "
            "and d.classid = 'pg_class'::regclass and d.deptype in ('a', 'i')))", (role,)).fetchall()
        kinds = {"v": "view", "m": "materialized view", "S": "sequence", "f": "foreign table"}
        statements = [f"alter {kinds.get(kind, 'table')} {name} owner to {_ident(role)}" for kind, name in objects]
        types = own.execute(
            "select format('%%I.%%I', n.nspname, t.typname) from pg_type t join pg_namespace n on n.oid = t.typnamespace "
            "where n.nspname = 'public' and t.typtype in ('e', 'd') "
            "and t.typowner <> (select oid from pg_roles where rolname = %s)", (role,)).fetchall()
        statements += [f"alter type {name} owner to {_ident(role)}" for (name,) in types]
        if statements:
            log.info("handing %d objects of %s to %s", len(statements), database, role)
            own.execute(";\n".join(statements))  # type: ignore[arg-type]


def _run(conn: psycopg.Connection, statements: list[str]) -> None:
    """All in one round trip (one transaction: a start of the stack stays as fast as before); one by
    one only when some statement is refused."""
    try:
        conn.execute(";\n".join(statements))  # type: ignore[arg-type]
        return
    except psycopg.errors.InsufficientPrivilege:
        pass
    for statement in statements:
        try:
            conn.execute(statement)  # type: ignore[arg-type]
        except psycopg.errors.InsufficientPrivilege as exc:
            # Default privileges for another role need membership in it: a DBA grants those.
            if not statement.startswith("alter default privileges for role"):
                raise
            log.warning("skipped (%s): %s", exc.diag.message_primary, statement)
