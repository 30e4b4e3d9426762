"""What rule evaluation costs a fraud decision: 200 rules and lists of 100,000 entries, in process.

Why in process: evaluation is pure (no I/O; serving decides against a bound, immutable Policy), so
its cost is CPU time per call, and on the shared 2-core box an HTTP run would drown it in noise.
The policy is fraud-v2's rules plus generated ones of every kind a draft can hold: compound
conditions (all / any / not) over request fields, features and the score, feature thresholds,
and list lookups, on seven lists (cards, customers, terminals, devices, IPs, countries, BINs) of
``--entries`` each. Requests are drawn from a pool where a share hits the lists. Each round times
``Policy.evaluate`` one call at a time (perf_counter_ns) for the big policy and for fraud-v2 as
shipped, alternating, and reports p50 / p99 / max per call of both, and the p50 / p99 of the thread's CPU
time per call of the big one; the figure the budget is about is the big policy's p99 (what the rules add to
a decision; fraud-v2's own is beside it). On a loaded machine the wall p99 includes being
descheduled mid-call; ``cpu_p99_ms`` does not.
It also times :meth:`Policy.bind` with the full lists: what a list change costs each serving
process's watcher thread (not the request path).

    PYTHONPATH=. .venv/bin/python bench/policy_eval.py --rules 200 --entries 100000 -n 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from riskloop.decisions.policy import LIST_KINDS, Policy, policy_by_id

FEATURES = ("card_tx_count_10m", "card_amount_minor_sum_1h", "customer_tx_count_1h", "customer_tx_count_24h",
            "customer_nb_tx_1d", "terminal_risk_7d", "amount_vs_customer_avg_30d")


def _rules(n: int, rng: random.Random, list_names: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 5
        rid = f"GEN_{i:03d}"
        if kind == 0:  # list lookup
            name = list_names[i % len(list_names)]
            out.append({"id": rid, "kind": "condition", "action": "review",
                        "condition": {"field": LIST_KINDS[name.removesuffix("_list")], "in_list": name}})
        elif kind == 1:  # amount and score
            out.append({"id": rid, "kind": "condition", "action": "review", "condition": {"all": [
                {"field": "amount_minor", "op": ">=", "value": rng.randint(10_000, 5_000_000)},
                {"field": "score", "op": ">=", "value": round(rng.uniform(0.5, 0.99), 2)}]}})
        elif kind == 2:  # any of two features, not a country set
            out.append({"id": rid, "kind": "condition", "action": "step_up", "condition": {"all": [
                {"any": [{"feature": rng.choice(FEATURES), "op": ">", "value": rng.randint(5, 50)},
                         {"feature": rng.choice(FEATURES), "op": ">", "value": rng.randint(5, 50)}]},
                {"not": {"field": "country", "op": "in", "value": ["DE", "FR", "NL"]}}]}})
        elif kind == 3:
            out.append({"id": rid, "kind": "feature_above", "feature": rng.choice(FEATURES),
                        "max": float(rng.randint(10, 100)), "action": "review"})
        else:
            out.append({"id": rid, "kind": "amount_above", "amount_minor": rng.randint(100_000, 9_000_000),
                        "action": "review", "mode": "shadow" if i % 10 == 4 else "live"})
    return out


def build(n_rules: int, n_entries: int, seed: int) -> tuple[Policy, dict[str, frozenset[str]]]:
    rng = random.Random(seed)
    base = policy_by_id("fraud-v2")
    names = [f"{k}_list" for k in LIST_KINDS]
    data = base.model_dump(exclude={"digest"})
    data["version"] = 99
    data["rules"] = [r.model_dump(exclude_defaults=True) for r in base.rules] + _rules(
        n_rules - len(base.rules), rng, names)
    policy = Policy.model_validate(data)
    lists = {n: frozenset(f"{n[:3]}-{j}" for j in range(n_entries)) for n in names}
    return policy, lists


def _requests(n: int, seed: int) -> list[tuple[float, dict[str, Any], dict[str, Any]]]:
    rng = random.Random(seed + 1)
    out = []
    for _ in range(n):
        hit = rng.random() < 0.05  # one in twenty on some list
        req = {"card_token": f"car-{rng.randint(0, 10**6)}" if hit else f"tok-{rng.random()}",
               "customer_id": f"cus-{rng.randint(0, 200_000)}", "terminal_id": f"T-{rng.randint(0, 10**5)}",
               "device_id": f"dev-{rng.randint(0, 10**6)}", "ip": f"10.0.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
               "country": rng.choice(["DE", "FR", "US", "JP", "NL"]), "card_bin": str(rng.randint(400000, 499999)),
               "amount_minor": rng.randint(100, 2_000_000), "currency": "EUR",
               "timestamp": "2026-12-07T10:00:00+00:00"}
        features = {f: float(rng.randint(0, 60)) for f in FEATURES}
        out.append((rng.random(), req, features))
    return out


def _time(policy: Policy, reqs: list, clock: Any = time.perf_counter_ns) -> list[float]:
    times = []
    signals = {"device_known": True}
    for score, req, features in reqs:
        t0 = clock()
        policy.evaluate(score, req, features, signals, None)
        times.append((clock() - t0) / 1e6)
    return times


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=1000)[int(q * 1000) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=200)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("-n", type=int, default=20_000, help="Decisions per round.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    policy, lists = build(args.rules, args.entries, args.seed)
    t0 = time.perf_counter()
    big = policy.bind(lists)
    bind_ms = (time.perf_counter() - t0) * 1000
    shipped = policy_by_id("fraud-v2").bind({})
    reqs = _requests(args.n, args.seed)
    _time(big, reqs[:1000])  # warm-up
    _time(shipped, reqs[:1000])
    rounds = []
    for r in range(args.rounds):
        b = _time(big, reqs)
        cpu = _time(big, reqs, time.thread_time_ns)  # this thread's CPU: what a call costs, preemption excluded
        s = _time(shipped, reqs)
        rounds.append({"round": r, "rules": len(big.rules), "p50_ms": round(_pct(b, 0.5), 4),
                       "p99_ms": round(_pct(b, 0.99), 4), "max_ms": round(max(b), 3), "cpu_p50_ms": round(_pct(cpu, 0.5), 4),
                       "cpu_p99_ms": round(_pct(cpu, 0.99), 4),
                       "fraud_v2_p50_ms": round(_pct(s, 0.5), 4), "fraud_v2_p99_ms": round(_pct(s, 0.99), 4),
                       "added_p99_ms": round(_pct(b, 0.99) - _pct(s, 0.99), 4)})
        print(json.dumps(rounds[-1]))
    print(json.dumps({"lists": len(lists), "entries_per_list": args.entries, "bind_ms": round(bind_ms, 1),
                      "worst_round_p99_ms": max(x["p99_ms"] for x in rounds),
                      "worst_round_cpu_p99_ms": max(x["cpu_p99_ms"] for x in rounds)}))


if __name__ == "__main__":
    main()
