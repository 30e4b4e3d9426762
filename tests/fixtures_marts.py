"""Small synthetic dbt marts (schema ``marts``, columns as docs/architecture.md) for the Feast
and training tests, so they do not wait on the dbt project.

Each test module writes its marts into a database of its own on the session's server
(:func:`isolated_settings`): the real dbt marts may be built in the same session by other
tests, and they must not see (or clobber) these.

The fraud story is the handbook's, simplified: amounts above 220 are fraud (scenario 1) and
two terminals are compromised for two weeks (scenario 2). Labels arrive 1-14 days after the
payment; those not arrived by ``as_of`` are not in the mart (``is_fraud`` 0, no
``fraud_known_at``), as the dbt model would show them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import psycopg

from riskloop.core import windows
from riskloop.core.config import Settings
from riskloop.simulator import credit as sim_credit

START = pd.Timestamp("2024-01-01", tz="UTC")
WINDOWS = {"1d": 1, "7d": 7, "30d": 30}
TERMINAL_DELAY_DAYS = 7
REPORTED_WINDOWS = (7, 14, 28)

DDL = {
    "fct_transactions": """
        payment_id text primary key, transaction_id bigint not null, customer_id text not null,
        terminal_id text not null, card_token text, tx_at timestamptz not null,
        amount double precision not null, amount_minor bigint not null, currency text,
        processor text, received_at timestamptz, is_weekend integer not null, is_night integer not null,
        is_fraud integer not null, fraud_known_at timestamptz, label_source text, refunded integer not null""",
    "customer_spending_features": """
        customer_id text not null, event_timestamp timestamptz not null,
        customer_nb_tx_1d bigint, customer_nb_tx_7d bigint, customer_nb_tx_30d bigint,
        customer_avg_amount_1d double precision, customer_avg_amount_7d double precision,
        customer_avg_amount_30d double precision, customer_std_amount_30d double precision,
        customer_max_amount_30d double precision""",
    "terminal_risk_features": """
        terminal_id text not null, event_timestamp timestamptz not null,
        terminal_nb_tx_1d bigint, terminal_nb_tx_7d bigint, terminal_nb_tx_30d bigint,
        terminal_risk_1d double precision, terminal_risk_7d double precision,
        terminal_risk_30d double precision,
        terminal_reported_frauds_7d bigint, terminal_reported_frauds_14d bigint,
        terminal_reported_frauds_28d bigint, terminal_reported_risk_7d double precision,
        terminal_reported_risk_14d double precision, terminal_reported_risk_28d double precision,
        terminal_days_since_reported_fraud double precision""",
    "credit_features": """
        application_id text primary key, customer_id text not null,
        event_timestamp timestamptz not null, amount double precision, term_months integer,
        annual_income double precision, debt_to_income double precision,
        n_delinquencies integer, credit_history_months integer, utilization double precision,
        kyc_level integer, pep integer""",
    "fct_credit_outcomes": """
        application_id text primary key, applied_at timestamptz not null, defaulted integer not null,
        observed_at timestamptz not null, true_default_probability double precision""",
    "credit_applicant_groups": """
        application_id text primary key, applied_at timestamptz not null, age_band text not null""",
}
DDL.update({
    windows.mart_name(e): f"{e.key} text not null, {windows.TIMESTAMP_FIELD} timestamptz not null, "
    + ", ".join(f"{name} bigint not null" for name in windows.feature_names(e))
    for e in windows.ENTITIES})


@dataclass(frozen=True)
class SyntheticMarts:
    """The five mart tables, plus the simulation's end (``as_of``)."""

    as_of: pd.Timestamp
    fct_transactions: pd.DataFrame
    customer_spending_features: pd.DataFrame
    terminal_risk_features: pd.DataFrame
    credit_features: pd.DataFrame
    fct_credit_outcomes: pd.DataFrame
    credit_applicant_groups: pd.DataFrame
    card_realtime_windows: pd.DataFrame
    customer_realtime_windows: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in DDL}


