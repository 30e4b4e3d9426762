"""Where each card paid last, and how fast it would have had to travel to pay here now.

The impossible-travel rule (``kind: impossible_travel`` in a policy) compares a payment's country
with the country of the card's previous payment: if covering the great-circle distance between the
two countries' centroids in the time between the payments needs a speed above the policy's
``max_speed_kmh``, one of the two payments was not made by someone holding the card.

Country positions are the table ``data/country_centroids.csv`` (ISO 3166-1 alpha-2 → latitude,
longitude), built from public-domain sources: the CIA World Factbook's "geographic coordinates" of
each country (a representative centre), and for the few territories the Factbook has no entry for,
the tz database's (``zone.tab``) coordinates of the territory's time zone; the ``source`` column
says which for each row. A country is a point here, so two border towns are as far apart as the
two countries' centres: the rule's ``min_distance_km`` keeps neighbours out of it.

Per-card state follows :mod:`serving.devices`: each process keeps the last sighting per card in
memory (a dict lookup on the hot path, no round trip), warmed at start-up from
``serving.card_locations``, which the decision-log writer upserts in the transaction of the log
rows, and refreshed from it by the poller (``card_location_poll_s``); a process's own payments count
at once. With several workers a payment decided by another process is seen here only after its
writer commits and this process's next refresh (about a poll interval): inside that window this
process compares with an older sighting or none, so the rule can *miss* a pair, never invent one
(whatever it compares is a real pair of sightings of the card). The values used are logged as
``signals`` (``previous_country``, ``previous_at``, ``distance_km``, ``elapsed_h``, ``speed_kmh``),
and the rule reads only those, so a replay needs neither this state nor the table.

Every fraud payment that names a country is a sighting, whatever its decision: a declined attempt
still says where the card (or its stolen details) was used.
"""

from __future__ import annotations

import csv
import logging
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import psycopg

from riskloop.decisions.log import CARD_LOCATIONS_TABLE
from riskloop.decisions.policy import Policy

log = logging.getLogger(__name__)

CENTROIDS_CSV = Path(__file__).resolve().parent / "data" / "country_centroids.csv"
EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM  # no two points are farther apart

WARM_SQL = f"""
select card_token, country, seen_at from {CARD_LOCATIONS_TABLE}
where updated_at > now() - make_interval(secs => %s)
order by updated_at desc limit %s
"""
REFRESH_SQL = f"select card_token, country, seen_at, updated_at from {CARD_LOCATIONS_TABLE} where updated_at > %s"
# As serving.devices: a row is stamped at upsert and commits a moment later, so each refresh
# re-reads this much before the newest stamp seen (re-reading a sighting changes nothing).
REFRESH_OVERLAP = timedelta(seconds=5)


@cache
def centroids() -> dict[str, tuple[float, float]]:
    """ISO 3166-1 alpha-2 code → (latitude, longitude) in degrees."""
    with CENTROIDS_CSV.open(newline="", encoding="utf-8") as f:
        return {r["country"]: (float(r["lat"]), float(r["lon"])) for r in csv.DictReader(f)}


