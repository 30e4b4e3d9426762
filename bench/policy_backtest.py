"""Backtest a candidate policy over ``-n`` logged fraud decisions (goal: 1 million in ≤ 60 s on 2 cores).

Generates the decisions in Postgres itself (``generate_series``: the shape of real fraud-v2 rows,
with 30 features, their feature-view timestamps, 4 reasons, the request and the signals) spread
over ``--days`` days into a scratch warehouse ``riskloop_bench_backtest`` on the stack's server
(migrated like a deployment's), with a matching ``marts.fct_transactions`` (labels correlated with
the score, frauds known 3 days after the payment), then runs ``riskloop.decisions.backtest`` of
fraud-v2 with a lower review threshold and a new amount rule over the whole period, and prints the
wall time, the CPU seconds of this process and of the Postgres backends, and the load average.
Against ``riskloop up``'s Postgres (or RISKLOOP_DATABASE_URL's server):

    .venv/bin/python bench/policy_backtest.py -n 1000000          # generate (once) and backtest
    .venv/bin/python bench/policy_backtest.py -n 1000000 --keep   # keep the scratch database for a rerun
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time
from datetime import UTC, datetime, timedelta

import psycopg

from riskloop.core import migrations
from riskloop.core.config import Settings, get_settings
from riskloop.decisions.backtest import backtest
from riskloop.decisions.policy import Policy, policy_by_id

DATABASE = "riskloop_bench_backtest"
START = datetime(2026, 10, 1, tzinfo=UTC)

_GENERATE = """
insert into serving.decision_log (decision_id, request_id, decided_at, model_name, model_version, model_alias, score,
    decision, reasons, rules, features, feature_timestamps, request, latency_ms, degraded, product, policy_version,
    signals, serving_mode)
select gen_random_uuid(), 'r' || i, t, 'riskloop-fraud', '3', 'champion', sc,
       case when amount > 1000000 or sc >= 0.9 then 'deny' when sc >= 0.5 or card10m > 4 then 'review'
            when sc >= 0.3 then 'step_up' else 'allow' end,
       jsonb_build_array(
           jsonb_build_object('code', 'R01_AMOUNT', 'feature', 'amount', 'value', amount / 100.0, 'contribution', 0.4),
           jsonb_build_object('code', 'R03_TERMINAL_RISK', 'feature', 'terminal_risk_7d', 'value', 0.01, 'contribution', 0.2),
           jsonb_build_object('code', 'R05_VELOCITY', 'feature', 'card_tx_count_10m', 'value', card10m, 'contribution', 0.1),
           jsonb_build_object('code', 'R08_AMOUNT_UNUSUAL_FOR_CUSTOMER', 'feature', 'amount_vs_customer_avg_30d',
                              'value', 1.3, 'contribution', 0.05)),
       case when card10m > 4 then '["CARD_VELOCITY_10M"]'::jsonb else '[]'::jsonb end,
       jsonb_build_object(
           'amount', amount / 100.0, 'is_weekend', (i %% 7 < 2)::int, 'is_night', (i %% 24 < 6)::int,
           'customer_nb_tx_1d', i %% 9, 'customer_nb_tx_7d', i %% 40, 'customer_nb_tx_30d', i %% 120,
           'customer_avg_amount_1d', 51.2, 'customer_avg_amount_7d', 48.9, 'customer_avg_amount_30d', 50.3,
           'terminal_nb_tx_1d', i %% 50, 'terminal_nb_tx_7d', i %% 300, 'terminal_nb_tx_30d', i %% 1200,
           'terminal_risk_1d', 0.0, 'terminal_risk_7d', 0.01, 'terminal_risk_30d', 0.008,
           'amount_vs_customer_avg_30d', 1.3, 'amount_vs_customer_avg_7d', 1.1, 'amount_vs_customer_max_30d', 0.7,
           'amount_zscore_30d', 0.4,
           'card_tx_count_10m', card10m, 'card_tx_count_1h', card10m + 1, 'card_tx_count_24h', card10m + 3,
           'card_amount_minor_sum_10m', card10m * 2000, 'card_amount_minor_sum_1h', (i %% 40) * 8000,
           'card_amount_minor_sum_24h', 90000,
           'customer_tx_count_10m', card10m, 'customer_tx_count_1h', i %% 12, 'customer_tx_count_24h', i %% 22,
           'customer_amount_minor_sum_10m', 3000, 'customer_amount_minor_sum_1h', 9000,
           'customer_amount_minor_sum_24h', 40000),
       jsonb_build_object('customer_spending', t - interval '1 day', 'terminal_risk', t - interval '1 day',
                          'card_realtime', t - make_interval(secs => i %% 900),
                          'customer_realtime', t - make_interval(secs => i %% 5000)),
       jsonb_build_object('transaction_id', 'tx_' || i, 'card_token', 'tok_' || (i %% 200000),
                          'customer_id', 'C' || (i %% 150000), 'terminal_id', 'T' || (i %% 8000),
                          'amount_minor', amount, 'currency', case when i %% 10 = 0 then 'GBP' else 'EUR' end,
                          'timestamp', t, 'device_id', case when i %% 3 = 0 then null else 'dev_' || (i %% 300000) end,
                          'ip', null, 'country', case when i %% 50 = 0 then 'FR' else 'DE' end),
       2.5, sc is null, 'fraud', 'fraud-v2',
       jsonb_build_object('device_known', i %% 5 <> 0, 'previous_country', 'DE',
                          'distance_km', case when i %% 400 = 0 then 1800.0 else 0.0 end, 'elapsed_h', 0.5),
       'champion'
