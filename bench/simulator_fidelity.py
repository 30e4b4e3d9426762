"""Does ``riskloop simulate --preset handbook`` produce data like the handbook's own file?

Compares the real file (``../shared/datasets/fraud-handbook/transactions.parquet``) with the
preset's ground truth for several seeds, statistic by statistic, with pandas only (no stack):
volumes, customer spending profiles, time of day, terminals per customer, the fraud rate and
each scenario's share, how many terminals / customers the scenarios compromised, the amounts of
scenario-3 frauds against the customer's own history, and how well the amount over the
customer's prior 30-day mean (the benchmark's ``amount_vs_customer_avg_30d``) separates
scenario-3 frauds from genuine payments in the chapter 5 test weeks (and, for comparison, how well
the amount alone does).

One seed is one draw: a statistic of the real file is only "off" if it lies outside the spread
of the seeds (the printed z is (real - mean of seeds) / std of seeds). Run under ``nice``:

    nice -n 10 .venv/bin/python bench/simulator_fidelity.py --seeds 0 1 2 3 42 \\
        --real /work/shared/datasets/fraud-handbook/transactions.parquet
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from riskloop.simulator import PRESETS
from riskloop.simulator.handbook import generate_transactions

logger = logging.getLogger(__name__)

# The chapter 5 test weeks (test folds start training 08-15, 08-08, 08-01, 07-25: test 14 days later).
TEST_WEEKS = ("2018-08-08", "2018-08-15", "2018-08-22", "2018-08-29")


def _prior_30d_mean(df: pd.DataFrame) -> pd.Series:
    """The customer's mean amount over the 30 days before each payment (the payment excluded)."""
    s = df.set_index("TX_DATETIME").groupby("CUSTOMER_ID", sort=False).TX_AMOUNT
    mean = s.transform(lambda x: x.rolling("30D", closed="left").mean())
    return pd.Series(mean.to_numpy(), index=df.index)


def statistics(df: pd.DataFrame) -> dict[str, float]:
    """The comparison's statistics of one handbook-schema frame."""
    df = df.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).reset_index(drop=True)
    df = df.assign(CUSTOMER_ID=df.CUSTOMER_ID.astype(np.int64), TERMINAL_ID=df.TERMINAL_ID.astype(np.int64))
    days = int(df.TX_TIME_DAYS.max()) + 1
    out: dict[str, float] = {"transactions": len(df), "customers_active": df.CUSTOMER_ID.nunique(),
                             "terminals_active": df.TERMINAL_ID.nunique()}
    genuine = df[df.TX_FRAUD == 0]
    by_cust = genuine.groupby("CUSTOMER_ID").TX_AMOUNT
    mean, std = by_cust.mean(), by_cust.std()
    for q in (0.1, 0.5, 0.9):
        out[f"customer_mean_amount_q{q}"] = float(mean.quantile(q))
    out["customers_mean_amount_under_20"] = int((mean < 20).sum())
    out["customer_std_over_mean_median"] = float((std / mean).median())
    per_day = df.groupby("CUSTOMER_ID").size() / days
    out["tx_per_customer_day_mean"] = float(per_day.mean())
    out["tx_per_customer_day_q0.9"] = float(per_day.quantile(0.9))
    tod = df.TX_TIME_SECONDS % 86_400
    out["time_of_day_std_s"] = float(tod.std())
    out["night_share"] = float((tod < 6 * 3600).mean())
    out["terminals_per_customer_median"] = float(df.groupby("CUSTOMER_ID").TERMINAL_ID.nunique().median())
    per_term = df.groupby("TERMINAL_ID").size() / days
    out["tx_per_terminal_day_q0.9"] = float(per_term.quantile(0.9))
    out["fraud_rate"] = float(df.TX_FRAUD.mean())
    for s in (1, 2, 3):
        out[f"scenario_{s}_share"] = float((df.TX_FRAUD_SCENARIO == s).mean())
    s2, s3 = df[df.TX_FRAUD_SCENARIO == 2], df[df.TX_FRAUD_SCENARIO == 3]
    out["scenario_2_terminals"] = s2.TERMINAL_ID.nunique()
    out["scenario_2_frauds_per_terminal"] = len(s2) / max(1, s2.TERMINAL_ID.nunique())
    out["scenario_3_customers"] = s3.CUSTOMER_ID.nunique()
    out["scenario_3_frauds_per_customer"] = len(s3) / max(1, s3.CUSTOMER_ID.nunique())
    own = s3.CUSTOMER_ID.map(mean)
    out["scenario_3_amount_over_own_mean_median"] = float((s3.TX_AMOUNT / own).median())
    out["scenario_3_amount_over_220_share"] = float((s3.TX_AMOUNT > 220).mean())
    prior = _prior_30d_mean(df)
    ratio = df.TX_AMOUNT / (prior + 1.0)
    aps, amount_aps = [], []
    for week in TEST_WEEKS:
        start = pd.Timestamp(week)
        w = (df.TX_DATETIME >= start) & (df.TX_DATETIME < start + pd.Timedelta(days=7))
        w &= df.TX_FRAUD_SCENARIO.isin([0, 3]) & ratio.notna()
        aps.append(average_precision_score(df.TX_FRAUD[w], ratio[w]))
        amount_aps.append(average_precision_score(df.TX_FRAUD[w], df.TX_AMOUNT[w]))
        out[f"scenario_3_frauds_test_week_{week}"] = int((df.TX_FRAUD_SCENARIO[w] == 3).sum())
    out["scenario_3_ratio_ap_test_weeks"] = float(np.mean(aps))
    out["scenario_3_amount_ap_test_weeks"] = float(np.mean(amount_aps))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True, help="The handbook's transactions.parquet.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 42])
    parser.add_argument("--json", type=Path, help="Also write every statistic here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    real = statistics(pd.read_parquet(args.real))
    preset = dict(PRESETS["handbook"])
    sims = {}
    for seed in args.seeds:
        sims[seed] = statistics(generate_transactions(preset["days"], preset["customers"], preset["terminals"],
                                                      seed=seed, start_date=preset["start_date"]))
        logger.info("seed %d done", seed)
    table = pd.DataFrame(sims)
    summary = pd.DataFrame({"real": pd.Series(real), "seeds_mean": table.mean(axis=1), "seeds_std": table.std(axis=1),
                            "seeds_min": table.min(axis=1), "seeds_max": table.max(axis=1)})
    summary["z"] = (summary.real - summary.seeds_mean) / summary.seeds_std.replace(0, np.nan)
    print(summary.to_string(float_format="{:.5g}".format))
    if args.json:
        args.json.write_text(json.dumps({"real": real, "seeds": {str(k): v for k, v in sims.items()}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
