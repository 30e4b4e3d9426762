"""The raw-layer data contract: what the simulator lands and what ingestion loads.

One declaration serves the simulator (the columns it must write), ingestion (the DDL of
``raw.*`` and the natural key it upserts on), dbt (declared as sources) and the Great
Expectations suites.  Changing a column here is changing the contract: change all four.
"""

from __future__ import annotations

from dataclasses import dataclass

RAW_SCHEMA = "raw"


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    nullable: bool = False
    description: str = ""


# Columns a producer may omit (ingest fills them with nulls): added to the contract after files
# without them were already landing.
OPTIONAL_INPUT_COLUMNS = frozenset({"card_bin", "card_last4", "age_band"})


@dataclass(frozen=True)
class RawTable:
    """A landed source table: one Parquet file per simulation, one ``raw`` table in Postgres."""

    name: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    description: str
    time_column: str
    # Columns left out of change detection on upsert: a row that differs only there is not an
    # update (a batch file delivered again keeps the arrival time of its first delivery).
    volatile: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def file_name(self) -> str:
        return f"{self.name}.parquet"


WEBHOOK_EVENT_TYPES = (
    "payment.authorized",
    "payment.captured",
    "payment.refunded",
    "dispute.opened",
    "dispute.closed",
)

RAW_TABLES: tuple[RawTable, ...] = (
    RawTable(
        name="webhook_events",
        key=("event_id",),
        time_column="occurred_at",
        description="Payment-processor webhook events, one row per event as the processor sent it.",
        columns=(
            Column("event_id", "text", description="Processor's unique event id (dedup key)."),
            Column("processor", "text", description="'stripe' or 'standard'."),
            Column("event_type", "text", description="One of WEBHOOK_EVENT_TYPES."),
            Column("occurred_at", "timestamptz", description="When the event happened at the processor."),
            Column("received_at", "timestamptz", description="When riskloop received it (arrival time)."),
            Column("payment_id", "text", description="The payment the event is about."),
            Column("card_token", "text", description="Tokenised card (never a PAN): the processor's token, or "
                   "riskloop's keyed HMAC token (pant_…) when the file carried the card number (riskloop.core.pan)."),
            Column("card_bin", "text", nullable=True, description="First six digits of the card (display, IIN)."),
            Column("card_last4", "text", nullable=True, description="Last four digits of the card (display)."),
            Column("customer_id", "text"),
            Column("terminal_id", "text"),
            Column("amount_minor", "bigint", description="Amount in minor units (cents), >= 0."),
            Column("currency", "text", description="ISO 4217 alphabetic code."),
            Column("dispute_id", "text", nullable=True, description="Set on dispute.* events."),
        ),
    ),
    RawTable(
        name="ledger_entries",
        key=("entry_id",),
        time_column="posted_at",
        description="Double-entry ledger lines; the lines of one journal sum to zero per currency.",
        columns=(
            Column("entry_id", "text"),
            Column("journal_id", "text"),
            Column("payment_id", "text"),
            Column("account", "text", description="e.g. 'customer:<id>', 'merchant:<terminal>', 'chargebacks'."),
            Column("amount_minor", "bigint", description="Signed: debit > 0, credit < 0."),
            Column("currency", "text"),
            Column("posted_at", "timestamptz"),
        ),
    ),
    RawTable(
        name="dispute_outcomes",
        key=("dispute_id",),
        time_column="closed_at",
        description="Chargeback outcomes; they arrive days to weeks after the payment.",
        columns=(
            Column("dispute_id", "text"),
            Column("payment_id", "text"),
            Column("opened_at", "timestamptz"),
            Column("closed_at", "timestamptz", description="When the outcome became known (label arrival)."),
            Column("status", "text", description="'won' (merchant kept the money) or 'lost'."),
            Column("fraud_confirmed", "boolean"),
            Column("reason_code", "text"),
            Column("amount_minor", "bigint"),
            Column("currency", "text"),
        ),
    ),
    RawTable(
        name="kyc_records",
        key=("customer_id",),
        time_column="verified_at",
        description="Know-your-customer verification, one row per customer.",
        columns=(
            Column("customer_id", "text"),
            Column("verification_level", "text", description="'basic', 'standard' or 'enhanced'."),
            Column("document_type", "text", description="'passport', 'id_card' or 'driving_licence'."),
            Column("sanctions_screening", "text", description="'clear' or 'hit'."),
            Column("pep", "boolean", description="Politically exposed person."),
            Column("country", "text", description="ISO 3166-1 alpha-2."),
            Column("verified_at", "timestamptz"),
        ),
    ),
    RawTable(
        name="credit_applications",
        key=("application_id",),
        time_column="applied_at",
        description="Credit applications with the applicant's bureau-style attributes at application time.",
        columns=(
            Column("application_id", "text"),
            Column("customer_id", "text"),
            Column("applied_at", "timestamptz"),
            Column("amount_minor", "bigint"),
            Column("currency", "text"),
            Column("term_months", "integer"),
            Column("annual_income_minor", "bigint"),
            Column("debt_to_income", "double precision"),
            Column("n_delinquencies", "integer"),
            Column("credit_history_months", "integer"),
            Column("utilization", "double precision", description="Revolving utilisation, 0..1."),
            Column("age_band", "text", nullable=True,
                   description="Protected attribute (under_35 | 35_to_54 | 55_and_over; null: not stated): "
                               "for fairness checks only, never a model input."),
        ),
    ),
    RawTable(
        name="credit_outcomes",
        key=("application_id",),
        time_column="observed_at",
        description="Repayment outcome of each application, known at observed_at.",
        columns=(
            Column("application_id", "text"),
            Column("defaulted", "boolean"),
            Column("observed_at", "timestamptz"),
            Column("true_default_probability", "double precision",
                   description="The simulator's ground truth PD (the oracle); not a model input."),
        ),
    ),
)

