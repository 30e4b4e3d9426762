"""Baseline: the warehouse's own tables as riskloop created them before migrations existed.

Every statement is idempotent (``if not exists``, ``or replace``), so the baseline applies to a new
warehouse and to one whose tables earlier riskloop processes created; the columns those processes
added over time are in it too (``add column if not exists``).

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SQL = r"""
-- monitoring: alert incidents and their events
create schema if not exists monitoring;

create table if not exists monitoring.alert_state (
    kind                 text not null,
    key                  text not null,
    status               text not null check (status in ('ok', 'pending', 'firing')),
    consecutive_breaches integer not null default 0,
    consecutive_clean    integer not null default 0,
    incident_id          uuid,
    opened_at            timestamptz,
    last_summary         text,
    last_details         jsonb,
    last_evaluated_at    timestamptz not null,
    primary key (kind, key)
);
create table if not exists monitoring.alert_events (
    event_id     uuid primary key,
    incident_id  uuid not null,
    kind         text not null,
    key          text not null,
    status       text not null check (status in ('firing', 'resolved')),
    at           timestamptz not null,
    summary      text not null,
    details      jsonb not null default '{}'::jsonb,
    report_url   text,
    runbook_url  text not null,
    deliveries   jsonb not null default '{}'::jsonb
);
create index if not exists alert_events_incident_idx on monitoring.alert_events (incident_id, at);
-- the last raise/resolve that some sink has not received yet: {"alert": {...}, "sinks": [...]}
alter table monitoring.alert_state add column if not exists undelivered jsonb;

create or replace function monitoring.alert_events_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'monitoring.alert_events is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger alert_events_append_only
    before update or delete on monitoring.alert_events
    for each row execute function monitoring.alert_events_append_only();
create or replace trigger alert_events_no_truncate
    before truncate on monitoring.alert_events
    for each statement execute function monitoring.alert_events_append_only();

-- monitoring: drift reports
create schema if not exists monitoring;

create table if not exists monitoring.drift_reports (
    report_id        uuid primary key,
    mlflow_run_id    text,
    model_name       text not null,
    model_version    text not null,
    model_alias      text,
    window_start     timestamptz,
    window_end       timestamptz,
    n_reference      integer not null,
    n_current        integer not null,
    n_features       integer not null,
    n_drifted        integer,
    share_drifted    double precision,
    drifted_features jsonb not null default '[]'::jsonb,
    score_drift      jsonb,
    verdict          text not null check (verdict in ('ok', 'warning', 'critical', 'insufficient_data')),
    reason           text not null,
    per_feature      jsonb not null default '{}'::jsonb,
    thresholds       jsonb not null default '{}'::jsonb,
    report_path      text,
    created_at       timestamptz not null default now()
);
create index if not exists drift_reports_model_idx
    on monitoring.drift_reports (model_name, model_version, created_at desc);
alter table monitoring.drift_reports add column if not exists performance jsonb;
alter table monitoring.drift_reports add column if not exists target_drift jsonb;
alter table monitoring.drift_reports add column if not exists report_url text;

-- governance: reviewer approvals
create schema if not exists governance;

create table if not exists governance.model_approvals (
    approval_id    uuid primary key,
    decided_at     timestamptz not null,
    model_name     text not null,
    model_version  text not null,
    content_hash   text not null check (content_hash ~ '^[0-9a-f]{64}$'),
    verdict        text not null check (verdict in ('approved', 'rejected')),
    reviewer       text not null check (length(btrim(reviewer)) > 0),
    reason         text not null check (length(btrim(reason)) > 0),
    run_id         text,
    run_author     text,
    check (verdict = 'rejected' or reviewer is distinct from run_author)
);
create index if not exists model_approvals_version_idx on governance.model_approvals (model_name, model_version, decided_at);

create or replace function governance.model_approvals_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'governance.model_approvals is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger model_approvals_append_only
    before update or delete on governance.model_approvals
    for each row execute function governance.model_approvals_append_only();
create or replace trigger model_approvals_no_truncate
    before truncate on governance.model_approvals
    for each statement execute function governance.model_approvals_append_only();

-- governance: promotion decisions
create table if not exists governance.promotion_decisions (
    decision_id           uuid primary key,
    decided_at            timestamptz not null,
    model_name            text not null,
    decision              text not null check (decision in ('promoted', 'refused', 'no_change')),
    reason                text not null,
    champion_version      text,
    challenger_version    text,
    new_champion_version  text,
    margin                double precision not null,
    champion_metrics      jsonb,
    challenger_metrics    jsonb,
    test_start            timestamptz,
    test_end              timestamptz,
    n_test                integer,
    n_test_frauds         integer,
    drift_verdict         text,
    drift_report_id       uuid,
    drift_model_version   text,
    decided_by            text not null
);
create index if not exists promotion_decisions_model_idx
    on governance.promotion_decisions (model_name, decided_at desc);
