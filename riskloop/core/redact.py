"""Secrets never printed or stored: the one function that masks them in text riskloop writes out.

:func:`redact` is applied wherever text leaves the process or lands in an append-only row: every
log record (:class:`RedactingFilter`, installed by :func:`riskloop.core.logs.configure`, which the
CLI, the scoring server and its uvicorn workers call), an alert sink's error and the delivery
outcome stored in ``monitoring.alert_events``, the errors the scoring server returns, and
``riskloop up|status``. It masks, by shape:

* the password of a URL with credentials (``postgresql://ann:***@db/warehouse``);
* the secret part of webhook URLs known to carry one in their path (Slack, Discord, Teams,
  PagerDuty integration keys);
* ``Bearer``/``Basic`` credentials, and signing secrets/tokens with a known prefix (``whsec_…``,
  Slack ``xox…-``, Stripe ``sk_live_…``, GitHub ``ghp_…``);
* the value of a secret-named key (password, secret, api_key, access_token, …) in ``key=value``,
  ``key: value`` and JSON/dict text;

and, by value, every secret this process was configured with (:func:`register_settings`): a
secret with an unexpected shape is still masked wherever it appears, also percent-encoded.
Masking keeps what identifies the thing (scheme, user, host, the key's name) so the line is still
useful to whoever reads it.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from riskloop.core.identity import secret_keys

MASK = "***"
# Shorter configured values are not masked by value: they would mask ordinary words and numbers.
MIN_SECRET_LENGTH = 6

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)(?P<pw>[^@/?#\s]+)(?=@)")
_SECRET_PATHS = re.compile(
    r"(?P<head>hooks\.slack\.com/(?:services|workflows|triggers)/"
    r"|discord(?:app)?\.com/api/webhooks/"
    r"|\.webhook\.office\.com/webhookb2/"
    r"|events\.pagerduty\.com/integration/"
    r"|/services/T[A-Z0-9]+/B[A-Z0-9]+/)"  # Slack's path shape behind any host (a proxy, a test double)
    r"(?P<secret>[^\s\"'<>?#]+)", re.IGNORECASE)
_AUTH_SCHEME = re.compile(r"(?P<head>\b(?:Bearer|Basic|Token)\s+)(?P<secret>[A-Za-z0-9._~+/=\-]{8,})", re.IGNORECASE)
_PREFIXED = re.compile(
    r"\b(?P<head>whsec_|xox[abposr]-|xapp-|(?:sk|rk)_(?:live|test)_|gh[pousr]_|github_pat_|glpat-)"
    r"(?P<secret>[A-Za-z0-9+/=_\-]{6,})")
_KEY = (r"[A-Za-z0-9_.\-]*(?:password|passwd|pwd|secret|api[_\-]?keys?|apikey|access[_\-]?key|private[_\-]?key"
        r"|token[_\-]?key|signing[_\-]?key|(?:access|refresh|auth|id|admin|api|session|bot)[_\-]?token"
        r"|credentials?)|token|authorization|x-api-key")
# A key (a whole word, maybe quoted) and its separator; whether the key names a secret is checked
# after (one regex over every word with each secret name as a suffix backtracks badly).
_CANDIDATE = re.compile(r"""(?<![A-Za-z0-9_.\-])(?P<q>["']?)(?P<key>[A-Za-z0-9_.\-]+)(?P=q)\s*[:=]\s*""")
_SECRET_KEY = re.compile(_KEY, re.IGNORECASE)
_VALUE = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|(?P<bare>[^\s&,;"'}\]\)]+)""")

_PREFIX_HINTS = ("whsec_", "xox", "xapp-", "sk_", "rk_", "gh", "github_pat_", "glpat-")
_KEY_HINTS = ("pass", "pwd", "secret", "key", "token", "credential", "authorization")
_SCHEMES = frozenset({"bearer", "basic", "token"})
_lock = threading.Lock()
_values: set[str] = set()
_by_value: re.Pattern[str] | None = None


def _mask_key_values(text: str) -> str:
    out: list[str] = []
    last = 0
    for m in _CANDIDATE.finditer(text):
        if m.start() < last or not _SECRET_KEY.fullmatch(m.group("key")):
            continue
        v = _VALUE.match(text, m.end())
        if v is None:
            continue
        value = v.group(0)
        if v.group("bare") is not None:
            if value.lower() in _SCHEMES:  # "Authorization: Bearer ***": _AUTH_SCHEME masked the credential
                continue
            masked = MASK
        else:
            masked = value[0] + MASK + value[0]
        out += [text[last:m.end()], masked]
        last = v.end()
    return "".join([*out, text[last:]]) if out else text


def redact(text: str) -> str:
    """``text`` with every secret riskloop can recognise replaced by ``***`` (see the module doc)."""
    if not text:
        return text
    if _by_value is not None:
        text = _by_value.sub(MASK, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    # Cheap substring tests first: most log lines hold none of these, and a line is logged often.
    lowered = text.lower()
    if "/" in text:
        text = _SECRET_PATHS.sub(lambda m: m.group("head") + MASK, text)
    if any(h in lowered for h in ("bearer", "basic", "token")):
        text = _AUTH_SCHEME.sub(lambda m: m.group("head") + MASK, text)
    if any(h in lowered for h in _PREFIX_HINTS):
        text = _PREFIXED.sub(lambda m: m.group("head") + MASK, text)
    if ("=" in text or ":" in text) and any(h in lowered for h in _KEY_HINTS):
        text = _mask_key_values(text)
    return text


def redact_value(value: Any) -> Any:
    """:func:`redact` through a JSON-like value (strings in dicts, lists, tuples); other values as given.
    Returns new containers, never changes the caller's."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


def describe(exc: BaseException) -> str:
    """``"Type: message"`` of an exception, redacted: what riskloop reports and stores as an error."""
    return redact(f"{type(exc).__name__}: {exc}")


def register(values: Iterable[str | None]) -> None:
    """Mask these configured secrets by value from now on in this process (and their URL-quoted form)."""
    global _by_value
    new = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
    new |= {quote(v, safe="") for v in new}
    with _lock:
        if new <= _values:
            return
        _values.update(new)
        # Longest first: a secret containing another is masked whole.
        _by_value = re.compile("|".join(re.escape(v) for v in sorted(_values, key=len, reverse=True)))


def secrets_of(settings: Any) -> list[str]:
    """The secret values of a pydantic settings object: its ``SecretStr`` fields, the passwords of its
    URL fields, and the values of secret-named fields (``RISKLOOP_API_KEYS``' keys one by one)."""
    from pydantic import SecretStr

    out: list[str] = []
    for name, value in settings:
        if isinstance(value, SecretStr):
            out.append(value.get_secret_value())
        elif isinstance(value, str) and "://" in value:
            try:
                password = urlsplit(value).password or ""
                out += [password, unquote(password)]
            except ValueError:
                pass
        elif isinstance(value, str) and _SECRET_KEY.fullmatch(name):
            out.append(value)
            if name.lower() == "api_keys":  # 'name:role:key,key:role'
                out.extend(secret_keys(value))
    return [v for v in out if v]


def register_settings(*settings: Any) -> None:
    """Mask every secret of these settings objects by value (:func:`secrets_of`) in this process."""
    for s in settings:
        register(secrets_of(s))


# --- logging -----------------------------------------------------------------------------------

_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """A handler filter that redacts the record it lets through: the message with its arguments, the
    extras (what JSON lines carry as keys), and a traceback that holds a secret (then folded into the
    message, since a formatter re-renders ``exc_info`` from the live exception)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is the formatter's to report
            return True
        clean = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            text = record.exc_text or "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            clean_tb = redact(text)
            if clean_tb != text:
                clean, record.exc_info, record.exc_text = f"{clean}\n{clean_tb}", None, None
        if clean != message:
            record.msg, record.args = clean, ()
        for name, value in list(record.__dict__.items()):
            if name not in _RECORD_FIELDS and not name.startswith("_") and isinstance(value, str | dict | list | tuple):
                record.__dict__[name] = redact_value(value)
        return True
