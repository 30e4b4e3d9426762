"""Small hand-made raw tables that follow riskloop/core/schema.py, for ingestion/contract/dbt tests.

Each payment becomes the webhook events a processor would send (authorized, captured, maybe
refunded or disputed), a balanced ledger journal, and optionally a dispute outcome, so the
frames are consistent with each other the way a real landing is.  Kept tiny on purpose: the
tests check semantics, not volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from riskloop.core.schema import RAW_TABLES, RAW_TABLES_BY_NAME

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


@dataclass
class Payment:
    payment_id: str
    customer_id: str
    terminal_id: str
    tx_at: datetime
    amount_minor: int
    currency: str = "EUR"
    refunded: bool = False
    # dispute: (opened_at, closed_at, status, fraud_confirmed) or None
    dispute: tuple[datetime, datetime, str, bool] | None = None


def default_payments(days: int = 10) -> list[Payment]:
    """Three customers on two terminals, a few payments a day, one fraud known after 3 days."""
    out: list[Payment] = []
    n = 0
    for day in range(days):
        for i, (cust, term) in enumerate([("C1", "T1"), ("C2", "T1"), ("C3", "T2"), ("C1", "T2")]):
            n += 1
            tx_at = T0 + timedelta(days=day, hours=1 + 5 * i, minutes=n % 60)
            out.append(Payment(f"pay_{n:06d}", cust, term, tx_at, 1_000 + 137 * n,
                               refunded=(n % 9 == 0)))
    fraud = out[5]
    fraud.dispute = (fraud.tx_at + timedelta(days=1), fraud.tx_at + timedelta(days=3), "lost", True)
    won = out[10]
    won.dispute = (won.tx_at + timedelta(days=1), won.tx_at + timedelta(days=2), "won", False)
    return out


def make_tables(payments: list[Payment] | None = None, customers: tuple[str, ...] = ("C1", "C2", "C3"),
                ) -> dict[str, pd.DataFrame]:
    """Every raw table as a DataFrame with exactly the contract's columns, in contract order."""
    payments = default_payments() if payments is None else payments
    events, ledger, disputes = [], [], []
    for p in payments:
        base = dict(processor="stripe", payment_id=p.payment_id, card_token=f"tok_{p.customer_id}",
                    customer_id=p.customer_id, terminal_id=p.terminal_id, amount_minor=p.amount_minor,
                    currency=p.currency, dispute_id=None)
        kinds = [("payment.authorized", timedelta(0)), ("payment.captured", timedelta(hours=1))]
        if p.refunded:
            kinds.append(("payment.refunded", timedelta(days=1)))
        for kind, lag in kinds:
            events.append(dict(event_id=f"evt_{p.payment_id}_{kind.split('.')[1]}", event_type=kind,
                               occurred_at=p.tx_at + lag, received_at=p.tx_at + lag + timedelta(seconds=2),
                               **base))
        journal = f"jrn_{p.payment_id}"
        ledger += [
            dict(entry_id=f"{journal}_d", journal_id=journal, payment_id=p.payment_id,
                 account=f"customer:{p.customer_id}", amount_minor=p.amount_minor, currency=p.currency,
                 posted_at=p.tx_at + timedelta(hours=1)),
            dict(entry_id=f"{journal}_c", journal_id=journal, payment_id=p.payment_id,
                 account=f"merchant:{p.terminal_id}", amount_minor=-p.amount_minor, currency=p.currency,
                 posted_at=p.tx_at + timedelta(hours=1)),
        ]
        if p.dispute:
            opened, closed, status, fraud = p.dispute
            dispute_id = f"dp_{p.payment_id}"
            for kind, at in (("dispute.opened", opened), ("dispute.closed", closed)):
                events.append(dict(event_id=f"evt_{p.payment_id}_{kind.split('.')[1]}", event_type=kind,
                                   occurred_at=at, received_at=at + timedelta(seconds=2),
                                   **{**base, "dispute_id": dispute_id}))
            disputes.append(dict(dispute_id=dispute_id, payment_id=p.payment_id, opened_at=opened,
                                 closed_at=closed, status=status, fraud_confirmed=fraud,
                                 reason_code="fraudulent" if fraud else "product_not_received",
                                 amount_minor=p.amount_minor, currency=p.currency))
    kyc = [dict(customer_id=c, verification_level=["basic", "standard", "enhanced"][i % 3],
                document_type="passport", sanctions_screening="clear", pep=(i == 2), country="DE",
                verified_at=T0 - timedelta(days=30)) for i, c in enumerate(customers)]
    apps, outcomes = [], []
    for i, c in enumerate(customers):
        app_id = f"app_{i:04d}"
        applied = T0 + timedelta(days=1 + i)
        apps.append(dict(application_id=app_id, customer_id=c, applied_at=applied,
                         amount_minor=500_000 + 10_000 * i, currency="EUR", term_months=12 * (i + 1),
                         annual_income_minor=4_000_000 + 100_000 * i, debt_to_income=0.2 + 0.1 * i,
                         n_delinquencies=i, credit_history_months=24 + i, utilization=0.3 * i,
                         age_band=[None, "under_35", "55_and_over"][i % 3]))
        outcomes.append(dict(application_id=app_id, defaulted=(i == 1), observed_at=applied + timedelta(days=90),
                             true_default_probability=0.05 + 0.1 * i))
    rows = {"webhook_events": events, "ledger_entries": ledger, "dispute_outcomes": disputes,
            "kyc_records": kyc, "credit_applications": apps, "credit_outcomes": outcomes}
    return {name: frame(name, data) for name, data in rows.items()}


