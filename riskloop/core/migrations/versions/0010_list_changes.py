"""Maker-checker for lists: a list change is a proposal that goes live only when approved.

``policy.list_changes`` holds each proposal (add or remove, its entries with their reasons and
expiries, its author); ``policy.list_change_events`` its approval or rejection, one append-only
row each, as ``version_events`` does for a version. Approving a change writes its entries to
``policy.list_events`` (``change_id`` says which approved proposal each row came from) in the
same transaction: that insert is what the serving processes are notified of and apply, so a
rejected or pending proposal never reaches a decision. Emergency stops stay immediate.

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SQL = r"""
create table if not exists policy.list_changes (
    change_id   bigint primary key default nextval('policy.change_seq'),
    at          timestamptz not null default clock_timestamp(),
    list_name   text not null references policy.lists (name),
    op          text not null check (op in ('add', 'remove')),
    entries     jsonb not null check (jsonb_typeof(entries) = 'array'),
    n_entries   integer not null check (n_entries >= 1),
    actor       text not null check (length(btrim(actor)) > 0),
    source      text not null default 'api'
);

create table if not exists policy.list_change_events (
    seq        bigint primary key default nextval('policy.change_seq'),
    at         timestamptz not null default clock_timestamp(),
    change_id  bigint not null references policy.list_changes (change_id),
    kind       text not null check (kind in ('approved', 'rejected')),
    actor      text not null check (length(btrim(actor)) > 0),
    reason     text not null default '',
    check (kind <> 'rejected' or length(btrim(reason)) > 0)
);
create unique index if not exists list_change_events_once on policy.list_change_events (change_id);

alter table policy.list_events add column if not exists change_id bigint references policy.list_changes (change_id);
"""

TRIGGERS = "\n".join(
    f"""create or replace trigger {t}_append_only before update or delete on policy.{t}
    for each row execute function policy.append_only();
create or replace trigger {t}_no_truncate before truncate on policy.{t}
    for each statement execute function policy.append_only();""" for t in ("list_changes", "list_change_events"))


def upgrade() -> None:
    op.execute(SQL + TRIGGERS)


def downgrade() -> None:
    op.execute("alter table policy.list_events drop column if exists change_id; "
               "drop table if exists policy.list_change_events; drop table if exists policy.list_changes;")
