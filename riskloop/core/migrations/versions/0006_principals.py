"""Model authors as principals, and four eyes on them.

``governance.model_authors``: who registered each model version, recorded by riskloop at registration
(the authenticated principal of the training, and for a DAG run the person who triggered it), not
MLflow's client-declared ``user_id``. One row per version, append-only. ``model_approvals`` gains a
check (for new rows): an approval names a known author other than the reviewer, compared
case-insensitively; ``run_author`` now holds that principal.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SQL = r"""
create table if not exists governance.model_authors (
    model_name     text not null,
    model_version  text not null,
    author         text not null check (length(btrim(author)) > 0),
    author_role    text not null,
    key_id         text not null,
    triggered_by   text,
    run_id         text,
    recorded_at    timestamptz not null default clock_timestamp(),
    primary key (model_name, model_version)
);

create or replace function governance.model_authors_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'governance.model_authors is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger model_authors_append_only
    before update or delete on governance.model_authors
    for each row execute function governance.model_authors_append_only();
create or replace trigger model_authors_no_truncate
    before truncate on governance.model_authors
    for each statement execute function governance.model_authors_append_only();

alter table governance.model_approvals add column if not exists triggered_by text;
do $$
begin
    if not exists (select 1 from pg_constraint where conname = 'model_approvals_four_eyes_on_principals') then
        -- not valid: earlier rows were checked against MLflow's user_id; new rows against principals
        alter table governance.model_approvals add constraint model_approvals_four_eyes_on_principals
            check (verdict = 'rejected' or (run_author is not null
                   and lower(btrim(reviewer)) <> lower(btrim(run_author))
                   and lower(btrim(reviewer)) is distinct from lower(btrim(triggered_by)))) not valid;
    end if;
end
$$;
"""


def upgrade() -> None:
    op.execute(SQL)
