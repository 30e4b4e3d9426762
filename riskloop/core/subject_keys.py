"""Per-customer data keys: the personal fields of append-only rows are stored encrypted, and erasing
a customer destroys the key (crypto-shredding), so the rows stay whole for audit while what they hold
of the person can no longer be read.

- Each customer has one random 256-bit **data key**, created on first use, kept in
  ``privacy.subject_keys`` wrapped (AES-GCM) by a **master key** that never lives in the warehouse
  (``RISKLOOP_SUBJECT_MASTER_KEY``; in local mode generated once into
  ``<home>/secrets/subject_master_key``, like the card-token key). The row is found by
  ``subject_hash``, an HMAC of the customer id under the master key, never the id in clear.
- A request is **sealed** by moving its :data:`PERSONAL_FIELDS` into one AES-GCM ciphertext under the
  customer's data key (:data:`ENVELOPE`: the key's id, the sealed field names, nonce + ciphertext).
  The customer id is sealed too: the clear reference left in the row is the data key's random id, a
  pseudonym that groups a customer's rows and joins to the customer (through ``subject_hash``) only
  while the key exists. After erasure neither the key store nor the erasure record links it to the
  person (the record keeps the subject's keyed hash, never the key id); the clear transaction id and
  card token still join to the warehouse's own payment rows until those leave by retention.
- What stays in clear is what the audit, the label joins and the monitoring need and what does not
  identify the person: the transaction and application ids, amounts, currency, times, terminal,
  country, the card's tokens (``card_token``, ``pan_token``), BIN and last four, and the model's
  inputs (``features``) as scored.
- :meth:`SubjectKeys.reveal` gives readers the clear request back; when the key is gone each sealed
  field reads :data:`ERASED` and ``personal_data`` says ``"erased"``: readers show it, never fail.

A process keeps unwrapped keys in memory for ``RISKLOOP_SUBJECT_KEY_CACHE_S`` (one AES-GCM per sealed
decision, no round trip for a customer seen in that time).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from riskloop.core.config import Settings

log = logging.getLogger(__name__)

KEY_FILE = "subject_master_key"
MIN_KEY_CHARS = 32
KEYS_TABLE = "privacy.subject_keys"
ERASURES_TABLE = "privacy.erasures"
# Every customer and card erased, by kind and keyed hash: what may never be written online again.
ERASED_ENTITIES_TABLE = "privacy.erased_entities"
ENTITY_KINDS = ("customer", "card")
# The request fields that are the person's (of a fraud payment or a credit application), sealed.
PERSONAL_FIELDS = ("customer_id", "device_id", "ip", "applicant")
ENVELOPE = "personal"
ERASED = "[erased]"
NONCE_BYTES = 12


class SubjectKeyMissing(RuntimeError):
    """No master key is configured (required outside local mode)."""


def _derive(master: bytes, purpose: bytes) -> bytes:
    return hmac.new(master, b"riskloop.subject_keys." + purpose, hashlib.sha256).digest()


class SubjectKeys:
    """The data keys of customers, unwrapped on demand and cached for ``cache_s`` seconds."""

    def __init__(self, master: bytes, cache_s: float = 300.0) -> None:
        self._wrap = AESGCM(_derive(master, b"wrap"))
        self._hash_key = _derive(master, b"subject-hash")
        self._cache_s = cache_s
        self._by_subject: dict[str, tuple[float, str, AESGCM]] = {}  # customer id -> (loaded, key id, key)
        self._by_key: dict[str, tuple[float, AESGCM | None]] = {}  # key id -> (loaded, key or None: erased)
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> "SubjectKeys":
        return self  # one ring (and cache) per process: a copy of settings-like objects shares it

    # --- keys ----------------------------------------------------------------------------
    def subject_hash(self, customer_id: str) -> bytes:
        """The keyed hash a customer is found by (in the key table and the erasure record)."""
        return self.entity_hash("customer", customer_id)

    def entity_hash(self, kind: str, value: str) -> bytes:
        """The keyed hash of a customer's or a card's id (``kind`` customer | card): how the key table,
        the erasure record and the erased entities name them without the id in clear."""
        return hmac.new(self._hash_key, kind.encode() + b"\0" + value.encode("utf-8"), hashlib.sha256).digest()

    def _unwrap(self, key_id: str, wrapped: bytes) -> AESGCM:
        return AESGCM(self._wrap.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], key_id.encode()))

    def _wrapped(self, key_id: str, data_key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._wrap.encrypt(nonce, data_key, key_id.encode())

    def keys_for(self, conn: psycopg.Connection, customer_ids: Iterable[str]) -> dict[str, tuple[str, AESGCM]]:
        """Each customer's (key id, data key): from the cache, else read, else created, in one
        transaction of its own on ``conn`` (committed before any row is sealed under a new key, so a
        sealed row never names a key that was rolled back).

        A key is generated and wrapped only for a customer the table has no key for: the usual miss
        (a customer seen before, by this process or another) is one read and no write. Two processes
        creating the same customer's key race on ``on conflict do nothing``; the loser reads the
        winner's key in the same transaction."""
        now = time.monotonic()
        out: dict[str, tuple[str, AESGCM]] = {}
        missing: list[str] = []
        with self._lock:
            for cid in set(customer_ids):
                hit = self._by_subject.get(cid)
                if hit is not None and now - hit[0] < self._cache_s:
                    out[cid] = (hit[1], hit[2])
                else:
                    missing.append(cid)
        if not missing:
            return out
        hashes = {self.subject_hash(c): c for c in missing}
        # Inside a caller's transaction a new key commits (or not) with the caller's rows: it is
        # used, but cached only once it is known to be committed (a later read finds it).
        nested = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        select = f"select key_id::text, subject_hash, wrapped_key from {KEYS_TABLE} where subject_hash = any(%s::bytea[])"
        created: set[str] = set()
        with conn.transaction(), conn.cursor() as cur:
            rows = cur.execute(select, (list(hashes),)).fetchall()
            absent = set(hashes) - {bytes(r[1]) for r in rows}
            if absent:
                new_keys = {h: str(uuid.uuid4()) for h in absent}
                wrapped = [self._wrapped(k, AESGCM.generate_key(256)) for k in new_keys.values()]
                inserted = cur.execute(
                    f"insert into {KEYS_TABLE} (key_id, subject_hash, wrapped_key) "
                    "select * from unnest(%s::uuid[], %s::bytea[], %s::bytea[]) on conflict (subject_hash) do nothing "
                    "returning key_id::text, subject_hash, wrapped_key",
                    (list(new_keys.values()), list(new_keys), wrapped)).fetchall()
                rows += inserted
                created = {r[0] for r in inserted}
                raced = absent - {bytes(r[1]) for r in inserted}  # another process created them meanwhile
                if raced:
                    rows += cur.execute(select, (list(raced),)).fetchall()
        with self._lock:
            for key_id, digest, wrapped_key in rows:
                cid = hashes[bytes(digest)]
                aead = self._unwrap(key_id, bytes(wrapped_key))
                out[cid] = (key_id, aead)
                if not (nested and key_id in created):
                    self._by_subject[cid] = (now, key_id, aead)
                    self._by_key[key_id] = (now, aead)
        return out

    def _keys_by_id(self, conn: psycopg.Connection, key_ids: set[str]) -> dict[str, AESGCM | None]:
        now = time.monotonic()
        out: dict[str, AESGCM | None] = {}
        with self._lock:
            for k in key_ids:
                hit = self._by_key.get(k)
                if hit is not None and now - hit[0] < self._cache_s:
                    out[k] = hit[1]
        todo = [k for k in key_ids if k not in out]
        if todo:
            rows = conn.execute(f"select key_id::text, wrapped_key from {KEYS_TABLE} where key_id = any(%s::uuid[])",
                                (todo,)).fetchall()
            found = {k: self._unwrap(k, bytes(w)) for k, w in rows}
            with self._lock:
                for k in todo:
                    out[k] = found.get(k)
                    self._by_key[k] = (now, out[k])
        return out

    def forget(self, customer_id: str) -> None:
        """Drop a customer's key from this process's cache (the eraser's own process)."""
        with self._lock:
            hit = self._by_subject.pop(customer_id, None)
            if hit is not None:
                self._by_key.pop(hit[1], None)

    # --- sealing ------------------------------------------------------------------------
    @staticmethod
    def seal(request: dict[str, Any], key_id: str, aead: AESGCM,
             fields: Sequence[str] = PERSONAL_FIELDS) -> dict[str, Any]:
        """``request`` with its personal ``fields`` moved into one ciphertext under the customer's key."""
        personal = {f: request[f] for f in fields if request.get(f) is not None}
        out = {k: v for k, v in request.items() if k not in fields}
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + aead.encrypt(nonce, orjson.dumps(personal), key_id.encode())
        out[ENVELOPE] = {"key": key_id, "fields": sorted(personal), "sealed": base64.b64encode(sealed).decode()}
        return out

    def seal_batch(self, conn: psycopg.Connection, requests: Sequence[dict[str, Any] | None]) -> list[dict[str, Any] | None]:
        """Each request sealed under its customer's key (one key lookup for the batch's new customers);
        a request without a customer id has nobody to erase and is returned as it is."""
        keys = self.keys_for(conn, [r["customer_id"] for r in requests if r and r.get("customer_id")])
        return [self.seal(r, *keys[r["customer_id"]]) if r and r.get("customer_id") else r for r in requests]

    def reveal(self, conn: psycopg.Connection, requests: Sequence[Any]) -> list[Any]:
        """The clear requests of sealed ones (others as they are); a request whose key was destroyed
        has :data:`ERASED` in each sealed field and ``personal_data = "erased"``."""
        key_ids = {r[ENVELOPE]["key"] for r in requests if _sealed(r)}
        keys = self._keys_by_id(conn, key_ids) if key_ids else {}
        return [_open(r, keys) if _sealed(r) else r for r in requests]


