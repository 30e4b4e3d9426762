"""Simulated processors' webhook bodies: a ``raw.webhook_events`` row as the exact bytes its processor
sends (:func:`stripe_body`, :func:`standard_body`), and a simulation's webhook archive written as JSON
lines (:func:`write_webhook_files`), which ``riskloop replay webhooks`` signs and sends."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WEBHOOKS_DIR = "webhooks"


# riskloop event type -> Stripe's (an authorisation is a charge created with capture=false).
STRIPE_TYPES = {
    "payment.authorized": "charge.succeeded",
    "payment.captured": "charge.captured",
    "payment.refunded": "charge.refunded",
    "dispute.opened": "charge.dispute.created",
    "dispute.closed": "charge.dispute.closed",
}


def _unix(ts: Any) -> int:
    return int(ts.timestamp())


def _iso(ts: Any) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def stripe_body(ev: Mapping[str, Any]) -> bytes:
    """A ``raw.webhook_events`` row as the Stripe event body (``id`` is the dedup key)."""
    kind = ev["event_type"]
    amount, currency = int(ev["amount_minor"]), str(ev["currency"]).lower()
    if kind.startswith("dispute."):
        obj: dict[str, Any] = {"id": ev["dispute_id"], "object": "dispute", "charge": ev["payment_id"],
                               "amount": amount, "currency": currency,
                               "status": "needs_response" if kind == "dispute.opened" else "closed"}
    else:
        obj = {"id": ev["payment_id"], "object": "charge", "amount": amount, "currency": currency,
               "customer": ev["customer_id"], "captured": kind != "payment.authorized",
               "refunded": kind == "payment.refunded",
               "payment_method_details": {"type": "card", "card": {"fingerprint": ev["card_token"]}},
               "metadata": {"terminal_id": ev["terminal_id"]}}
    return _dumps({"id": ev["event_id"], "object": "event", "api_version": "2024-06-20",
                   "created": _unix(ev["occurred_at"]), "livemode": False, "type": STRIPE_TYPES[kind],
                   "data": {"object": obj}})


def _card(ev: Mapping[str, Any]) -> dict[str, Any] | None:
    """The card block a card-present (standard) processor puts in an authorisation: the full number,
    expiry and CVC, which riskloop's receiver tokenises or drops (``riskloop.core.pan``)."""
    pan = ev.get("pan")
    if ev["event_type"] != "payment.authorized" or not isinstance(pan, str):
        return None
    cid = int(str(ev["customer_id"]))
    return {"number": pan, "exp_month": cid % 12 + 1, "exp_year": 2030 + cid % 5, "cvc": f"{cid * 37 % 1000:03d}"}


def standard_body(ev: Mapping[str, Any]) -> bytes:
    """A ``raw.webhook_events`` row as a Standard Webhooks payload (``type``, ``timestamp``, ``data``),
    plus ``id``: the sender's ``webhook-id``, kept in the body so an archived line can be re-sent.
    With a ``pan`` in the row, an authorisation carries ``data.card`` (number, expiry, CVC)."""
    data = {k: ev[k] for k in ("payment_id", "card_token", "customer_id", "terminal_id", "currency")}
    data["amount_minor"] = int(ev["amount_minor"])
    if ev.get("dispute_id") is not None and ev["dispute_id"] == ev["dispute_id"]:  # NaN-safe
        data["dispute_id"] = ev["dispute_id"]
    card = _card(ev)
    if card is not None:
        data["card"] = card
    return _dumps({"id": ev["event_id"], "type": ev["event_type"], "timestamp": _iso(ev["occurred_at"]),
                   "data": data})


def with_pans(events: Any) -> Any:
    """``events`` plus the ``pan`` column a processor would know (``riskloop.simulator.cards``), for
    customers with numeric ids (the simulator's); others get none."""
    import pandas as pd

    from riskloop.simulator.cards import pans_for

    ids = pd.to_numeric(events["customer_id"], errors="coerce")
    pan = pd.Series(None, index=events.index, dtype=object)
    ok = ids.notna().to_numpy()
    if ok.any():
        pan[ok] = pans_for(ids[ok].astype("int64").to_numpy())
    return events.assign(pan=pan)


