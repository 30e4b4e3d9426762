"""Card locations: each card's newest (country, time) sighting, for the impossible-travel rule.

Like ``serving.known_devices``, a cache of the decision log, not an audit table: the decision-log
writer upserts it in the transaction of the log rows, every serving process reads the new rows
back (serving.travel), so a card one worker saw is known to the others too. ``seen_at`` is the
payment's own timestamp (the newest one wins), ``updated_at`` the server's clock at upsert (what a
refresh reads from).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQL = r"""
create table if not exists serving.card_locations (
    card_token text primary key,
    country    text not null,
    seen_at    timestamptz not null,
    updated_at timestamptz not null default clock_timestamp()
);
create index if not exists card_locations_updated_idx on serving.card_locations (updated_at);
"""


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    op.execute("drop table if exists serving.card_locations")
