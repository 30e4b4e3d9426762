"""Erasure of a customer (``riskloop erase customer ID --reason …``) by crypto-shredding.

The append-only rows (decisions, case events) keep the customer's personal fields only sealed under
the customer's data key (:mod:`riskloop.core.subject_keys`). Erasure, in one transaction:

1. deletes the customer's data key, so every sealed field of theirs reads ``[erased]`` from then on,
   while the rows themselves (decision, score, policy, model, inputs, hashes) stay whole for audit;
2. deletes or clears the mutable copies of the person's data: their allowed devices
   (``serving.known_devices``), the last sightings of the cards they paid with
   (``serving.card_locations``), their payments in the stream consumer's state
   (``realtime.payment_events``), their open-case index entry and the customer id on their cases;
3. appends a ``privacy.erasures`` row: who (the authenticated principal), why, when, the customer by
   its keyed hash only (never the key's id, so nothing links the subject to the sealed rows
   afterwards), and what was removed; and lists the customer and their cards (those of their
   decisions and of the stream's payment events) by keyed hash in ``privacy.erased_entities``,
   which the online store's writers (materialisation, the stream consumer) skip from then on.

Then, outside that transaction, the customer's (and their cards') rows in the Feast online store.

Not covered (README, "What riskloop promises"): the warehouse's landed and modelled data (``raw``,
``marts``, the Feast offline store), which go by retention (their features stay out of the online
store, not out of training sets built before then); decisions and case events logged before sealing
existed (the decisions counted in ``removed.unsealed_decisions``); MLflow artifacts.

Erasing a customer twice is a no-op that says so.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.core.subject_keys import ENVELOPE, ERASED_ENTITIES_TABLE, ERASURES_TABLE, KEYS_TABLE, subject_keys
from riskloop.decisions.cases import CASES, OPEN_ENTITIES, entities_of
from riskloop.decisions.log import CARD_LOCATIONS_TABLE, DEVICES_TABLE
from riskloop.decisions.log import TABLE as DECISION_LOG

if TYPE_CHECKING:
    from riskloop.core.identity import Principal

log = logging.getLogger(__name__)

PAYMENT_EVENTS = "realtime.payment_events"


class ErasureError(ValueError):
    """The erasure cannot be done as asked (nothing was changed)."""


@dataclass
class Erasure:
    erasure_id: str | None  # None: already erased before, nothing done
    customer: str
    already_erased: bool
    key_destroyed: bool
    erased_at: datetime | None
    actor: str
    removed: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"erasure_id": self.erasure_id, "customer": self.customer, "already_erased": self.already_erased,
                "key_destroyed": self.key_destroyed, "actor": self.actor,
                "erased_at": self.erased_at.isoformat() if self.erased_at else None, "removed": self.removed}


def _exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (table,)).fetchone()[0]


def _cards(conn: psycopg.Connection, key_id: str | None, customer_id: str) -> list[str]:
    """The cards the customer paid with, from their decisions (sealed under ``key_id``, or from
    before sealing, with the customer id in clear): each as logged and under its current token (a
    card-token rotation maps the log's old tokens, ``serving.pan_token_current``). A scan of the log:
    erasure is rare."""
    rows = conn.execute(
        f"select distinct t.token from {DECISION_LOG} d, "
        "lateral (values (d.request->>'card_token'), (serving.pan_token_current(d.request->>'card_token'))) as t(token) "
        f"where (d.request->{ENVELOPE!r}->>'key' = %s or d.request->>'customer_id' = %s) and d.request ? 'card_token'",
        (key_id or "", customer_id)).fetchall()
    return sorted(r[0] for r in rows if r[0])


def erase_customer(settings: Settings, customer_id: str, reason: str, principal: "Principal") -> Erasure:
    """Crypto-shred ``customer_id`` (see the module docstring); idempotent."""
    customer_id, reason = customer_id.strip(), reason.strip()
    if not customer_id:
        raise ErasureError("a customer id is required")
    if not reason:
        raise ErasureError("a reason is required (it is the audit trail)")
    ring = subject_keys(settings)
    digest = ring.subject_hash(customer_id)
    removed: dict[str, Any] = {}
    with db.connect(settings) as conn:
        # One erasure of a subject at a time; a decision sealing concurrently either committed its
        # key before (and its rows are shredded with it) or creates a new key after (a new relationship).
        conn.execute("select pg_advisory_xact_lock(hashtext('riskloop.erasure'), hashtext(%s))", (digest.hex(),))
        row = conn.execute(f"select key_id::text from {KEYS_TABLE} where subject_hash = %s",
                           (digest,)).fetchone()
        key_id = row[0] if row else None
        before = conn.execute(f"select erased_at from {ERASURES_TABLE} where subject_kind = 'customer' "
                              "and subject_hash = %s order by erased_at desc limit 1", (digest,)).fetchone()
        cards = _cards(conn, key_id, customer_id)
        if _exists(conn, PAYMENT_EVENTS):  # and the cards the stream saw them pay with
            cards = sorted(set(cards) | {r[0] for r in conn.execute(
                f"select distinct card_token from {PAYMENT_EVENTS} where customer_id = %s and card_token is not null",
                (customer_id,)).fetchall()})
        devices = conn.execute(f"select count(*) from {DEVICES_TABLE} where customer_id = %s",
                               (customer_id,)).fetchone()[0]
        if key_id is None and before is not None and devices == 0:
            log.info("customer already erased at %s: nothing to do", before[0].isoformat())
            return Erasure(None, customer_id, True, False, before[0], principal.actor)
        if key_id is not None:
            conn.execute(f"delete from {KEYS_TABLE} where key_id = %s", (key_id,))
            removed["sealed_decisions"] = conn.execute(
                f"select count(*) from {DECISION_LOG} where request->{ENVELOPE!r}->>'key' = %s", (key_id,)).fetchone()[0]
        removed["unsealed_decisions"] = conn.execute(
            f"select count(*) from {DECISION_LOG} where request->>'customer_id' = %s", (customer_id,)).fetchone()[0]
        removed["known_devices"] = conn.execute(f"delete from {DEVICES_TABLE} where customer_id = %s",
                                                (customer_id,)).rowcount
        removed["card_locations"] = conn.execute(f"delete from {CARD_LOCATIONS_TABLE} where card_token = any(%s)",
                                                 (cards,)).rowcount if cards else 0
        if _exists(conn, PAYMENT_EVENTS):
            removed["payment_events"] = conn.execute(f"delete from {PAYMENT_EVENTS} where customer_id = %s",
                                                     (customer_id,)).rowcount
        removed["open_entities"] = conn.execute(f"delete from {OPEN_ENTITIES} where entity = any(%s)",
                                                (entities_of(customer_id, None),)).rowcount
        removed["cases_unlinked"] = conn.execute(f"update {CASES} set customer_id = null where customer_id = %s",
                                                 (customer_id,)).rowcount
        erasure_id = str(uuid.uuid4())
        erased_at = conn.execute(
            f"insert into {ERASURES_TABLE} (erasure_id, subject_kind, subject_hash, actor, reason, key_destroyed, removed) "
            "values (%s, 'customer', %s, %s, %s, %s, %s) returning erased_at",
            (erasure_id, digest, principal.actor, reason, key_id is not None, Jsonb(removed))).fetchone()[0]
        # what the online store's writers skip from now on (riskloop.features.suppression)
        entities = [("customer", digest), *(("card", ring.entity_hash("card", c)) for c in cards)]
        conn.execute(f"insert into {ERASED_ENTITIES_TABLE} (kind, entity_hash, erasure_id) "
                     "select k, h, %s from unnest(%s::text[], %s::bytea[]) as e(k, h) on conflict do nothing",
                     (erasure_id, [k for k, _ in entities], [h for _, h in entities]))
    ring.forget(customer_id)
    removed["online_rows"] = _erase_online(settings, customer_id, cards)
    log.info("erased customer (erasure %s by %s): key destroyed %s, removed %s", erasure_id, principal.actor,
             key_id is not None, removed)
    return Erasure(erasure_id, customer_id, False, key_id is not None, erased_at, principal.actor, removed)


def _erase_online(settings: Settings, customer_id: str, cards: list[str]) -> dict[str, int] | str:
    """The customer's and their cards' rows in the online store; what failed is reported, not raised
    (the key is already destroyed, and the entities are listed as erased, so no writer adds rows; what a
    failure here leaves stays online until deleted by hand)."""
    try:
        from riskloop.features.online_write import delete_entities
        from riskloop.features.store import feature_store

        return delete_entities(feature_store(settings), {"customer_id": [customer_id], "card_token": cards})
    except Exception as exc:  # noqa: BLE001 - reported in the result and the log
        log.error("erasure: the online store's rows of the customer were not deleted: %s", exc)
        return f"not deleted: {type(exc).__name__}: {exc}"