-- Added since: the reviewer-approval gate's evidence (the challenger's content hash, the approval).
alter table governance.promotion_decisions add column if not exists content_hash text;
alter table governance.promotion_decisions add column if not exists approval_id uuid;
alter table governance.promotion_decisions add column if not exists approved_by text;
-- Added since: the canary gate's evidence (riskloop.governance.canary: verdict, figures, bounds).
alter table governance.promotion_decisions add column if not exists canary_id uuid;
alter table governance.promotion_decisions add column if not exists canary_verdict text;
alter table governance.promotion_decisions add column if not exists canary_evidence jsonb;
-- Added since: the data-contract gate's evidence (the contract runs recorded with the training run).
alter table governance.promotion_decisions add column if not exists contracts_verdict text;
alter table governance.promotion_decisions add column if not exists contracts_evidence jsonb;

create or replace function governance.promotion_decisions_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'governance.promotion_decisions is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger promotion_decisions_append_only
    before update or delete on governance.promotion_decisions
    for each row execute function governance.promotion_decisions_append_only();
create or replace trigger promotion_decisions_no_truncate
    before truncate on governance.promotion_decisions
    for each statement execute function governance.promotion_decisions_append_only();

-- governance: canary state
create table if not exists governance.canary_state (
    state_id            uuid primary key,
    changed_at          timestamptz not null default clock_timestamp(),
    model_name          text not null,
    event               text not null check (event in ('start', 'stop', 'rollback', 'promoted')),
    mode                text not null check (mode in ('off', 'canary', 'shadow')),
    share               double precision not null check (share >= 0 and share <= 1),
    canary_id           uuid not null,
    started_at          timestamptz not null,
    challenger_version  text,
    champion_version    text,
    min_minutes         double precision not null default 0,
    min_decisions       integer not null default 0,
    reason              text not null,
    evidence            jsonb not null default '{}'::jsonb,
    changed_by          text not null
);
create index if not exists canary_state_model_idx on governance.canary_state (model_name, changed_at desc);

create or replace function governance.canary_state_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'governance.canary_state is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger canary_state_append_only
    before update or delete on governance.canary_state
    for each row execute function governance.canary_state_append_only();
create or replace trigger canary_state_no_truncate
    before truncate on governance.canary_state
    for each statement execute function governance.canary_state_append_only();

-- serving: the decision log and the devices it allowed
create schema if not exists serving;
create table if not exists serving.decision_log (
    decision_id        uuid primary key,
    request_id         text not null,
    decided_at         timestamptz not null,
    model_name         text,
    model_version      text,
    model_alias        text,
    score              double precision,
    decision           text not null,
    reasons            jsonb not null default '[]'::jsonb,
    rules              jsonb not null default '[]'::jsonb,
    features           jsonb not null default '{}'::jsonb,
    feature_timestamps jsonb not null default '{}'::jsonb,
    request            jsonb not null,
    latency_ms         double precision,
    degraded           boolean not null default false
);
create index if not exists decision_log_decided_at_idx on serving.decision_log (decided_at);
-- Columns added since the first version: credit decisions, step_up, the policy version and the stateful rule inputs
-- ("signals") a replay needs. Added idempotently so that an existing log is migrated in place;
-- constant defaults make these metadata-only changes (no table rewrite, no UPDATE trigger).
alter table serving.decision_log add column if not exists product text not null default 'fraud';
alter table serving.decision_log add column if not exists policy_version text;
alter table serving.decision_log add column if not exists signals jsonb not null default '{}'::jsonb;
-- Which serving mode decided ('champion' alone, 'canary' routing,
-- 'shadow') and, in shadow or a failed canary route, the other model's outcome
-- ({alias, version, score, latency_ms, error}). The deciding model is model_alias/model_version.
alter table serving.decision_log add column if not exists serving_mode text;
alter table serving.decision_log add column if not exists shadow jsonb;
create index if not exists decision_log_model_decided_idx on serving.decision_log (model_name, decided_at);
alter table serving.decision_log drop constraint if exists decision_log_decision_check;
do $$
begin
    if not exists (select 1 from pg_constraint where conname = 'decision_log_decision_v2_check'
                   and conrelid = 'serving.decision_log'::regclass) then
        alter table serving.decision_log add constraint decision_log_decision_v2_check check (
            (product = 'fraud' and decision in ('allow', 'step_up', 'review', 'deny'))
            or (product = 'credit' and decision in ('approve', 'refer', 'decline')));
    end if;