def _transactions(rng: np.random.Generator, days: int, customers: int, terminals: int,
                  tx_per_day: float, as_of: pd.Timestamp, seed: int) -> pd.DataFrame:
    n = int(days * customers * tx_per_day)
    offset_s = np.sort(rng.integers(0, days * 86_400, n))
    tx_at = START + pd.to_timedelta(offset_s, unit="s")
    cust = rng.integers(0, customers, n)
    term = rng.integers(0, terminals, n)
    amount = np.round(np.exp(rng.normal(3.8, 0.8, n)), 2)
    day = offset_s // 86_400
    fraud = (amount > 220) | (np.isin(term, [0, 1]) & (day >= 5) & (day < 19))
    known_at = tx_at + pd.to_timedelta(rng.uniform(1, 14, n), unit="D").round("s")
    known = fraud & (known_at <= as_of)
    hours = tx_at.hour
    return pd.DataFrame({
        "payment_id": [f"pay_{i}" for i in range(n)],
        "transaction_id": np.arange(n, dtype=np.int64),
        "customer_id": [f"c{c:04d}" for c in cust],
        "terminal_id": [f"t{t:04d}" for t in term],
        # the seed in the token: the session's online store is shared, and the stream-fed views keep
        # the newest row per key, so two modules' cards must not be the same keys
        "card_token": [f"card{seed}_{c:04d}" for c in cust],
        "tx_at": tx_at,
        "amount": amount,
        "amount_minor": np.round(amount * 100).astype(np.int64),
        "currency": "EUR",
        "processor": "sim",
        "received_at": tx_at + pd.Timedelta(seconds=2),
        "is_weekend": (tx_at.dayofweek >= 5).astype(int),
        "is_night": (hours <= 6).astype(int),
        "is_fraud": known.astype(int),
        "fraud_known_at": pd.Series(known_at).where(known, pd.NaT).to_numpy(),
        "label_source": np.where(known, "chargeback", None),
        "refunded": 0,
        "_true_fraud": fraud.astype(int),
    })


def _customer_spending(tx: pd.DataFrame) -> pd.DataFrame:
    """Rolling count/mean per customer over windows ending at and including each transaction."""
    out = []
    for customer_id, g in tx.sort_values(["tx_at", "transaction_id"]).groupby("customer_id", sort=True):
        s = g.set_index("tx_at")["amount"]
        row = {"customer_id": customer_id, "event_timestamp": g["tx_at"].to_numpy()}
        for name, w in WINDOWS.items():
            roll = s.rolling(f"{w}D")
            row[f"customer_nb_tx_{name}"] = roll.count().astype("int64").to_numpy()
            row[f"customer_avg_amount_{name}"] = roll.mean().to_numpy()
        roll30 = s.rolling("30D")
        row["customer_std_amount_30d"] = roll30.std().fillna(0.0).to_numpy()
        row["customer_max_amount_30d"] = roll30.max().to_numpy()
        out.append(pd.DataFrame(row))
    return pd.concat(out, ignore_index=True)


def _realtime_windows(tx: pd.DataFrame, entity: windows.WindowEntity) -> pd.DataFrame:
    """The spec's windows per payment of the entity, as the dbt macro computes them: (t - w, t],
    payments at the same instant in each other's windows, sums over SUM_CURRENCY only."""
    tx = tx.sort_values(["tx_at", "transaction_id"]).reset_index(drop=True)
    values = {"count": pd.Series(1, index=tx.index),
              "sum": tx["amount_minor"].where(tx["currency"] == windows.SUM_CURRENCY, 0)}
    out = pd.DataFrame({entity.key: tx[entity.key], windows.TIMESTAMP_FIELD: tx["tx_at"]})
    for agg in windows.AGGREGATES:
        for w in windows.WINDOWS:
            column = pd.Series(0, index=tx.index, dtype="int64")
            for _, idx in tx.groupby(entity.key, sort=False).groups.items():
                series = pd.Series(values[agg.func].loc[idx].to_numpy(), index=tx.loc[idx, "tx_at"])
                column.loc[idx] = series.rolling(f"{w.seconds}s").sum().astype("int64").to_numpy()
            out[windows.feature_name(entity, agg, w)] = column
    # Ties: each of the same-instant payments sees all of them (a RANGE frame), i.e. the last row's values.
    names = windows.feature_names(entity)
    out[names] = out.groupby([entity.key, windows.TIMESTAMP_FIELD])[names].transform("max")
    return out


