"""Cases and step-up outcomes: the analysts' queue and what the channel says about a challenge.

``cases.case_events`` is the truth (append-only, refused UPDATE/DELETE/TRUNCATE like the decision
log); ``cases.cases`` and ``cases.open_entities`` are its projection, rewritten from a case's events
in the same transaction as each event (riskloop.decisions.cases), so they can always be rebuilt.
``serving.decision_outcomes`` holds at most one outcome per step_up decision, append-only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SQL = r"""
create schema if not exists cases;

create table if not exists cases.case_events (
    event_id     uuid primary key,
    seq          bigint generated always as identity,
    case_id      uuid not null,
    at           timestamptz not null default clock_timestamp(),
    actor        text not null check (length(btrim(actor)) > 0),
    kind         text not null check (kind in ('opened', 'decision_added', 'claimed', 'released', 'noted', 'closed')),
    decision_id  uuid references serving.decision_log (decision_id),
    details      jsonb not null default '{}'::jsonb,
    check ((kind = 'decision_added') = (decision_id is not null)),
    check (kind <> 'noted' or length(btrim(details->>'text')) > 0),
    check (kind <> 'closed' or (details->>'disposition' in ('fraud_confirmed', 'legitimate', 'inconclusive')
                                and length(btrim(details->>'reason')) > 0))
);
create index if not exists case_events_case_idx on cases.case_events (case_id, seq);
create index if not exists case_events_at_idx on cases.case_events (at);
-- A decision is linked to one case, once: re-running the link (the writer's retry, `riskloop cases sync`) is harmless.
create unique index if not exists case_events_decision_once on cases.case_events (decision_id)
    where kind = 'decision_added';

create or replace function cases.case_events_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'cases.case_events is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger case_events_append_only
    before update or delete on cases.case_events
    for each row execute function cases.case_events_append_only();
create or replace trigger case_events_no_truncate
    before truncate on cases.case_events
    for each statement execute function cases.case_events_append_only();

-- The projection of the events: one row per case, rewritten with every event of the case.
create table if not exists cases.cases (
    case_id             uuid primary key,
    opened_at           timestamptz not null,
    source              text not null check (source in ('review', 'step_up_failed', 'chargeback')),
    customer_id         text,
    card_token          text,
    status              text not null check (status in ('open', 'in_review', 'closed')),
    priority            text not null,
    priority_rank       integer not null,
    due_at              timestamptz not null,
    assignee            text,
    claimed_at          timestamptz,
    n_decisions         integer not null,
    max_score           double precision,
    amount_at_risk      double precision not null,
    n_notes             integer not null,
    disposition         text check (disposition in ('fraud_confirmed', 'legitimate', 'inconclusive')),
    disposition_reason  text,
    closed_at           timestamptz,
    closed_by           text,
    updated_at          timestamptz not null,
    last_seq            bigint not null,
    check ((status = 'closed') = (disposition is not null)),
    check ((status = 'in_review') = (assignee is not null))
);
create index if not exists cases_queue_idx on cases.cases (status, priority_rank, opened_at);
create index if not exists cases_closed_idx on cases.cases (closed_at) where status = 'closed';
-- a case view lists the other cases of its customers and cards
create index if not exists cases_customer_idx on cases.cases (customer_id);
create index if not exists cases_card_idx on cases.cases (card_token);

-- One open case per card and per customer: the entity keys ('card:<token>', 'customer:<id>') of open cases.
create table if not exists cases.open_entities (
    entity   text primary key,
    case_id  uuid not null references cases.cases (case_id)
);
create index if not exists open_entities_case_idx on cases.open_entities (case_id);

-- What the channel says about a step-up challenge: one outcome per step_up decision, never changed.
create table if not exists serving.decision_outcomes (
    outcome_id   uuid primary key,
    decision_id  uuid not null unique references serving.decision_log (decision_id),
    outcome      text not null check (outcome in ('passed', 'failed', 'abandoned')),
    recorded_at  timestamptz not null default clock_timestamp(),
    occurred_at  timestamptz,
    actor        text not null,
    request_id   text
);
create index if not exists decision_outcomes_recorded_idx on serving.decision_outcomes (recorded_at);

create or replace function serving.decision_outcomes_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'serving.decision_outcomes is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
create or replace trigger decision_outcomes_append_only
    before update or delete on serving.decision_outcomes
    for each row execute function serving.decision_outcomes_append_only();
create or replace trigger decision_outcomes_no_truncate
    before truncate on serving.decision_outcomes
    for each statement execute function serving.decision_outcomes_append_only();
"""


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    op.execute("drop table if exists serving.decision_outcomes; drop function if exists "
               "serving.decision_outcomes_append_only(); drop schema if exists cases cascade;")