@lru_cache(maxsize=65_536)  # at most 250² country pairs
def distance_km(a: str, b: str) -> float | None:
    """Great-circle (haversine) distance between two countries' centroids; None if either is unknown."""
    table = centroids()
    if a not in table or b not in table:
        return None
    if a == b:
        return 0.0
    (lat1, lon1), (lat2, lon2) = (map(math.radians, table[a]), map(math.radians, table[b]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def horizon_h(policy: Policy) -> float | None:
    """How long before a payment the card's previous one can be and still make one of the policy's
    impossible_travel rules fire (half the earth's circumference at the slowest speed limit);
    None when the policy has no such rule (then nothing here runs)."""
    speeds = [r.max_speed_kmh for r in policy.rules if r.kind == "impossible_travel" and r.max_speed_kmh]
    return HALF_CIRCUMFERENCE_KM / min(speeds) if speeds else None


@dataclass(frozen=True)
class Sighting:
    country: str
    at: datetime  # the payment's own timestamp (event time), in UTC


def sighting(request: Mapping[str, Any]) -> tuple[str, Sighting] | None:
    """(card, sighting) of a fraud request body as logged (``timestamp`` an ISO string or a datetime);
    None when it names no country. One definition for the serving process and the log writer."""
    country, card, ts = request.get("country"), request.get("card_token"), request.get("timestamp")
    if not (country and card and ts):
        return None
    return card, Sighting(country, _utc(ts))


def latest_per_card(requests: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """The newest sighting per card among ``requests`` as three columns (card, country, ISO time),
    for the writer's upsert (one row per card: an upsert may not touch a row twice). It runs on the
    writer thread, which holds the GIL the serving loop needs, so a time is parsed only when a card
    comes twice in one batch (Postgres parses the rest)."""
    latest: dict[str, tuple[str, Any]] = {}
    for req in requests:
        card, country, ts = req.get("card_token"), req.get("country"), req.get("timestamp")
        if not (card and country and ts):
            continue
        old = latest.get(card)
        if old is None or _utc(ts) >= _utc(old[1]):
            latest[card] = (country, ts)
    return (list(latest), [c for c, _ in latest.values()],
            [ts if isinstance(ts, str) else ts.isoformat() for _, ts in latest.values()])


def _utc(ts: str | datetime) -> datetime:
    return (ts if isinstance(ts, datetime) else datetime.fromisoformat(ts)).astimezone(UTC)


def travel_signals(previous: Sighting | None, country: str | None, at: datetime) -> dict[str, Any]:
    """The signals the impossible-travel rule reads: empty without a previous sighting or a country.
    Speed is null when both payments have the same time (the rule compares distance with
    ``max_speed_kmh × elapsed_h``, which needs no division)."""
    if previous is None or not country:
        return {}
    dist = distance_km(previous.country, country)
    hours = abs((at - previous.at).total_seconds()) / 3600.0
    if dist is None:
        log.debug("no centroid for %s or %s: impossible travel not checked", previous.country, country)
    return {"previous_country": previous.country, "previous_at": previous.at.isoformat(),
            "distance_km": None if dist is None else round(dist, 1), "elapsed_h": round(hours, 6),
            "speed_kmh": None if dist is None or hours == 0 else round(dist / hours, 1)}


class CardLocations:
    """A thread-safe, bounded map card_token → its newest :class:`Sighting`."""

    def __init__(self, horizon_h: float, max_cards: int = 1_000_000) -> None:
        self.horizon_h = horizon_h  # older sightings can never make a rule fire: not warmed
        self._last: dict[str, Sighting] = {}
        self._lock = threading.Lock()
        self._max = max_cards
        self._seen_until: datetime | None = None  # newest updated_at read (server clock)

    def warm(self, conn: psycopg.Connection) -> int:
        """Load the sightings of the last ``horizon_h``; later ones come from :meth:`refresh`."""
        self._seen_until = conn.execute("select clock_timestamp()").fetchone()[0]
        rows = conn.execute(WARM_SQL, (self.horizon_h * 3600.0, self._max)).fetchall()
        self._merge((card, Sighting(country, at.astimezone(UTC))) for card, country, at in rows)
        log.info("card locations warmed from %s: %d cards", CARD_LOCATIONS_TABLE, len(rows))
        return len(rows)

    def refresh(self, conn: psycopg.Connection) -> int:
        """Add the sightings any process logged since the last refresh; returns the rows read."""
        if self._seen_until is None:
            self._seen_until = conn.execute("select clock_timestamp()").fetchone()[0] - REFRESH_OVERLAP
        rows = conn.execute(REFRESH_SQL, (self._seen_until - REFRESH_OVERLAP,)).fetchall()
        if rows:
            self._merge((card, Sighting(country, at.astimezone(UTC))) for card, country, at, _ in rows)
            self._seen_until = max(self._seen_until, max(r[3] for r in rows))
        return len(rows)

    def _merge(self, sightings: Iterable[tuple[str, Sighting]]) -> None:
        with self._lock:
            if len(self._last) >= self._max:
                self._last.clear()  # crude but bounded: forgetting only makes the rule miss
            for card, s in sightings:
                old = self._last.get(card)
                if old is None or s.at >= old.at:
                    self._last[card] = s

    def signals(self, card: str, country: str | None, at: datetime) -> dict[str, Any]:
        """The travel signals of a payment of ``card`` in ``country`` at ``at`` (see :func:`travel_signals`)."""
        return travel_signals(self._last.get(card), country, at) if country else {}

    def observe(self, request: Mapping[str, Any]) -> None:
        """This process logged a payment: its sighting counts here at once (others: next refresh)."""
        s = sighting(request)
        if s is not None:
            self._merge((s,))