RAW_TABLES_BY_NAME = {t.name: t for t in RAW_TABLES}

# Not a landed file: the webhook receiver (``serving.webhooks``) writes this table as events
# arrive, so it is not in RAW_TABLES (which the simulator writes and ``riskloop.data.ingest`` loads).
# The body is kept exactly as signed (so the row can be re-verified and re-parsed by dbt), except
# that card numbers are tokenised and CVV/track/PIN fields dropped first (riskloop.core.pan).
WEBHOOK_INBOX = RawTable(
    name="webhook_inbox",
    key=("processor", "event_id"),
    time_column="received_at",
    description="Verified processor webhooks as received; a replayed event id writes nothing new.",
    columns=(
        Column("processor", "text", description="'stripe' or 'standard' (the scheme that verified it)."),
        Column("event_id", "text", description="Stripe: the body's id; Standard Webhooks: the webhook-id header."),
        Column("event_type", "text", description="The body's type, as the processor named it."),
        Column("signed_at", "timestamptz", description="The signature timestamp (within tolerance of arrival)."),
        Column("received_at", "timestamptz", description="When the request reached riskloop (arrival time)."),
        Column("body", "text", description="The UTF-8 JSON body, byte for byte as signed unless it carried "
               "card data (then re-serialised with PANs tokenised, CVV/track/PIN dropped)."),
    ),
)


# Processors' batch files (settlement and dispute reports), delivered to object storage and loaded
# by ``riskloop.data.batch_files``: not in RAW_TABLES either (they are not simulator Parquet files).
# One row per line of a file, keyed by (file, line), with the file's arrival time, so
# point-in-time training can tell what was known when.
_BATCH_LINEAGE = (
    Column("source_file", "text", description="Object key under incoming/ (e.g. settlements/stripe/2024-03-01.csv)."),
    Column("line_no", "integer", description="1-based data line of the file (the header is line 0)."),
    Column("arrived_at", "timestamptz", description="When the file landed in object storage (its LastModified)."),
)

SETTLEMENT_FILE_ROWS = RawTable(
    name="settlement_file_rows",
    key=("source_file", "line_no"),
    time_column="arrived_at",
    volatile=("arrived_at",),
    description="Processor settlement files: one line per settled payment, with the processor's fee.",
    columns=(
        *_BATCH_LINEAGE,
        Column("processor", "text", description="'stripe' or 'standard'."),
        Column("payout_id", "text", description="The payout (bank transfer) the line is part of."),
        Column("payment_id", "text", description="The settled payment (the webhooks' payment_id)."),
        Column("amount_minor", "bigint", description="Gross settled amount, minor units."),
        Column("fee_minor", "bigint", description="Processor fee, minor units, >= 0."),
        Column("currency", "text", description="ISO 4217 alphabetic code."),
        Column("settled_at", "timestamptz", description="When the processor settled the payment."),
    ),
)

DISPUTE_FILE_ROWS = RawTable(
    name="dispute_file_rows",
    key=("source_file", "line_no"),
    time_column="arrived_at",
    volatile=("arrived_at",),
    description="Processor dispute reports: the state of each dispute that changed that day.",
    columns=(
        *_BATCH_LINEAGE,
        Column("processor", "text", description="'stripe' or 'standard'."),
        Column("dispute_id", "text", description="The processor's dispute id."),
        Column("payment_id", "text", description="The disputed payment."),
        Column("status", "text", description="'opened', 'won' or 'lost'."),
        Column("fraud_confirmed", "boolean", nullable=True, description="Set once the dispute is closed."),
        Column("reason_code", "text", description="The card scheme's reason code."),
        Column("amount_minor", "bigint", description="Disputed amount, minor units."),
        Column("currency", "text", description="ISO 4217 alphabetic code."),
        Column("updated_at", "timestamptz", description="When the dispute reached this status."),
    ),
)

BATCH_FILE_TABLES: dict[str, RawTable] = {"settlements": SETTLEMENT_FILE_ROWS, "disputes": DISPUTE_FILE_ROWS}
BATCH_LINEAGE_COLUMNS = tuple(c.name for c in _BATCH_LINEAGE)

# Every raw table with a data contract (a GX suite ``expectations/<table>.json``, a dbt source and
# a ``stg_`` model, a page ``docs/contracts/<table>.md``): the landed files and the batch files.
# ``riskloop.data.contracts`` checks them all before dbt runs, and quarantines by their keys.
CONTRACT_TABLES: tuple[RawTable, ...] = (*RAW_TABLES, *BATCH_FILE_TABLES.values())
CONTRACT_TABLES_BY_NAME = {t.name: t for t in CONTRACT_TABLES}
