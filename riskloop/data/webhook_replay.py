"""Re-send an archived webhook file (JSON lines) to a running receiver, signed at send time:
``riskloop replay webhooks``. A processor's redelivery, or a backfill of the live path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from riskloop.core.signatures import SCHEMES, Scheme, WebhookSettings, signed_headers

log = logging.getLogger(__name__)

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
