"""The scoring service's side of :mod:`riskloop.core.identity`: ``Authorization: Bearer <key or JWT>``
resolved to a :class:`Principal` by a FastAPI dependency.

* **Fail closed.** With no principal configured every protected endpoint answers 401 — a scoring
  service that silently runs open because an environment variable was forgotten is worse than
  one that refuses. The local demo generates a throw-away key per run and passes it to the
  server it starts (``riskloop.ops.demo``). ``/healthz``, ``/readyz`` and ``/metrics`` stay open for
  probes and scrapers.
* **Governance needs a name.** A governance action (approve, reject, promote, canary, policy change)
  from an unnamed legacy ``key:role`` key is a 403 saying so.

Roles (see :data:`PERMISSIONS`): ``scorer`` scores (and reports step-up outcomes, as the channel
that asked for the challenge); ``reviewer`` reads decisions and overrides them; ``analyst`` works
the case queue and reads decisions; ``admin`` operates the service (reload, read decisions and
cases, score for smoke tests, pull an emergency stop) but cannot override or work a case — four eyes:
whoever runs the service is not whoever changes a customer's outcome or gives the verdict that
becomes a label; ``policy`` drafts decision policies and edits lists, which a ``reviewer`` approves.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request

from riskloop.core.identity import (  # noqa: F401  (re-exported: serving's names for them)
    PERMISSIONS,
    ROLES,
    ApiKeyError,
    Forbidden,
    KeyRing,
    Principal,
    authorize,
)

log = logging.getLogger(__name__)


def permits(keys: KeyRing, authorization: str | None, action: str) -> bool:
    """Whether an ``Authorization`` header value carries a key whose role may do ``action``: the
    yes/no of :func:`require` without building its error (the fast paths hand a "no" to the route,
    whose dependency answers it)."""
    token = bearer_token(authorization)
    principal = keys.authenticate(token) if token is not None else None
    if principal is None:
        return False
    try:
        authorize(principal, action)
    except Forbidden:
        return False
    return True


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
    """A FastAPI dependency: 401 without a valid key, 403 if its principal may not do ``action``."""
    allowed = PERMISSIONS[action]  # an unknown action fails at import, not at the first request

    async def dependency(request: Request) -> Principal:  # async: no thread-pool hop per request
        principal = identify(request.app.state.keys, request.headers.get("authorization"))
        if principal.role not in allowed:
            raise HTTPException(status_code=403, detail=f"role {principal.role!r} may not {action.replace('_', ' ')}")
        try:
            return authorize(principal, action)  # a governance action also needs a named principal
        except Forbidden as exc:
            raise HTTPException(status_code=403, detail=str(exc)) from exc

    return dependency