def _terminal_risk(tx: pd.DataFrame, days: int, terminals: int) -> pd.DataFrame:
    """One row per terminal and day: volume and known-fraud rate in [day-7-w, day-7)."""
    rows = []
    delay = pd.Timedelta(days=TERMINAL_DELAY_DAYS)
    for t in range(terminals):
        g = tx[tx["terminal_id"] == f"t{t:04d}"]
        for d in range(days):
            ts = START + pd.Timedelta(days=d)
            row: dict[str, object] = {"terminal_id": f"t{t:04d}", "event_timestamp": ts}
            for name, w in WINDOWS.items():
                in_window = (g["tx_at"] >= ts - delay - pd.Timedelta(days=w)) & (g["tx_at"] < ts - delay)
                known_fraud = (g["is_fraud"] == 1) & (g["fraud_known_at"] < ts)
                nb = int(in_window.sum())
                row[f"terminal_nb_tx_{name}"] = nb
                row[f"terminal_risk_{name}"] = float((in_window & known_fraud).sum() / nb) if nb else 0.0
            reported = (g["is_fraud"] == 1) & (g["fraud_known_at"] < ts) & (g["tx_at"] < ts)
            for w in REPORTED_WINDOWS:
                in_recent = (g["tx_at"] >= ts - pd.Timedelta(days=w)) & (g["tx_at"] < ts)
                n, nb = int((in_recent & reported).sum()), int(in_recent.sum())
                row[f"terminal_reported_frauds_{w}d"] = n
                row[f"terminal_reported_risk_{w}d"] = n / nb if nb else 0.0
            last = g.loc[reported & (g["tx_at"] >= ts - pd.Timedelta(days=60)), "tx_at"].max()
            row["terminal_days_since_reported_fraud"] = (ts - last) / pd.Timedelta(days=1) if pd.notna(last) else None
            rows.append(row)
    return pd.DataFrame(rows)


