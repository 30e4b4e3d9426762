"""The erased customers and cards, for the writers of the online feature store.

Erasure deletes a customer's (and their cards') rows from the Feast online store, but the warehouse
keeps their payments until retention, so the next materialisation, or the stream consumer on a later
payment, would write their features back. ``privacy.erased_entities`` lists every erased entity by
kind (customer | card) and the keyed hash of its id under the subject master key
(``riskloop.core.subject_keys.SubjectKeys.entity_hash``; a customer's is the erasure record's
``subject_hash``), never the id in clear; the online writers hash the keys they are about to write
and skip those listed (``riskloop.features.suppression``). Append-only, like the erasure records.

Existing erasures' customers are copied in; their cards were not recorded, so only a new erasure
lists them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SQL = r"""
create table if not exists privacy.erased_entities (
    kind         text not null check (kind in ('customer', 'card')),
    entity_hash  bytea not null,
    erasure_id   uuid not null references privacy.erasures (erasure_id),
    erased_at    timestamptz not null default clock_timestamp(),
    primary key (kind, entity_hash)
);
insert into privacy.erased_entities (kind, entity_hash, erasure_id, erased_at)
    select distinct on (subject_hash) 'customer', subject_hash, erasure_id, erased_at from privacy.erasures
    where subject_kind = 'customer' order by subject_hash, erased_at
    on conflict do nothing;
create or replace trigger erased_entities_append_only before update or delete on privacy.erased_entities
    for each row execute function public.riskloop_append_only();
create or replace trigger erased_entities_no_truncate before truncate on privacy.erased_entities
    for each statement execute function public.riskloop_append_only();
"""


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    op.execute("drop table if exists privacy.erased_entities;")
