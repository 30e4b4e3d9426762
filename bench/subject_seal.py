"""What sealing a decision's personal fields costs the decision-log writer: CPU per decision.

The writer seals each row once (riskloop.core.subject_keys): the customer's data key comes from the
process's cache (a key lookup only for a customer not seen within RISKLOOP_SUBJECT_KEY_CACHE_S, one
per batch for all of them), then one orjson dump and one AES-GCM encryption of the personal fields.
This times that in process, one call at a time (thread CPU time, so a loaded machine's preemption
does not count), for a fraud request with a device and an IP, and a credit request with an applicant;
and the reader's side (reveal of one sealed request, key cached). No database: a cache hit is the
steady state, a miss costs one statement per batch (two when the batch has a customer without a key yet),
not per decision.

    PYTHONPATH=. .venv/bin/python bench/subject_seal.py -n 50000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from riskloop.core.subject_keys import SubjectKeys, _open

FRAUD = {"transaction_id": "tx-000123456", "card_token": "tok_0042", "customer_id": "C-000123", "terminal_id": "T-77",
         "amount_minor": 12_345, "currency": "EUR", "timestamp": "2026-12-07T15:00:00+00:00",
         "device_id": "dev-9f2c1a7e", "ip": "203.0.113.77", "country": "DE"}
CREDIT = {"application_id": "app-000123", "customer_id": "C-000123",
          "applicant": {"amount_minor": 1_500_000, "currency": "EUR", "term_months": 36, "annual_income_minor": 4_812_300,
                        "debt_to_income": 0.31, "n_delinquencies": 1, "credit_history_months": 77, "utilization": 0.42,
                        "kyc_level": 1, "pep": False}}


def _cpu_us(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.thread_time_ns()
        fn()
        out.append((time.thread_time_ns() - t0) / 1000.0)
    return out


def _summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"mean_us": round(statistics.fmean(samples), 2), "p50_us": round(samples[len(samples) // 2], 2),
            "p99_us": round(samples[int(len(samples) * 0.99)], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="calls per measurement")
    args = parser.parse_args()
    ring = SubjectKeys(os.urandom(32))
    key_id, aead = str(uuid.uuid4()), AESGCM(AESGCM.generate_key(256))
    sealed_fraud = ring.seal(FRAUD, key_id, aead)
    out = {
        "n": args.n,
        "seal_fraud": _summary(_cpu_us(lambda: ring.seal(FRAUD, key_id, aead), args.n)),
        "seal_credit": _summary(_cpu_us(lambda: ring.seal(CREDIT, key_id, aead), args.n)),
        "reveal_fraud": _summary(_cpu_us(lambda: _open(sealed_fraud, {key_id: aead}), args.n)),
        "stored_bytes": {"fraud_clear": len(json.dumps(FRAUD)), "fraud_sealed": len(json.dumps(sealed_fraud))},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
