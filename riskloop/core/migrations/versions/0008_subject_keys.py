"""Crypto-shredding: one data key per customer, and the record of each erasure.

The personal fields of a decision's request are stored encrypted under their customer's data key
(``riskloop.core.subject_keys``); erasing the customer deletes that key, so the append-only rows
stay whole for audit while what they hold of the person can no longer be read.

``privacy.subject_keys`` is the one table of personal data from which rows are deleted outright:
a row is the customer's key wrapped (AES-GCM) by a master key kept outside the database, found by
``subject_hash`` (a keyed hash of the customer id under that master key); ``key_id`` is what the
sealed rows name. ``privacy.erasures`` is append-only: who erased, why, when, the customer by its
keyed hash only, and what the erasure removed; it never names the key, so after erasure nothing links
the subject to the rows sealed under it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SQL = r"""
create schema if not exists privacy;

create table if not exists privacy.subject_keys (
    key_id        uuid primary key,
    subject_hash  bytea not null unique,
    wrapped_key   bytea not null,
    created_at    timestamptz not null default clock_timestamp()
);

create table if not exists privacy.erasures (
    erasure_id    uuid primary key,
    erased_at     timestamptz not null default clock_timestamp(),
    subject_kind  text not null check (subject_kind in ('customer')),
    subject_hash  bytea not null,
    actor         text not null check (length(btrim(actor)) > 0),
    reason        text not null check (length(btrim(reason)) > 0),
    key_destroyed boolean not null,
    removed       jsonb not null default '{}'::jsonb
);
create index if not exists erasures_subject_idx on privacy.erasures (subject_kind, subject_hash);
create or replace trigger erasures_append_only before update or delete on privacy.erasures
    for each row execute function public.riskloop_append_only();
create or replace trigger erasures_no_truncate before truncate on privacy.erasures
    for each statement execute function public.riskloop_append_only();
"""


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    op.execute("drop schema if exists privacy cascade;")
