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

The bodies a simulated processor sends are :mod:`riskloop.simulator.webhooks`; re-sending an
archived file is :mod:`riskloop.data.webhook_replay`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

Scheme = Literal["stripe", "standard"]
SCHEMES: tuple[Scheme, ...] = ("stripe", "standard")


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