from (select i, %(start)s::timestamptz + (i * %(step)s::float8) * interval '1 second' as t,
             case when i %% 500 = 0 then null else power(random(), 5) end as sc,
             (100 + (random() * random() * 400000))::bigint as amount, (i::bigint * 7919) %% 7 as card10m
      from generate_series(1, %(n)s) as i) g
"""

_FACTS = """
create schema if not exists marts;
create table marts.fct_transactions as
select request->>'transaction_id' as payment_id, decided_at as tx_at,
       (coalesce(score, 0.01) > 0.2 and random() < score)::int as is_fraud, null::timestamptz as fraud_known_at
from serving.decision_log;
update marts.fct_transactions set fraud_known_at = tx_at + interval '3 days' where is_fraud = 1;
analyze marts.fct_transactions;
"""


def candidate() -> Policy:
    """fraud-v2 with the review threshold down from 0.5 to 0.4 and a review rule above 2,000.00."""
    base = policy_by_id("fraud-v2").model_dump(exclude={"digest"})
    base["version"] = 99
    base["thresholds"] = {**base["thresholds"], "review": 0.4}
    base["rules"] = [*base["rules"], {"id": "LARGE_AMOUNT_REVIEW", "kind": "amount_above", "amount_minor": 200000,
                                      "action": "review"}]
    return Policy.model_validate(base)


def scratch(base: Settings, n: int, days: int) -> Settings:
    settings = Settings(database_url=base.pg.url(DATABASE, driver=""))
    with psycopg.connect(base.pg.url("postgres", driver=""), autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (DATABASE,)).fetchone()
    if exists:
        with psycopg.connect(settings.pg.url(DATABASE, driver="")) as conn:
            have = conn.execute("select count(*) from serving.decision_log").fetchone()[0]
        if have == n:
            return settings
        with psycopg.connect(base.pg.url("postgres", driver=""), autocommit=True) as conn:
            conn.execute(f'drop database "{DATABASE}" with (force)')
    with psycopg.connect(base.pg.url("postgres", driver=""), autocommit=True) as conn:
        conn.execute(f'create database "{DATABASE}"')
    migrations.upgrade(settings)
    t0 = time.perf_counter()
    with psycopg.connect(settings.pg.url(DATABASE, driver=""), autocommit=True) as conn:
        conn.execute(_GENERATE, {"n": n, "start": START, "step": days * 86400 / n})
        conn.execute(_FACTS)
        conn.execute("vacuum analyze serving.decision_log")
    logging.info("generated %d decisions in %.0f s", n, time.perf_counter() - t0)
    return settings


def _server_cpu(settings: Settings) -> float | None:
    """CPU seconds of the local Postgres server so far: the postmaster, its live children and the
    backends it reaped (a finished connection's CPU lands in the postmaster's children times)."""
    import psutil

    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if p.info["name"] == "postgres" and "-D" in cmd and str(settings.pg.port) in cmd:
            t = p.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for c in p.children():
                try:
                    ct = c.cpu_times()
                    total += ct.user + ct.system
                except psutil.NoSuchProcess:
                    continue
            return total
    return None  # not a local server: its CPU is not measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--keep", action="store_true", help="Keep the scratch database (a rerun with -n reuses it).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    base = get_settings()
    settings = scratch(base, args.n, args.days)
    try:
        policy = candidate()
        load0 = os.getloadavg()[0]
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        server0 = _server_cpu(settings)
        t0 = time.perf_counter()
        report = backtest(settings, policy, START, START + timedelta(days=args.days + 1))
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        server1 = _server_cpu(settings)
        print(json.dumps({  # noqa: T201 - a benchmark's report
            "decisions": report.n_decisions, "changed": report.n_changed, "wall_s": round(wall, 1),
            "goal_s": 60, "client_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
            "server_cpu_s": None if server0 is None or server1 is None else round(server1 - server0, 1),
            "loadavg_1m_before": round(load0, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "rates": report.rates, "matured": report.labels.matured, "cores": os.cpu_count()}))
    finally:
        if not args.keep:
            with psycopg.connect(base.pg.url("postgres", driver=""), autocommit=True) as conn:
                conn.execute(f'drop database if exists "{DATABASE}" with (force)')


if __name__ == "__main__":
    main()
