"""Card-token key rotation: the rotation record and the token map of the append-only tables.

``governance.pan_rotations`` is append-only (one row when a rotation starts, one when its re-key
finished: who, when, old and new kid, rows changed per table). ``serving.pan_token_map`` maps a
token of an older key to the same card's token under the current key, for the tokens that sit in
append-only tables (the decision log's request, case events), whose rows a rotation must not
rewrite; ``serving.pan_token_current(token)`` is the join key of any token, old or current. The map
holds tokens only (never a key or a PAN), so it may live in the warehouse.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SQL = r"""
create table if not exists governance.pan_rotations (
    seq          bigint generated always as identity primary key,
    rotation_id  uuid not null,
    at           timestamptz not null default clock_timestamp(),
    event        text not null check (event in ('started', 'finished')),
    actor        text not null check (length(btrim(actor)) > 0),
    old_kid      text not null,
    new_kid      text not null,
    counts       jsonb not null default '{}'::jsonb,
    unique (rotation_id, event)
);
create or replace trigger pan_rotations_append_only
    before update or delete on governance.pan_rotations
    for each row execute function public.riskloop_append_only();
create or replace trigger pan_rotations_no_truncate
    before truncate on governance.pan_rotations
    for each statement execute function public.riskloop_append_only();

create table if not exists serving.pan_token_map (
    token          text primary key,
    current_token  text not null,
    mapped_at      timestamptz not null default clock_timestamp()
);
create index if not exists pan_token_map_current_idx on serving.pan_token_map (current_token);

create or replace function serving.pan_token_current(t text) returns text
language sql stable parallel safe as $$
    select coalesce((select m.current_token from serving.pan_token_map m where m.token = t), t)
$$;
"""


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    op.execute("drop function if exists serving.pan_token_current(text); drop table if exists serving.pan_token_map; "
               "drop table if exists governance.pan_rotations;")