def _credit(rng: np.random.Generator, n: int, customers: int, as_of: pd.Timestamp, bias: float = 0.0
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Features, outcomes and the applicants' age bands; ``bias`` raises the latent risk of the
    disadvantaged band as riskloop.simulator.credit does (its own stream: the rest does not move)."""
    band_rng = rng.spawn(1)[0]
    window_start = START - pd.Timedelta(days=365)
    applied = window_start + pd.to_timedelta(
        np.sort(rng.integers(0, int((as_of - window_start).total_seconds()), n)), unit="s")
    z = rng.normal(size=n)
    band = np.asarray(sim_credit.AGE_BANDS)[band_rng.choice(len(sim_credit.AGE_BANDS), n,
                                                             p=sim_credit.AGE_BAND_WEIGHTS)]
    z = z + bias * (band == sim_credit.DISADVANTAGED_BAND)
    income = np.round(np.exp(10.4 - 0.2 * z + 0.35 * rng.normal(size=n)), -2)
    dti = np.round(np.clip(np.exp(np.log(0.28) + 0.3 * z + 0.4 * rng.normal(size=n)), 0, 3), 4)
    util = np.round(1 / (1 + np.exp(-(-0.6 + 0.9 * z + 0.7 * rng.normal(size=n)))), 4)
    delinq = np.minimum(rng.poisson(np.exp(-1.6 + 0.8 * z)), 30)
    history = np.rint(np.clip(100 - 25 * z + 50 * rng.normal(size=n), 0, 600)).astype(int)
    logit = -1.5 + 0.55 * delinq + 1.6 * dti + 1.8 * util - 0.6 * np.log(income / 35_000) - 0.005 * history
    pd_true = 1 / (1 + np.exp(-logit))
    app_id = [f"app_{i:05d}" for i in range(n)]
    features = pd.DataFrame({
        "application_id": app_id,
        "customer_id": [f"c{c:04d}" for c in rng.integers(0, customers, n)],
        "event_timestamp": applied,
        "amount": np.maximum(np.round(income * np.exp(np.log(0.2) + 0.5 * rng.normal(size=n)), -1), 500),
        "term_months": rng.choice([12, 24, 36, 48, 60], n),
        "annual_income": income,
        "debt_to_income": dti,
        "n_delinquencies": delinq,
        "credit_history_months": history,
        "utilization": util,
        "kyc_level": rng.integers(0, 3, n),
        "pep": (rng.random(n) < 0.02).astype(int),
    })
    observed = applied + pd.Timedelta(days=90)
    outcomes = pd.DataFrame({
        "application_id": app_id,
        "applied_at": applied,
        "defaulted": (rng.random(n) < pd_true).astype(int),
        "observed_at": observed,
        "true_default_probability": pd_true,
    })
    groups = pd.DataFrame({"application_id": app_id, "applied_at": applied, "age_band": band})
    return features, outcomes[outcomes["observed_at"] <= as_of].reset_index(drop=True), groups


def make_marts(days: int = 30, customers: int = 60, terminals: int = 30, tx_per_day: float = 1.5,
               applications: int = 600, seed: int = 0, credit_bias: float = 0.0) -> SyntheticMarts:
    """Deterministic synthetic marts of ``days`` days from 2024-01-01 UTC (``credit_bias``: the credit
    world's true bias against one age band, as ``riskloop simulate --credit-bias``)."""
    rng = np.random.default_rng(seed)
    as_of = START + pd.Timedelta(days=days)
    tx = _transactions(rng, days, customers, terminals, tx_per_day, as_of, seed)
    credit_features, outcomes, groups = _credit(rng, applications, customers, as_of, credit_bias)
    return SyntheticMarts(
        as_of=as_of,
        fct_transactions=tx,
        customer_spending_features=_customer_spending(tx),
        terminal_risk_features=_terminal_risk(tx, days, terminals),
        credit_features=credit_features,
        fct_credit_outcomes=outcomes,
        credit_applicant_groups=groups,
        card_realtime_windows=_realtime_windows(tx, windows.entity("card")),
        customer_realtime_windows=_realtime_windows(tx, windows.entity("customer")),
    )


def isolated_settings(database: str) -> Settings:
    """Settings whose warehouse is a fresh database ``database`` on the session's server, migrated
    (``riskloop db upgrade``) as a deployment's would be."""
    from riskloop.core import migrations

    base = Settings()
    with psycopg.connect(base.pg.url("postgres", driver=""), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{database}" with (force)')
        conn.execute(f'create database "{database}"')
    settings = Settings(database_url=base.pg.url(database, driver=""))
    migrations.upgrade(settings)
    return settings


def write_marts(settings: Settings, marts: SyntheticMarts) -> None:
    """(Re)create the ``marts`` tables in the settings' warehouse and load the frames."""
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        conn.execute("create schema if not exists marts")
        for name, frame in marts.tables().items():
            conn.execute(f"drop table if exists marts.{name}")
            conn.execute(f"create table marts.{name} ({DDL[name]})")
            conn.execute(f"alter table marts.{name} owner to riskloop_transform")  # dbt's, as if it built them
            cols = [c for c in frame.columns if not c.startswith("_")]
            with conn.cursor().copy(f"copy marts.{name} ({', '.join(cols)}) from stdin") as copy:
                for row in frame[cols].itertuples(index=False, name=None):
                    copy.write_row([None if _missing(v) else _py(v) for v in row])


def _missing(v: object) -> bool:
    return v is None or (not isinstance(v, str) and bool(pd.isna(v)))


def _py(v: object) -> object:
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    if isinstance(v, np.generic):
        return v.item()
    return v