end
$$;
-- No planner statistics on the JSON columns: no query filters on them by a jsonb operator
-- (readers use the key, decided_at and model columns), yet they were most of the cost of every
-- ANALYZE, and an autoanalyze running beside the serving workers slows their answers
-- (bench/decision_log_analyze.py measures it).
-- Only when one is still set: ALTER TABLE waits for a running ANALYZE.
do $$
begin
    if exists (select 1 from pg_attribute where attrelid = 'serving.decision_log'::regclass and not attisdropped
               and attname in ('feature_timestamps', 'features', 'reasons', 'request', 'rules', 'shadow', 'signals')
               and attstattarget is distinct from 0) then
        alter table serving.decision_log
            alter column feature_timestamps set statistics 0, alter column features set statistics 0,
            alter column reasons set statistics 0, alter column request set statistics 0,
            alter column rules set statistics 0, alter column shadow set statistics 0,
            alter column signals set statistics 0;
    end if;
end
$$;
-- The (customer, device) pairs of allowed fraud payments, written by
-- the writer in the same transaction as their log rows: every serving process reads the new ones
-- back (serving.devices), so a device one worker allowed is known to the others too. A cache of
-- the log, not an audit table: first_allowed_at is the server's clock at insert.
create table if not exists serving.known_devices (
    customer_id      text not null,
    device_id        text not null,
    first_allowed_at timestamptz not null default clock_timestamp(),
    primary key (customer_id, device_id)
);
create index if not exists known_devices_first_allowed_idx on serving.known_devices (first_allowed_at);

create or replace function serving.decision_log_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'serving.decision_log is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger decision_log_append_only
    before update or delete on serving.decision_log
    for each row execute function serving.decision_log_append_only();
create or replace trigger decision_log_no_truncate
    before truncate on serving.decision_log
    for each statement execute function serving.decision_log_append_only();

-- serving: overrides
create schema if not exists serving;
create table if not exists serving.decision_overrides (
    override_id       uuid primary key,
    decision_id       uuid not null references serving.decision_log (decision_id),
    overridden_at     timestamptz not null default now(),
    previous_decision text not null,
    decision          text not null,
    reason            text not null check (length(btrim(reason)) > 0),
    actor             text not null,
    request_id        text
);
create index if not exists decision_overrides_decision_idx on serving.decision_overrides (decision_id, overridden_at);

create or replace function serving.decision_overrides_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'serving.decision_overrides is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger decision_overrides_append_only
    before update or delete on serving.decision_overrides
    for each row execute function serving.decision_overrides_append_only();
create or replace trigger decision_overrides_no_truncate
    before truncate on serving.decision_overrides
    for each statement execute function serving.decision_overrides_append_only();

-- raw: the webhook inbox (the receiver's durable write; dbt's source and the stream's tail)
create schema if not exists raw;
create table if not exists raw.webhook_inbox (
  processor text not null,
  event_id text not null,
  event_type text not null,
  signed_at timestamptz not null,
  received_at timestamptz not null,
  body text not null,
  _xid xid8 not null default pg_current_xact_id(),
  primary key (processor, event_id)
);
-- an inbox created before the stream existed: its rows get this statement's xid
alter table raw.webhook_inbox add column if not exists _xid xid8 not null default pg_current_xact_id();
create index if not exists webhook_inbox_xid on raw.webhook_inbox (_xid);
create or replace function raw.notify_webhook_inbox() returns trigger language plpgsql as
$$ begin perform pg_notify('riskloop_webhook_inbox', ''); return null; end $$;
create or replace trigger webhook_inbox_notify after insert on raw.webhook_inbox
    for each statement execute function raw.notify_webhook_inbox();

-- raw: the data-contract runs (raw and marts)
create table if not exists raw.contract_runs (
  run_id uuid primary key,
  run_at timestamptz not null,
  success boolean not null,
  tables text[] not null,
  failures jsonb not null,
  evaluated jsonb not null,
  seconds double precision not null
);
alter table raw.contract_runs add column if not exists schema_name text not null default 'raw';
alter table raw.contract_runs add column if not exists quarantined jsonb not null default '{}'::jsonb;

-- realtime: the stream consumer's parsed payments and offsets
create schema if not exists realtime;
create table if not exists realtime.payment_events (
  processor text not null,
  event_id text not null,
  card_token text,
  customer_id text,
  amount_minor bigint not null,
  occurred_at timestamptz not null,
  primary key (processor, event_id)
);
alter table realtime.payment_events add column if not exists currency text;
create index if not exists payment_events_card on realtime.payment_events (card_token, occurred_at);
create index if not exists payment_events_customer on realtime.payment_events (customer_id, occurred_at);
create table if not exists realtime.stream_offsets (
  consumer text primary key,
  next_xid xid8 not null,
  events bigint not null default 0,
  updated_at timestamptz not null default now()
);
"""


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: drop the warehouse's schemas instead")
