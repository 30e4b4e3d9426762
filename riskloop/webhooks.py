"""Processor webhook schemes: verify and sign, without FastAPI (the receiver is ``serving.webhooks``).

Two schemes, one per processor riskloop lands:

- **stripe**: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]``, HMAC-SHA256 (hex) over
  ``"{t}.{raw body}"`` keyed with the secret string exactly as configured (``whsec_…`` included:
  that is how Stripe keys it). Implemented here with :mod:`hmac`: it is the one primitive also
  checked against GitHub's published ``X-Hub-Signature-256`` vector, and the ``stripe`` SDK (a
  whole API client) would only add a wall-clock-bound copy of these few lines.
- **standard** (Standard Webhooks): ``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature: v1,<base64> [v1,<base64> …]`` over ``"{id}.{timestamp}.{raw body}"``, secrets
  ``whsec_<base64 key>``. The key decoding and signing are the ``standardwebhooks`` library's;
  its ``verify`` is not used because it reads the wall clock (our tolerance check takes an
  injected clock, so tests can pin time to the spec's example) and raises non-verification
  errors on malformed headers.

Both verifiers work on the raw request bytes, before anything parses them, compare in constant
time (:func:`hmac.compare_digest`), accept a signature from any configured secret (rotation)
and reject timestamps more than ``tolerance_s`` away from *now* in either direction. A missing
or empty secret is a rejection, never a pass.

The simulator side lives here too: :func:`stripe_body` / :func:`standard_body` render a
``raw.webhook_events`` row as the exact body that processor sends, :func:`write_webhook_files`
writes them as JSON lines and :func:`replay` signs and posts such a file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

Scheme = Literal["stripe", "standard"]
SCHEMES: tuple[Scheme, ...] = ("stripe", "standard")
WEBHOOKS_DIR = "webhooks"


class WebhookSettings(BaseSettings):
    """Receiver configuration (``RISKLOOP_WEBHOOK_*``). Secrets are comma-separated lists: any one
    verifies (so a rotation can overlap old and new), the first one signs (``riskloop replay``)."""

    model_config = SettingsConfigDict(env_prefix="RISKLOOP_WEBHOOK_", extra="ignore")

    secrets_stripe: str = Field(default="", repr=False, description="Stripe endpoint secrets (whsec_…), comma-separated.")
    secrets_standard: str = Field(default="", repr=False,
                                  description="Standard Webhooks secrets (whsec_<base64>), comma-separated.")
    tolerance_s: int = Field(default=300, gt=0, description="Max |now - signature timestamp|, seconds.")
    max_body_bytes: int = Field(default=256 * 1024, gt=0, description="Larger bodies get a 413 unread.")
    batch_max: int = Field(default=512, gt=0, description="Events committed together by the inbox writer.")

    def secrets(self, scheme: Scheme) -> list[str]:
        raw = self.secrets_stripe if scheme == "stripe" else self.secrets_standard
        return [s.strip() for s in raw.split(",") if s.strip()]


class Rejection(Exception):
    """A webhook refused before anything is written: ``status`` (4xx) and a stable ``reason`` code
    (the metric label and the JSON error); ``detail`` is for the log and the sender, never secret."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail = status, reason, detail


def _check_time(ts: int, now: float, tolerance_s: int) -> None:
    if ts < now - tolerance_s:
        raise Rejection(401, "timestamp_too_old", f"signature timestamp more than {tolerance_s}s old")
    if ts > now + tolerance_s:
        raise Rejection(401, "timestamp_in_future", f"signature timestamp more than {tolerance_s}s ahead")


def _parse_ts(value: str) -> int:
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise Rejection(400, "malformed_header", "timestamp is not a unix time in seconds")
    return int(value)


# --- the HMAC primitive (GitHub's X-Hub-Signature-256 vector tests it) -------------------------

def hmac_sha256_hex(key: bytes, message: bytes) -> str:
    """Hex HMAC-SHA256: Stripe's ``v1`` and GitHub's ``X-Hub-Signature-256`` (after ``sha256=``)."""
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# --- stripe -------------------------------------------------------------------------------------