def _sealed(request: Any) -> bool:
    return isinstance(request, dict) and isinstance(request.get(ENVELOPE), dict) and "key" in request[ENVELOPE]


def _open(request: dict[str, Any], keys: dict[str, AESGCM | None]) -> dict[str, Any]:
    env = request[ENVELOPE]
    out = {k: v for k, v in request.items() if k != ENVELOPE}
    aead = keys.get(env["key"])
    if aead is None:
        out.update(dict.fromkeys(env.get("fields", ()), ERASED), personal_data="erased")
        return out
    blob = base64.b64decode(env["sealed"])
    out.update(orjson.loads(aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], env["key"].encode())))
    return out


def master_key(settings: Settings) -> bytes:
    """``RISKLOOP_SUBJECT_MASTER_KEY``, else (local mode only) the key generated once under
    ``<home>/secrets``; raises :class:`SubjectKeyMissing` otherwise."""
    if settings.subject_master_key is not None:
        value = settings.subject_master_key.get_secret_value()
        if len(value) < MIN_KEY_CHARS:
            raise SubjectKeyMissing(f"RISKLOOP_SUBJECT_MASTER_KEY must have at least {MIN_KEY_CHARS} characters")
        return value.encode()
    if not settings.embedded:
        raise SubjectKeyMissing("RISKLOOP_SUBJECT_MASTER_KEY must be set when riskloop runs on a configured Postgres "
                                "(RISKLOOP_DATABASE_URL); a local key is generated only in local mode")
    from riskloop.core.secretfiles import read_or_create

    return read_or_create(settings.secrets_dir / KEY_FILE).encode()


_rings: dict[tuple[bytes, float], SubjectKeys] = {}
_rings_lock = threading.Lock()


def subject_keys(settings: Settings) -> SubjectKeys:
    """The process's key ring for these settings (one cache per master key)."""
    master = master_key(settings)
    key = (hashlib.sha256(master).digest(), settings.subject_key_cache_s)
    with _rings_lock:
        ring = _rings.get(key)
        if ring is None:
            ring = _rings[key] = SubjectKeys(master, settings.subject_key_cache_s)
        return ring


def reveal(conn: psycopg.Connection, requests: Sequence[Any], settings: Settings | None = None) -> list[Any]:
    """Readers' entry point: the clear requests (:meth:`SubjectKeys.reveal`) with the configured key
    ring. Without a master key, sealed requests stay sealed (the reader shows the envelope)."""
    if not any(_sealed(r) for r in requests):
        return list(requests)
    if settings is None:
        from riskloop.core.config import get_settings

        settings = get_settings()
    try:
        ring = subject_keys(settings)
    except SubjectKeyMissing as exc:
        log.error("cannot reveal sealed personal fields: %s", exc)
        return list(requests)
    return ring.reveal(conn, requests)
