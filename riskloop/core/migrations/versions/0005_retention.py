"""Retention: append-only tables let the retention job delete what has aged out, and nothing else.

One trigger function serves every append-only table of decisions and cases. It refuses UPDATE and
TRUNCATE always, and DELETE unless the session declares a retention cutoff
(``riskloop.retention_cutoff``, set by ``riskloop.governance.retention`` for its transaction only)
and the row's own time column, named by the trigger, is older than it. So the retention job can
remove rows that aged out, and a row of the retention period can be deleted by nobody, whatever
cutoff they declare for it. Who may DELETE at all is a matter of grants (the serving role may not).

Each run of the job is recorded in ``governance.retention_runs`` (append-only): what it deleted,
per table, up to which cutoff, and whether it was a dry run.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# (table, its time column, the per-table function its triggers called before)
TABLES = (
    ("serving.decision_log", "decided_at", "serving.decision_log_append_only"),
    ("serving.decision_overrides", "overridden_at", "serving.decision_overrides_append_only"),
    ("serving.decision_outcomes", "recorded_at", "serving.decision_outcomes_append_only"),
    ("serving.decision_log_dead_letters", "dead_lettered_at", "serving.decision_log_dead_letters_append_only"),
    ("cases.case_events", "at", "cases.case_events_append_only"),
)

FUNCTION = r"""
create or replace function public.riskloop_append_only() returns trigger
language plpgsql as $$
declare
    cutoff text := current_setting('riskloop.retention_cutoff', true);
begin
    if tg_op = 'DELETE' and tg_level = 'ROW' and tg_nargs > 0 and coalesce(cutoff, '') <> ''
       and (to_jsonb(old) ->> tg_argv[0])::timestamptz < cutoff::timestamptz then
        return old;
    end if;
    raise exception '%.% is append-only: % refused', tg_table_schema, tg_table_name, tg_op
        using errcode = 'insufficient_privilege';
end
$$;

create table if not exists governance.retention_runs (
    run_id      uuid not null,
    ran_at      timestamptz not null default clock_timestamp(),
    data_class  text not null,
    target      text not null,
    cutoff      timestamptz not null,
    rows        bigint not null,
    dry_run     boolean not null,
    actor       text not null,
    primary key (run_id, target)
);
create index if not exists retention_runs_at_idx on governance.retention_runs (ran_at);
create or replace trigger retention_runs_append_only
    before update or delete on governance.retention_runs
    for each row execute function public.riskloop_append_only();
create or replace trigger retention_runs_no_truncate
    before truncate on governance.retention_runs
    for each statement execute function public.riskloop_append_only();
"""


def _triggers(table: str, row_call: str, statement_call: str) -> str:
    name = table.split(".")[1]
    return (f"create or replace trigger {name}_append_only before update or delete on {table} "
            f"for each row execute function {row_call};\n"
            f"create or replace trigger {name}_no_truncate before truncate on {table} "
            f"for each statement execute function {statement_call};\n")


def upgrade() -> None:
    op.execute("create schema if not exists governance;\n" + FUNCTION + "".join(
        _triggers(table, f"public.riskloop_append_only('{column}')", "public.riskloop_append_only()")
        for table, column, _ in TABLES))


def downgrade() -> None:
    op.execute("".join(_triggers(table, f"{old}()", f"{old}()") for table, _, old in TABLES)
               + "drop table if exists governance.retention_runs;\n"
               + "drop function if exists public.riskloop_append_only();\n")
