"""Retention's deletes as one function owned by the tables' owner: the governance role runs retention
without holding DELETE on the append-only tables.

``governance.retention_purge(data_class, cutoff)`` deletes exactly what retention's rules let go
(riskloop.governance.retention): webhook bodies received before the cutoff; cases closed before it
with their events; decisions made before it that no kept case holds and no newer outcome or
override refers to, with their overrides and outcomes, dead letters and known devices. It declares
the cutoff itself, so the append-only triggers still refuse every younger row, and refuses a cutoff
in the future. SECURITY DEFINER with a fixed search_path; EXECUTE is granted by riskloop.core.roles.

Revision ID: 0011
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SQL = r"""
create or replace function governance.retention_purge(data_class text, cutoff timestamptz)
returns table (target text, n bigint)
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    if cutoff is null or cutoff > now() then
        raise exception 'retention cutoff % is not in the past', cutoff using errcode = 'invalid_parameter_value';
    end if;
    -- transaction-local: the append-only triggers let rows older than this go, for this transaction only
    perform set_config('riskloop.retention_cutoff', cutoff::text, true);
    if data_class = 'raw_payloads' then
        delete from raw.webhook_inbox w where w.received_at < cutoff;
        get diagnostics n = row_count; target := 'raw.webhook_inbox'; return next;
    elsif data_class = 'cases' then
        drop table if exists pg_temp.retention_cases;
        create temp table retention_cases on commit drop as
            select c.case_id from cases.cases c where c.status = 'closed' and c.closed_at < cutoff;
        delete from cases.open_entities o where o.case_id in (select r.case_id from retention_cases r);
        get diagnostics n = row_count; target := 'cases.open_entities'; return next;
        -- every event of a case closed before the cutoff is older than it (closing is the last event)
        delete from cases.case_events e where e.case_id in (select r.case_id from retention_cases r);
        get diagnostics n = row_count; target := 'cases.case_events'; return next;
        delete from cases.cases c where c.case_id in (select r.case_id from retention_cases r);
        get diagnostics n = row_count; target := 'cases.cases'; return next;
    elsif data_class = 'decisions' then
        drop table if exists pg_temp.retention_decisions;
        create temp table retention_decisions on commit drop as
            select d.decision_id from serving.decision_log d
            where d.decided_at < cutoff
              and not exists (select 1 from cases.case_events e where e.decision_id = d.decision_id)
              and not exists (select 1 from serving.decision_outcomes o where o.decision_id = d.decision_id
                              and o.recorded_at >= cutoff)
              and not exists (select 1 from serving.decision_overrides v where v.decision_id = d.decision_id
                              and v.overridden_at >= cutoff);
        delete from serving.decision_overrides v where v.decision_id in (select r.decision_id from retention_decisions r);
        get diagnostics n = row_count; target := 'serving.decision_overrides'; return next;
        delete from serving.decision_outcomes o where o.decision_id in (select r.decision_id from retention_decisions r);
        get diagnostics n = row_count; target := 'serving.decision_outcomes'; return next;
        delete from serving.decision_log d where d.decision_id in (select r.decision_id from retention_decisions r);
        get diagnostics n = row_count; target := 'serving.decision_log'; return next;
        delete from serving.decision_log_dead_letters l where l.dead_lettered_at < cutoff;
        get diagnostics n = row_count; target := 'serving.decision_log_dead_letters'; return next;
        delete from serving.known_devices k where k.first_allowed_at < cutoff;
        get diagnostics n = row_count; target := 'serving.known_devices'; return next;
    else
        raise exception 'unknown data class %', data_class using errcode = 'invalid_parameter_value';
    end if;
end
$$;
revoke all on function governance.retention_purge(text, timestamptz) from public;
"""


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    op.execute("drop function if exists governance.retention_purge(text, timestamptz);")