def sign_stripe(body: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``body`` at ``timestamp``."""
    return f"t={timestamp},v1={hmac_sha256_hex(secret.encode(), f'{timestamp}.'.encode() + body)}"


def verify_stripe(body: bytes, header: str | None, secrets: list[str], now: float, tolerance_s: int = 300) -> int:
    """Verify a ``Stripe-Signature`` over the raw ``body``; return its timestamp or raise :class:`Rejection`."""
    if not secrets:
        raise Rejection(401, "no_secret", "no stripe webhook secret configured")
    if not header:
        raise Rejection(400, "missing_header", "Stripe-Signature header required")
    ts: int | None = None
    v1: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t" and ts is None:
            ts = _parse_ts(value)
        elif key == "v1":
            v1.append(value.strip())
    if ts is None or not v1:
        raise Rejection(400, "malformed_header", "Stripe-Signature needs t= and at least one v1=")
    _check_time(ts, now, tolerance_s)
    signed = f"{ts}.".encode() + body
    for secret in secrets:
        expected = hmac_sha256_hex(secret.encode(), signed).encode()
        # compare_digest on ASCII bytes: constant time in the content, whatever the sender put there
        if any(hmac.compare_digest(expected, sig.encode("ascii", "replace")) for sig in v1):
            return ts
    raise Rejection(401, "bad_signature", "no v1 signature matches a configured secret")


# --- standard webhooks --------------------------------------------------------------------------

def _standard_keys(secrets: list[str]) -> list[Any]:
    """``standardwebhooks.Webhook`` per usable secret; an undecodable or empty one is skipped (logged)."""
    from standardwebhooks import Webhook

    keys = []
    for i, secret in enumerate(secrets):
        try:
            keys.append(Webhook(secret))
        except Exception as exc:  # noqa: BLE001 - the library raises several types; never log the secret
            log.error("standard webhook secret #%d unusable (%s): ignored", i + 1, type(exc).__name__)
    return keys


@dataclass
class StandardVerifier:
    """Standard Webhooks verification with keys decoded once (not per request)."""

    secrets: list[str]
    tolerance_s: int = 300
    _keys: list[Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._keys = _standard_keys(self.secrets)

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> tuple[str, int]:
        """Return ``(webhook-id, timestamp)`` or raise :class:`Rejection`. ``headers`` lower-cased."""
        if not self._keys:
            raise Rejection(401, "no_secret", "no standard webhook secret configured")
        msg_id, ts_raw, sig_header = (headers.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
        if not (msg_id and ts_raw and sig_header):
            raise Rejection(400, "missing_header", "webhook-id, webhook-timestamp and webhook-signature required")
        if len(msg_id) > 256 or not msg_id.isprintable():
            raise Rejection(400, "malformed_header", "webhook-id must be printable, at most 256 characters")
        ts = _parse_ts(ts_raw)
        _check_time(ts, now, tolerance_s=self.tolerance_s)
        passed: list[bytes] = []
        for item in sig_header.split():
            version, sep, sig = item.partition(",")
            if sep and version == "v1":
                try:
                    passed.append(base64.b64decode(sig, validate=True))
                except (binascii.Error, ValueError):
                    continue
        if not passed:
            raise Rejection(400, "malformed_header", "webhook-signature has no v1,<base64> entry")
        try:
            text = body.decode("utf-8")  # the library signs str; UTF-8 round-trips the exact bytes
        except UnicodeDecodeError:
            raise Rejection(400, "invalid_body", "body is not UTF-8") from None
        when = datetime.fromtimestamp(ts, UTC)
        for key in self._keys:
            expected = base64.b64decode(key.sign(msg_id, when, text).partition(",")[2])
            if any(hmac.compare_digest(expected, sig) for sig in passed):
                return msg_id, ts
        raise Rejection(401, "bad_signature", "no v1 signature matches a configured secret")


def sign_standard(msg_id: str, body: bytes, secret: str, timestamp: int) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (signed by the library)."""
    from standardwebhooks import Webhook

    sig = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode("utf-8"))
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": sig}


def signed_headers(scheme: Scheme, body: bytes, secret: str, timestamp: int) -> dict[str, str]:
    """Headers a processor of ``scheme`` sends with ``body`` (the event id is read from the body)."""
    if scheme == "stripe":
        return {"Stripe-Signature": sign_stripe(body, secret, timestamp), "Content-Type": "application/json"}
    msg_id = json.loads(body)["id"]
    return {**sign_standard(msg_id, body, secret, timestamp), "Content-Type": "application/json"}


# --- simulated processor bodies -----------------------------------------------------------------

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
    expiry and CVC, which riskloop's receiver tokenises or drops (``riskloop.pan``)."""
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


# --- replay -------------------------------------------------------------------------------------

def read_bodies(path: Path) -> Iterator[bytes]:
    """Each non-empty line of a JSON-lines archive, as the exact bytes to send."""
    with Path(path).open("rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


@dataclass
class ReplayResult:
    sent: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.errors == 0 and all(200 <= s < 300 for s in self.status_counts)

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
                "errors": self.errors, "seconds": round(self.seconds, 3),
                "per_second": round(self.sent / self.seconds, 1) if self.seconds else None}


async def replay_async(bodies: Iterable[bytes], url: str, scheme: Scheme, secret: str, *, concurrency: int = 8,
                       clock: Callable[[], float] = time.time, timeout_s: float = 10.0) -> ReplayResult:
    """Sign each body at send time with ``secret`` and POST it, ``concurrency`` requests in flight."""
    import httpx

    if not secret:
        raise ValueError(f"no {scheme} secret to sign with (RISKLOOP_WEBHOOK_SECRETS_{scheme.upper()})")
    result = ReplayResult()
    it = iter(bodies)
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def worker() -> None:
            for body in it:  # a shared iterator: each body goes to exactly one worker
                headers = signed_headers(scheme, body, secret, int(clock()))
                try:
                    resp = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    result.errors += 1
                    log.warning("replay: %s", exc)
                    continue
                result.sent += 1
                result.status_counts[resp.status_code] = result.status_counts.get(resp.status_code, 0) + 1
                if resp.status_code >= 300:
                    log.warning("replay: %s %s", resp.status_code, resp.text[:200])

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    result.seconds = time.perf_counter() - t0
    return result


def replay(path: Path, url: str, scheme: Scheme | None = None, *, concurrency: int = 8,
           settings: WebhookSettings | None = None) -> ReplayResult:
    """Sign (with the first configured secret) and send every line of ``path``; scheme from the file
    name (``stripe.jsonl`` / ``standard.jsonl``) unless given."""
    scheme = scheme or Path(path).stem  # type: ignore[assignment]
    if scheme not in SCHEMES:
        raise ValueError(f"cannot tell the scheme of {path}; pass stripe or standard")
    secrets = (settings or WebhookSettings()).secrets(scheme)  # type: ignore[arg-type]
    return asyncio.run(replay_async(read_bodies(path), url, scheme, secrets[0] if secrets else "",  # type: ignore[arg-type]
                                    concurrency=concurrency))
