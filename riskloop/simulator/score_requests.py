"""``score_requests.jsonl``: one ``POST /v1/score/fraud`` body per simulated card authorisation.

Taken from the ``payment.authorized`` webhook events — what a processor knows at authorisation
time, nothing learnt later (no labels, no refunds) — in time order, so the file can drive the
scoring API (the load generator in ``bench/serving_load.py``, a demo, a replay) with traffic
shaped like the simulation's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SCORE_REQUESTS_FILE = "score_requests.jsonl"


def score_request_bodies(webhook_events: pd.DataFrame) -> list[dict]:
    """Request bodies, oldest first; a payment authorised twice (a redelivered event) appears once."""
    auth = webhook_events[(webhook_events["event_type"] == "payment.authorized")
                          & (webhook_events["amount_minor"] > 0)]
    auth = auth.sort_values(["occurred_at", "payment_id"]).drop_duplicates("payment_id")
    stamps = pd.to_datetime(auth["occurred_at"], utc=True)
    return [
        {"transaction_id": str(r.payment_id), "card_token": str(r.card_token), "customer_id": str(r.customer_id),
         "terminal_id": str(r.terminal_id), "amount_minor": int(r.amount_minor), "currency": str(r.currency),
         "timestamp": ts.isoformat()}
        for r, ts in zip(auth.itertuples(index=False), stamps, strict=True)
    ]


def write_score_requests(webhook_events: pd.DataFrame, out: Path) -> Path:
    path = out / SCORE_REQUESTS_FILE
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for body in score_request_bodies(webhook_events):
            fh.write(json.dumps(body, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path
