"""API keys with roles: ``RISKLOOP_API_KEYS=key:role,key:role`` and ``Authorization: Bearer <key>``.

Why this shape:

* **Fail closed.** With no key configured every protected endpoint answers 401 — a scoring
  service that silently runs open because an environment variable was forgotten is worse than
  one that refuses. The local demo generates a throw-away key per run and passes it to the
  server it starts (``riskloop.ops.demo``). ``/healthz``, ``/readyz`` and ``/metrics`` stay open for
  probes and scrapers.
* **Constant time.** The presented key is hashed and compared (``hmac.compare_digest``) with
  *every* configured key's hash, without an early exit, so neither the position of a match nor
  the length of a key leaks through timing.
* **No key in logs or tables.** A caller is identified by ``role:<first 12 hex of sha256(key)>``
  (``Principal.actor``), which is what overrides record as their author.

Roles (see :data:`PERMISSIONS`): ``scorer`` scores (and reports step-up outcomes, as the channel
that asked for the challenge); ``reviewer`` reads decisions and overrides them; ``analyst`` works
the case queue and reads decisions; ``admin`` operates the service (reload, read decisions and
cases, score for smoke tests) but cannot override or work a case — four eyes: whoever runs the
service is not whoever changes a customer's outcome or gives the verdict that becomes a label.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request

log = logging.getLogger(__name__)

ROLES = frozenset({"scorer", "reviewer", "analyst", "admin"})

# action -> roles allowed to perform it
PERMISSIONS: dict[str, frozenset[str]] = {
    "score": frozenset({"scorer", "admin"}),
    "read_decision": frozenset({"reviewer", "analyst", "admin"}),
    "record_outcome": frozenset({"scorer", "admin"}),  # the channel reports a step-up challenge's outcome
    "read_cases": frozenset({"analyst", "admin"}),
    "work_cases": frozenset({"analyst"}),  # claim, release, note, close
    "override": frozenset({"reviewer"}),
    "admin": frozenset({"admin"}),
    "read_model": frozenset({"scorer", "reviewer", "admin"}),
    "read_review": frozenset({"reviewer", "admin"}),
    "review_model": frozenset({"reviewer"}),  # approve / reject a challenger (serving.review)
    # run the promotion gate (it moves @champion only if every gate, approval included, passes)
    "promote_model": frozenset({"reviewer", "admin"}),
}


class ApiKeyError(ValueError):
    """``RISKLOOP_API_KEYS`` is malformed (refuse to start rather than guess)."""


@dataclass(frozen=True)
class Principal:
    """Who called: their role and a non-secret fingerprint of their key."""

    role: str
    key_id: str

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.key_id}"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """The configured keys, hashed; :meth:`authenticate` is constant-time over all of them."""

    def __init__(self, entries: list[tuple[str, str]]) -> None:
        self._entries = [(_digest(k), Principal(role=r, key_id=hashlib.sha256(k.encode()).hexdigest()[:12]))
                         for k, r in entries]

    @classmethod
    def parse(cls, raw: str | None, extra_admin: str | None = None) -> "KeyRing":
        """``key:role,key:role`` (whitespace ignored). The role is after the *last* colon so keys
        may contain colons. ``extra_admin`` is the legacy ``RISKLOOP_SERVING_ADMIN_TOKEN``."""
        entries: list[tuple[str, str]] = []
        for item in (raw or "").split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, role = item.rpartition(":")
            key, role = key.strip(), role.strip().lower()
            if not sep or not key:
                raise ApiKeyError("RISKLOOP_API_KEYS entries must be key:role")
            if role not in ROLES:
                raise ApiKeyError(f"RISKLOOP_API_KEYS: unknown role {role!r} (roles: {sorted(ROLES)})")
            if len(key) < 16:
                log.warning("an API key with role %s is shorter than 16 characters", role)
            entries.append((key, role))
        if extra_admin:
            entries.append((extra_admin, "admin"))
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, key: str) -> Principal | None:
        presented = _digest(key)
        found: Principal | None = None
        for digest, principal in self._entries:  # no early exit: same work whichever key matches
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        return found


def permits(keys: KeyRing, authorization: str | None, action: str) -> bool:
    """Whether an ``Authorization`` header value carries a key whose role may do ``action``: the
    yes/no of :func:`require` without building its error (the fast paths hand a "no" to the route,
    whose dependency answers it)."""
    token = bearer_token(authorization)
    principal = keys.authenticate(token) if token is not None else None
    return principal is not None and principal.role in PERMISSIONS[action]


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def identify(keys: KeyRing, authorization: str | None) -> Principal:
    """The caller an ``Authorization`` header value names, or the 401 (with its Bearer challenge)
    for none: used by :func:`require` and, before any body is read, by :class:`serving.limits.BodyLimits`."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if len(keys) == 0:
        raise HTTPException(status_code=401, headers=challenge,
                            detail="no API keys configured on this server (set RISKLOOP_API_KEYS)")
    token = bearer_token(authorization)
    if token is None:
        raise HTTPException(status_code=401, headers=challenge, detail="missing bearer API key")
    principal = keys.authenticate(token)
    if principal is None:
        raise HTTPException(status_code=401, headers=challenge, detail="invalid API key")
    return principal


def require(action: str) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: 401 without a valid key, 403 if its role may not do ``action``."""
    allowed = PERMISSIONS[action]

    async def dependency(request: Request) -> Principal:  # async: no thread-pool hop per request
        principal = identify(request.app.state.keys, request.headers.get("authorization"))
        if principal.role not in allowed:
            raise HTTPException(status_code=403, detail=f"role {principal.role!r} may not {action.replace('_', ' ')}")
        return principal

    return dependency
