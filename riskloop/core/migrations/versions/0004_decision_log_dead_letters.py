"""Decision-log dead letters: a decision row the writer could not store, set aside with the error.

The writer isolates a batch that Postgres refuses row by row (each in a savepoint); a row that
still fails lands here instead of holding every later decision back. ``row_json`` is text, not
jsonb: what put a row here is usually text jsonb refuses (``\\u0000``), so it is kept
JSON-encoded with every non-ASCII character escaped. Append-only, like the log it stands in for.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SQL = r"""
create table if not exists serving.decision_log_dead_letters (
    dead_letter_id    bigint generated always as identity primary key,
    dead_lettered_at  timestamptz not null default clock_timestamp(),
    decision_id       text,
    product           text,
    error             text not null,
    row_json          text not null
);
create index if not exists decision_log_dead_letters_at_idx on serving.decision_log_dead_letters (dead_lettered_at);

create or replace function serving.decision_log_dead_letters_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'serving.decision_log_dead_letters is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger decision_log_dead_letters_append_only
    before update or delete on serving.decision_log_dead_letters
    for each row execute function serving.decision_log_dead_letters_append_only();
create or replace trigger decision_log_dead_letters_no_truncate
    before truncate on serving.decision_log_dead_letters
    for each statement execute function serving.decision_log_dead_letters_append_only();
"""


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    op.execute("drop table if exists serving.decision_log_dead_letters; "
               "drop function if exists serving.decision_log_dead_letters_append_only();")
