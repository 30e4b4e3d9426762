"""riskloop's Feast objects: entities, sources over the dbt marts, feature views, services.

These names are a promise (docs/architecture.md, stage 5): serving and training look them up
by name. Sources are schema-qualified tables of the warehouse (``marts.*``), so the offline
store never depends on a search_path.

Why these TTLs: a customer's rolling spending features are one row per transaction, so a
customer idle for 30 days has no valid value (their 30-day window is empty anyway); the
terminal risk rows are daily, so anything older than 2 days means the daily dbt run stalled
and the model should see "missing" rather than stale risk; a credit application's attributes
are fixed at application time, 90 days covers scoring and any re-scoring during review.
"""

from datetime import timedelta

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, PushSource, RequestSource, ValueType
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

from riskloop.core import windows
from riskloop.features import amount_features

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING,
                  description="A cardholder (one card per customer in the simulator).")
terminal = Entity(name="terminal", join_keys=["terminal_id"], value_type=ValueType.STRING,
                  description="A merchant payment terminal.")
card = Entity(name="card", join_keys=["card_token"], value_type=ValueType.STRING,
              description="A card, by its token (processor fingerprint or riskloop's keyed PAN token; never a PAN).")
application = Entity(name="application", join_keys=["application_id"], value_type=ValueType.STRING,
                     description="A credit application.")

customer_spending_source = PostgreSQLSource(
    name="customer_spending_features",
    table="marts.customer_spending_features",
    timestamp_field="event_timestamp",
)
terminal_risk_source = PostgreSQLSource(
    name="terminal_risk_features",
    table="marts.terminal_risk_features",
    timestamp_field="event_timestamp",
)
credit_features_source = PostgreSQLSource(
    name="credit_features",
    table="marts.credit_features",
    timestamp_field="event_timestamp",
)

WINDOWS = ("1d", "7d", "30d")
REPORTED_WINDOWS = ("7d", "14d", "28d")  # terminal frauds reported so far, no window delay

customer_spending = FeatureView(
    name="customer_spending",
    entities=[customer],
    ttl=timedelta(days=30),
    schema=[Field(name="customer_id", dtype=String)]
    + [Field(name=f"customer_nb_tx_{w}", dtype=Int64) for w in WINDOWS]
    + [Field(name=f"customer_avg_amount_{w}", dtype=Float64) for w in WINDOWS]
    + [Field(name="customer_std_amount_30d", dtype=Float64), Field(name="customer_max_amount_30d", dtype=Float64)],
    source=customer_spending_source,
    online=True,
    description="Number, mean, spread and maximum amount of the customer's transactions in windows ending at the tx.",
)

terminal_risk = FeatureView(
    name="terminal_risk",
    entities=[terminal],
    ttl=timedelta(days=2),
    schema=[Field(name="terminal_id", dtype=String)]
    + [Field(name=f"terminal_nb_tx_{w}", dtype=Int64) for w in WINDOWS]
    + [Field(name=f"terminal_risk_{w}", dtype=Float64) for w in WINDOWS]
    + [Field(name=f"terminal_reported_{k}_{w}", dtype=dtype)
       for w in REPORTED_WINDOWS for k, dtype in (("frauds", Int64), ("risk", Float64))]
    + [Field(name="terminal_days_since_reported_fraud", dtype=Float64)],
    source=terminal_risk_source,
    online=True,
    description="Daily terminal volume and known-fraud rate, lagged by the label delay; frauds already "
                "reported in the last 7/14/28 days and the days since the latest one.",
)

credit_application = FeatureView(
    name="credit_application",
    entities=[application],
    ttl=timedelta(days=90),
    schema=[
        Field(name="application_id", dtype=String),
        Field(name="amount", dtype=Float64),
        Field(name="term_months", dtype=Int64),
        Field(name="annual_income", dtype=Float64),
        Field(name="debt_to_income", dtype=Float64),
        Field(name="n_delinquencies", dtype=Int64),
        Field(name="credit_history_months", dtype=Int64),
        Field(name="utilization", dtype=Float64),
        Field(name="kyc_level", dtype=Int64),
        Field(name="pep", dtype=Int64),
    ],
    source=credit_features_source,
    online=True,
    description="Applicant attributes as declared/observed at application time.",
)

payment_request = RequestSource(
    name="payment_request",
    schema=[Field(name=amount_features.REQUEST_FIELD, dtype=Float64)],
    description="The payment being scored: its amount in major units (the entity rows' ``amount`` in training).",
)


@on_demand_feature_view(
    name=amount_features.VIEW_NAME,
    sources=[customer_spending, payment_request],
    schema=[Field(name=name, dtype=Float64) for name in amount_features.FEATURES],
    mode="pandas",
    description="The payment's amount against the customer's 30/7-day mean, 30-day maximum and spread "
                "(riskloop/features/amount_features.py; serving computes the same from its online read).",
)
def customer_amount_ratios(inputs: pd.DataFrame) -> pd.DataFrame:
    """Feast's side of :func:`riskloop.features.amount_features.amount_ratios` (the one definition).

    The imports are inside: Feast stores this function's *source* in the registry and compiles
    it on its own when it transforms, without this module's globals."""
    import pandas as pd

    from riskloop.features.amount_features import amount_ratios

    return pd.DataFrame(amount_ratios(inputs), index=inputs.index)


def _realtime_view(spec: windows.WindowEntity, entity: Entity) -> FeatureView:
    """The view the stream (``riskloop stream``) pushes to: fields and names from riskloop/core/windows.py.

    Its push source's batch source is the dbt mart computing the same windows, so the offline store
    (training, backfills) sees what the stream pushed. A day's TTL: the widest window is 24 h.
    """
    push = PushSource(
        name=windows.push_source_name(spec),
        batch_source=PostgreSQLSource(name=windows.mart_name(spec), table=f"marts.{windows.mart_name(spec)}",
                                      timestamp_field=windows.TIMESTAMP_FIELD),
    )
    return FeatureView(
        name=windows.view_name(spec),
        entities=[entity],
        ttl=timedelta(seconds=max(w.seconds for w in windows.WINDOWS)),
        schema=[Field(name=spec.key, dtype=String)]
        + [Field(name=name, dtype=Int64) for name in windows.feature_names(spec)],
        source=push,
        online=True,
        description=f"Count and minor-unit sum of the {spec.name}'s payments over "
                    f"{', '.join(w.name for w in windows.WINDOWS)}, as of its latest payment (event time).",
    )


# One view per entity of the window spec (riskloop.features.store collects the views of this tuple).
REALTIME_VIEWS = tuple(_realtime_view(e, {"card": card, "customer": customer}[e.name]) for e in windows.ENTITIES)


# Adding inputs to fraud_model_v1 is how this repo evolves the service: a model's own input list
# says what it reads, serving maps each by name, so models trained on fewer inputs keep being served from the same service.
fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[customer_spending, terminal_risk, customer_amount_ratios, *REALTIME_VIEWS],
    description="Features of the fraud model: stored customer/terminal views, the amount-to-history ratios "
                "(on demand) and the card/customer real-time windows (offline from their marts, online from the "
                "stream's push); request-time inputs: amount, is_weekend, is_night.",
)

credit_model_v1 = FeatureService(
    name="credit_model_v1",
    features=[credit_application],
    description="Features of the credit (probability of default) model.",
)