def frame(table: str, rows: list[dict]) -> pd.DataFrame:
    """A frame with the contract's columns and dtypes (also when empty)."""
    spec = RAW_TABLES_BY_NAME[table]
    df = pd.DataFrame(rows, columns=spec.column_names)
    for col in spec.columns:
        if col.pg_type == "timestamptz":
            df[col.name] = pd.to_datetime(df[col.name], utc=True)
        elif col.pg_type in ("bigint", "integer"):
            df[col.name] = df[col.name].astype("int64")
        elif col.pg_type == "boolean":
            df[col.name] = df[col.name].astype(bool)
        elif col.pg_type == "double precision":
            df[col.name] = df[col.name].astype(float)
    return df


def write_landing(tables: dict[str, pd.DataFrame], directory: Path) -> Path:
    """Write ``<table>.parquet`` per raw table, like the simulator's ``write``."""
    directory.mkdir(parents=True, exist_ok=True)
    for spec in RAW_TABLES:
        if spec.name in tables:
            tables[spec.name].to_parquet(directory / spec.file_name, index=False)
    return directory


def reset_warehouse(settings) -> None:
    """Drop what the tests build (raw, dbt schemas) so each test starts from an empty warehouse, then
    migrate it again (the raw schema holds migrated tables too: the webhook inbox, the contract runs)."""
    from riskloop.core import db, migrations

    with db.connect(settings) as conn:
        for schema in ("raw", "quarantine", "staging", "intermediate", "marts"):
            conn.execute(f'drop schema if exists "{schema}" cascade')
        conn.execute(f"drop table if exists public.{migrations.VERSION_TABLE}")
    migrations.upgrade(settings)


def own_warehouse(prefix: str, *, migrate: bool = True):
    """Settings of a new database of its own on the session's server (``<prefix>_<random>``), migrated
    unless ``migrate`` is false: for tests whose rows (a live policy version, say) would steer the others."""
    import uuid

    import psycopg

    from riskloop.core import migrations
    from riskloop.core.config import Settings

    base = Settings()
    name = f"{prefix}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(base.pg.url("postgres", driver=""), autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    settings = Settings(database_url=base.pg.url(name, driver=""))
    if migrate:
        migrations.upgrade(settings)
    return settings


def moved_home(settings, home: Path, **update):
    """The session's settings with another home (its own batch store, landing, run files) on the same
    server: the home's secrets (the server's passwords, the card-token key) come along."""
    import shutil

    shutil.copytree(settings.home / "secrets", home / "secrets", dirs_exist_ok=True)
    return settings.model_copy(update={"home": home, **update})
