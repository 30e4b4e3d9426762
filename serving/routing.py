"""Which model decides a fraud request: the champion alone, a canary share for the challenger, or shadow.

The hot path reads one immutable :class:`Routing` from ``app.state.route`` (the mode, the share and
the loaded challenger together, so a request never pairs one canary's share with another's model);
the poller builds a new one when the canary state in Postgres or the challenger alias changes and
swaps it in with one attribute store. No request reads the database for it.

Routing is deterministic per request: a request goes to the challenger when the hash of its
``transaction_id`` falls below the share, so a retried or replayed request goes to the same model
and the routed share converges on the configured one in aggregate (a Bernoulli draw per distinct
transaction, independent of arrival order, process or restart).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from serving.config import ServingSettings
from serving.model import LoadedModel

_SCALE = float(2**64)


def bucket(key: str) -> float:
    """A uniform number in [0, 1) fixed by ``key`` (blake2b: stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / _SCALE


@dataclass(frozen=True)
class Routing:
    """The serving mode as the hot path sees it."""

    mode: str = "champion"  # champion | canary | shadow (what was asked for)
    share: float = 0.0
    challenger: LoadedModel | None = None
    canary_id: str | None = None
    challenger_version: str | None = None  # the version the canary is about (None: any, from settings)
    source: str = "settings"  # or "database" (governance.canary_state)

    @property
    def wants_challenger(self) -> bool:
        return self.mode in ("canary", "shadow") and (self.mode == "shadow" or self.share > 0)

    @property
    def effective_mode(self) -> str:
        """``champion`` until the challenger this mode asks for is loaded (and is the right version)."""
        if not self.wants_challenger or self.challenger is None:
            return "champion"
        if self.challenger_version is not None and self.challenger.version != self.challenger_version:
            return "champion"
        return self.mode

    def to_challenger(self, transaction_id: str) -> bool:
        return bucket(transaction_id) < self.share

    def with_challenger(self, challenger: LoadedModel | None) -> "Routing":
        return Routing(self.mode, self.share, challenger, self.canary_id, self.challenger_version, self.source)

    def describe(self) -> dict[str, Any]:
        c = self.challenger
        return {"mode": self.mode, "effective_mode": self.effective_mode, "share": self.share,
                "canary_id": self.canary_id, "source": self.source, "challenger_version": self.challenger_version,
                "challenger": None if c is None else {"name": c.name, "alias": c.alias, "version": c.version,
                                                      "loaded_at": c.loaded_at.isoformat(), "source": c.source}}


def from_settings(cfg: ServingSettings) -> Routing:
    return Routing(mode=cfg.mode, share=cfg.canary_share if cfg.mode == "canary" else 0.0)


def from_state(state: Any, cfg: ServingSettings) -> Routing:
    """From a :class:`riskloop.governance.canary.CanaryState` (``None``: no canary ever recorded → settings)."""
    if state is None:
        return from_settings(cfg)
    if not state.active:
        return Routing(mode="champion", share=0.0, canary_id=state.canary_id, source="database")
    return Routing(mode=state.mode, share=state.share if state.mode == "canary" else 0.0, canary_id=state.canary_id,
                   challenger_version=state.challenger_version, source="database")


def same_terms(a: Routing, b: Routing) -> bool:
    """Do two routings say the same thing (ignoring which challenger object is loaded)?"""
    return (a.mode, a.share, a.canary_id, a.challenger_version, a.source) == \
        (b.mode, b.share, b.canary_id, b.challenger_version, b.source)