def _stripe_lines(f: Any) -> Any:
    """:func:`stripe_body` for every row of a frame, column-wise (same bytes, see the test)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from riskloop.simulator import frames as fr

    def lit(x: str) -> pa.Array:
        return pa.array(np.full(len(f), x, dtype=object), pa.string())

    kind = f["event_type"].to_numpy(dtype=object)
    dispute = np.array([k.startswith("dispute.") for k in kind], dtype=bool) if len(f) else np.zeros(0, bool)
    amount = fr.json_int(f["amount_minor"].to_numpy())
    currency = fr.json_str(pc.utf8_lower(pa.array(f["currency"].astype(str).to_numpy(dtype=object), pa.string())))
    occurred = f["occurred_at"]
    ns = occurred.dt.tz_convert("UTC").array.asi8 if hasattr(occurred.dt, "tz") else occurred.array.asi8
    created = np.where((ns < 0) & (ns % 10**9 != 0), ns // 10**9 + 1, ns // 10**9)
    stype = fr.json_str(pa.array([STRIPE_TYPES[k] for k in kind], pa.string()))
    charge = fr.join('{"id":', fr.json_str(f["payment_id"].to_numpy(dtype=object)), ',"object":"charge","amount":',
                     amount, ',"currency":', currency, ',"customer":', fr.json_str(f["customer_id"].to_numpy(dtype=object)),
                     ',"captured":', fr.json_bool(kind != "payment.authorized"),
                     ',"refunded":', fr.json_bool(kind == "payment.refunded"),
                     ',"payment_method_details":{"type":"card","card":{"fingerprint":',
                     fr.json_str(f["card_token"].to_numpy(dtype=object)),
                     '}},"metadata":{"terminal_id":', fr.json_str(f["terminal_id"].to_numpy(dtype=object)), '}}')
    dispute_ids = f["dispute_id"].to_numpy(dtype=object) if dispute.any() else np.full(len(f), None, dtype=object)
    disp = fr.join('{"id":', fr.json_str(pa.array([d if isinstance(d, str) else None for d in dispute_ids],
                                                  pa.string())),
                   ',"object":"dispute","charge":', fr.json_str(f["payment_id"].to_numpy(dtype=object)),
                   ',"amount":', amount, ',"currency":', currency, ',"status":',
                   pa.array(np.where(kind == "dispute.opened", '"needs_response"', '"closed"'), pa.string()), "}")
    obj = pc.if_else(pa.array(dispute), disp, charge) if len(f) else lit("")
    return fr.join('{"id":', fr.json_str(f["event_id"].to_numpy(dtype=object)),
                   ',"object":"event","api_version":"2024-06-20","created":', fr.json_int(created),
                   ',"livemode":false,"type":', stype, ',"data":{"object":', obj, "}}")


def _standard_lines(f: Any) -> Any:
    """:func:`standard_body` for every row of a frame, column-wise (same bytes, see the test)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from riskloop.simulator import frames as fr

    occurred = f["occurred_at"].dt.tz_convert("UTC")
    ns = occurred.array.asi8
    stamp = np.datetime_as_string(ns.astype("datetime64[ns]").astype("datetime64[s]"), unit="s")
    millis = pc.utf8_lpad(fr.json_int((ns // 10**6) % 1000), 3, "0")
    iso = fr.join('"', pa.array(stamp.astype(object), pa.string()), ".", millis, 'Z"')
    dispute_ids = f["dispute_id"].to_numpy(dtype=object)
    has_dispute = np.array([isinstance(d, str) for d in dispute_ids], dtype=bool)
    dispute = pc.if_else(pa.array(has_dispute),
                         fr.join(',"dispute_id":', fr.json_str(pa.array(
                             [d if ok else "" for d, ok in zip(dispute_ids, has_dispute, strict=True)], pa.string()))),
                         "")
    kind = f["event_type"].to_numpy(dtype=object)
    pans = f["pan"].to_numpy(dtype=object) if "pan" in f else np.full(len(f), None, dtype=object)
    with_card = (kind == "payment.authorized") & np.array([isinstance(p, str) for p in pans], dtype=bool)
    cid = pd_ints(f["customer_id"], with_card)
    card = pc.if_else(pa.array(with_card), fr.join(
        ',"card":{"number":', fr.json_str(pa.array([p if ok else "" for p, ok in zip(pans, with_card, strict=True)],
                                                   pa.string())),
        ',"exp_month":', fr.json_int(cid % 12 + 1), ',"exp_year":', fr.json_int(2030 + cid % 5),
        ',"cvc":"', pc.utf8_lpad(fr.json_int(cid * 37 % 1000), 3, "0"), '"}'), "")
    return fr.join('{"id":', fr.json_str(f["event_id"].to_numpy(dtype=object)), ',"type":',
                   fr.json_str(kind), ',"timestamp":', iso,
                   ',"data":{"payment_id":', fr.json_str(f["payment_id"].to_numpy(dtype=object)),
                   ',"card_token":', fr.json_str(f["card_token"].to_numpy(dtype=object)),
                   ',"customer_id":', fr.json_str(f["customer_id"].to_numpy(dtype=object)),
                   ',"terminal_id":', fr.json_str(f["terminal_id"].to_numpy(dtype=object)),
                   ',"currency":', fr.json_str(f["currency"].to_numpy(dtype=object)),
                   ',"amount_minor":', fr.json_int(f["amount_minor"].to_numpy()), dispute, card, "}}")


def pd_ints(values: Any, where: Any) -> Any:
    """Integer customer ids where ``where`` holds (0 elsewhere): the card block's expiry and CVC seed."""
    import numpy as np
    import pandas as pd

    out = np.zeros(len(values), dtype=np.int64)
    if where.any():
        out[where] = pd.to_numeric(values[where]).astype("int64").to_numpy()
    return out


def write_webhook_files(events: Any, out_dir: Path) -> dict[str, int]:
    """Write ``<out_dir>/webhooks/{stripe,standard}.jsonl`` from a ``webhook_events`` frame, in arrival
    order (as a receiver would have seen them). Returns lines per file. Write-then-rename.

    Rendered column-wise (:func:`_stripe_lines`, :func:`_standard_lines`): the bytes are those of
    :func:`stripe_body` / :func:`standard_body` row by row, at a fraction of the time."""
    from riskloop.simulator.frames import write_lines

    target = Path(out_dir) / WEBHOOKS_DIR
    target.mkdir(parents=True, exist_ok=True)
    frame = with_pans(events.sort_values(["received_at", "event_id"], kind="stable"))
    counts: dict[str, int] = {}
    for scheme, render in (("stripe", _stripe_lines), ("standard", _standard_lines)):
        rows = frame[frame["processor"] == scheme].reset_index(drop=True)
        write_lines(target / f"{scheme}.jsonl", render(rows))
        counts[scheme] = len(rows)
    return counts
