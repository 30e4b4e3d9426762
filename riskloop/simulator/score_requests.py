"""``score_requests.jsonl``: one ``POST /v1/score/fraud`` body per simulated card authorisation.

Taken from the ``payment.authorized`` webhook events — what a processor knows at authorisation
time, nothing learnt later (no labels, no refunds) — in time order, so the file can drive the
scoring API (the load generator in ``bench/serving_load.py``, a demo, a replay) with traffic
shaped like the simulation's. Authorisations through the card-present (``standard``) processor
carry the card number as ``pan``, as a checkout holding it would send it: the API tokenises it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from riskloop.simulator import frames as fr

SCORE_REQUESTS_FILE = "score_requests.jsonl"


def _authorisations(webhook_events: pd.DataFrame) -> pd.DataFrame:
    """Authorisations, oldest first; a payment authorised twice (a redelivered event) appears once."""
    from riskloop.simulator.webhooks import with_pans

    auth = webhook_events[(webhook_events["event_type"] == "payment.authorized")
                          & (webhook_events["amount_minor"] > 0)]
    auth = auth.sort_values(["occurred_at", "payment_id"]).drop_duplicates("payment_id")
    auth = with_pans(auth)
    return auth.assign(pan=auth["pan"].where(auth["processor"] == "standard", None))


def score_request_bodies(webhook_events: pd.DataFrame) -> list[dict]:
    """Request bodies, oldest first (the reference for :func:`write_score_requests`'s bytes)."""
    auth = _authorisations(webhook_events)
    stamps = pd.to_datetime(auth["occurred_at"], utc=True)
    bodies = []
    for r, ts in zip(auth.itertuples(index=False), stamps, strict=True):
        body = {"transaction_id": str(r.payment_id), "card_token": str(r.card_token),
                "customer_id": str(r.customer_id), "terminal_id": str(r.terminal_id),
                "amount_minor": int(r.amount_minor), "currency": str(r.currency), "timestamp": ts.isoformat()}
        if isinstance(r.pan, str):
            body["pan"] = r.pan
        bodies.append(body)
    return bodies


def _isoformat(stamps: pd.Series) -> pa.Array:
    """``pd.Timestamp.isoformat()`` of UTC stamps, column-wise: seconds, then .ffffff or .fffffffff
    only when there is a fraction at that resolution, then ``+00:00``."""
    ns = stamps.array.asi8
    base = np.datetime_as_string(ns.astype("datetime64[ns]").astype("datetime64[s]"), unit="s").astype(object)
    frac_ns = ns % 10**9
    micro = pc.utf8_lpad(fr.json_int(frac_ns // 1000), 6, "0")
    nano = pc.utf8_lpad(fr.json_int(frac_ns), 9, "0")
    frac = pc.if_else(pa.array(frac_ns % 1000 != 0), fr.join(".", nano),
                      pc.if_else(pa.array(frac_ns != 0), fr.join(".", micro), ""))
    return fr.join(pa.array(base, pa.string()), frac, "+00:00")


def write_score_requests(webhook_events: pd.DataFrame, out: Path) -> Path:
    """Write the bodies as JSON lines, column-wise (same bytes as ``json.dumps`` of each body)."""
    auth = _authorisations(webhook_events).reset_index(drop=True)
    stamps = pd.to_datetime(auth["occurred_at"], utc=True)
    pans = auth["pan"].to_numpy(dtype=object)
    has_pan = np.array([isinstance(p, str) for p in pans], dtype=bool)
    pan = pc.if_else(pa.array(has_pan), fr.join(',"pan":', fr.json_str(
        pa.array([p if ok else "" for p, ok in zip(pans, has_pan, strict=True)], pa.string()), ensure_ascii=True)), "")

    def text(col: str) -> pa.Array:
        return fr.json_str(pa.array(auth[col].astype(str).to_numpy(dtype=object), pa.string()), ensure_ascii=True)

    lines = fr.join('{"transaction_id":', text("payment_id"), ',"card_token":', text("card_token"),
                    ',"customer_id":', text("customer_id"), ',"terminal_id":', text("terminal_id"),
                    ',"amount_minor":', fr.json_int(auth["amount_minor"].to_numpy()), ',"currency":',
                    text("currency"), ',"timestamp":"', _isoformat(stamps), '"', pan, "}")
    path = out / SCORE_REQUESTS_FILE
    fr.write_lines(path, lines)
    return path


def reference_lines(webhook_events: pd.DataFrame) -> list[str]:
    """The row-by-row rendering :func:`write_score_requests` must equal (kept for its test)."""
    return [json.dumps(body, separators=(",", ":")) for body in score_request_bodies(webhook_events)]
