"""The policy store: decision policies as versions, named lists and emergency rules, as data.

Every table is append-only (UPDATE/DELETE/TRUNCATE refused, like the decision log): a version's
body never changes once drafted, and its life (drafted, backtested, approved, rejected, rolled back
to) is a row each in ``policy.version_events``. A list's entries are the replay of its
``list_events``; emergency rules are started and lifted by ``emergency_events``. All event tables
draw from one sequence, ``policy.change_seq``, so one number says which state a decision ran under
(its ``signals.policy_seq``) and a replay can rebuild exactly that state. Writers serialise on an
advisory lock (riskloop.decisions.policy_store), so the sequence order is the commit order.

Each insert notifies channel ``riskloop_policy``: serving processes LISTEN and apply a change
within a second (and poll the sequence as a fallback).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SQL = r"""
create schema if not exists policy;
create sequence if not exists policy.change_seq;

create table if not exists policy.versions (
    product     text not null check (product in ('fraud', 'credit')),
    version     integer not null check (version >= 1),
    body        text not null,
    digest      text not null,
    author      text not null check (length(btrim(author)) > 0),
    created_at  timestamptz not null default clock_timestamp(),
    primary key (product, version)
);

create table if not exists policy.version_events (
    seq      bigint primary key default nextval('policy.change_seq'),
    at       timestamptz not null default clock_timestamp(),
    product  text not null check (product in ('fraud', 'credit')),
    version  integer not null check (version >= 1),
    kind     text not null check (kind in ('drafted', 'backtested', 'approved', 'rejected', 'rolled_back')),
    actor    text not null check (length(btrim(actor)) > 0),
    reason   text not null default '',
    details  jsonb not null default '{}'::jsonb,
    check (kind not in ('rejected', 'rolled_back') or length(btrim(reason)) > 0)
);
create index if not exists version_events_version_idx on policy.version_events (product, version, seq);

create table if not exists policy.lists (
    name        text primary key check (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    kind        text not null check (kind in ('card', 'customer', 'terminal', 'device', 'ip', 'country', 'bin')),
    description text not null default '',
    created_by  text not null check (length(btrim(created_by)) > 0),
    created_at  timestamptz not null default clock_timestamp()
);

create table if not exists policy.list_events (
    seq         bigint primary key default nextval('policy.change_seq'),
    at          timestamptz not null default clock_timestamp(),
    list_name   text not null references policy.lists (name),
    op          text not null check (op in ('add', 'remove')),
    entry       text not null check (length(entry) > 0),
    reason      text not null check (length(btrim(reason)) > 0),
    expires_at  timestamptz,
    actor       text not null check (length(btrim(actor)) > 0),
    source      text not null default 'api'
);
create index if not exists list_events_entry_idx on policy.list_events (list_name, entry, seq);

create table if not exists policy.emergency_events (
    seq           bigint primary key default nextval('policy.change_seq'),
    at            timestamptz not null default clock_timestamp(),
    op            text not null check (op in ('start', 'lift')),
    stop_seq      bigint,
    product       text not null default 'fraud' check (product in ('fraud', 'credit')),
    kind          text check (kind in ('review_above', 'deny_bin', 'deny_terminal', 'deny_card', 'rules_only')),
    amount_minor  bigint check (amount_minor > 0),
    value         text,
    reason        text not null check (length(btrim(reason)) > 0),
    expires_at    timestamptz,
    actor         text not null check (length(btrim(actor)) > 0),
    check ((op = 'start') = (stop_seq is null)),
    check (op <> 'start' or (kind is not null and expires_at is not null)),
    check (kind is distinct from 'review_above' or amount_minor is not null),
    check (kind not in ('deny_bin', 'deny_terminal', 'deny_card') or length(btrim(value)) > 0)
);

create or replace function policy.append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'policy.% is append-only: % refused', tg_table_name, tg_op
        using errcode = 'insufficient_privilege';
end
$$;

create or replace function policy.notify_change() returns trigger
language plpgsql as $$
begin
    perform pg_notify('riskloop_policy', tg_table_name);
    return null;
end
$$;
"""

TABLES = ("versions", "version_events", "lists", "list_events", "emergency_events")
TRIGGERS = "\n".join(
    f"""create or replace trigger {t}_append_only before update or delete on policy.{t}
    for each row execute function policy.append_only();
create or replace trigger {t}_no_truncate before truncate on policy.{t}
    for each statement execute function policy.append_only();
create or replace trigger {t}_notify after insert on policy.{t}
    for each statement execute function policy.notify_change();""" for t in TABLES)


def upgrade() -> None:
    op.execute(SQL + TRIGGERS)


def downgrade() -> None:
    op.execute("drop schema if exists policy cascade;")
