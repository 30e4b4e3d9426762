"""Erased customers and their cards never come back to the online feature store.

Erasure (``riskloop.governance.erasure``) deletes a customer's and their cards' online rows, but the
warehouse keeps their payments until retention: the marts would give their features back to the next
materialisation, and a later payment of theirs would give the stream consumer windows to push. Both
writers therefore skip every key listed in ``privacy.erased_entities``: the erasure records each
entity there by kind and keyed hash (:meth:`riskloop.core.subject_keys.SubjectKeys.entity_hash`),
never the id in clear, so a writer hashes the keys it is about to write and drops the listed ones.

- :func:`materialize_filter` is what :func:`riskloop.features.store.materialize` hands the offline
  store (``riskloop.features.feast_offline.materialization_filter``): every batch Feast reads for the
  online store loses the rows of erased keys before it is written.
- The stream consumer asks :func:`erased_sql` in the pipeline of its window queries (no extra round
  trip) and drops the rows of the keys it returns.

Skipping needs the subject master key (to hash); without one the writers can skip nothing, so they
refuse to write once anything is erased (:class:`~riskloop.core.subject_keys.SubjectKeyMissing`) and
write as before while nothing is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import psycopg

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from riskloop.core.subject_keys import ERASED_ENTITIES_TABLE, SubjectKeyMissing, SubjectKeys, subject_keys

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# The online store's join keys that name a person's entity, and their kind in the erased list.
KINDS: Mapping[str, str] = {"customer_id": "customer", "card_token": "card"}


def ring_or_none(settings: Settings) -> SubjectKeys | None:
    """The key ring, or None when no master key is configured (then nothing can be hashed)."""
    try:
        return subject_keys(settings)
    except SubjectKeyMissing:
        return None


def _refuse(exc: SubjectKeyMissing | None = None) -> SubjectKeyMissing:
    return SubjectKeyMissing("customers were erased, and without RISKLOOP_SUBJECT_MASTER_KEY the online store's "
                             f"writers cannot tell their keys apart: nothing is written{f' ({exc})' if exc else ''}")


class ErasedKeys:
    """The erased entities' hashes (read once), and which of some keys are among them."""

    def __init__(self, ring: SubjectKeys | None, hashes: dict[str, set[bytes]]) -> None:
        self._ring, self._hashes = ring, hashes

    @classmethod
    def load(cls, settings: Settings) -> "ErasedKeys":
        with psycopg.connect(dsn(settings)) as conn:
            # a warehouse without the table (not migrated) has had no erasure recorded either
            listed = conn.execute("select to_regclass(%s) is not null", (ERASED_ENTITIES_TABLE,)).fetchone()[0]
            rows = conn.execute(f"select kind, entity_hash from {ERASED_ENTITIES_TABLE}").fetchall() if listed else []
        hashes: dict[str, set[bytes]] = {}
        for kind, digest in rows:
            hashes.setdefault(kind, set()).add(bytes(digest))
        ring = ring_or_none(settings)
        if hashes and ring is None:
            raise _refuse()
        return cls(ring, hashes)

    def __bool__(self) -> bool:
        return bool(self._hashes)

    def carry(self, conn: psycopg.Connection, join_key: str, renamed: Mapping[str, str]) -> int:
        """Keys given new values (a card-token rotation re-keys every token, ``riskloop.ops.pan_rotation``):
        each listed old key's new value is listed too, under the same erasure, in ``conn``'s transaction,
        so the writers skip it under either name. Returns the keys carried."""
        gone = self.erased(join_key, renamed)
        if not gone or self._ring is None:
            return 0
        kind = KINDS[join_key]
        olds = [self._ring.entity_hash(kind, k) for k in gone]
        news = [self._ring.entity_hash(kind, renamed[k]) for k in gone]
        conn.execute(f"insert into {ERASED_ENTITIES_TABLE} (kind, entity_hash, erasure_id) "
                     f"select e.kind, n.new, e.erasure_id from unnest(%s::bytea[], %s::bytea[]) as n(old, new) "
                     f"join {ERASED_ENTITIES_TABLE} e on e.kind = %s and e.entity_hash = n.old on conflict do nothing",
                     (olds, news, kind))
        self._hashes.setdefault(kind, set()).update(news)
        log.info("%d erased %s keys listed under their new values too", len(gone), join_key)
        return len(gone)

    def erased(self, join_key: str, values: Iterable[str]) -> set[str]:
        """The erased ones among ``values`` of ``join_key`` (none for a join key that names no person)."""
        kind = KINDS.get(join_key)
        listed = self._hashes.get(kind or "")
        if not listed or self._ring is None:
            return set()
        return {v for v in values if v is not None and self._ring.entity_hash(kind, str(v)) in listed}


def materialize_filter(erased: ErasedKeys) -> Callable[["pa.Table", list[str]], "pa.Table"] | None:
    """A filter of the rows Feast reads for the online store: those of erased keys go. None when
    nothing is erased (nothing to check)."""
    if not erased:
        return None

    def keep(table: "pa.Table", join_keys: list[str]) -> "pa.Table":
        import pyarrow as pa
        import pyarrow.compute as pc

        for key in join_keys:
            if key not in KINDS or key not in table.column_names or table.num_rows == 0:
                continue
            gone = erased.erased(key, pc.unique(table.column(key)).to_pylist())
            if gone:
                before = table.num_rows
                table = table.filter(pc.invert(pc.is_in(table.column(key), value_set=pa.array(sorted(gone)))))
                log.info("materialize: %d rows of %d erased %s keys not written online", before - table.num_rows,
                         len(gone), key)
        return table

    return keep


def erased_sql(ring: SubjectKeys | None, keys: Mapping[str, Iterable[str]]) -> tuple[str, tuple]:
    """A query (and its parameters) for the stream consumer's pipeline over ``{join key: keys}``: with
    a ring, the rows ``(kind, entity_hash)`` of the erased ones; without one, a row if anything at all
    is erased (then nothing may be written: :func:`check_erased` raises)."""
    if ring is None:
        return f"select null::text, null::bytea from {ERASED_ENTITIES_TABLE} limit 1", ()
    kinds, hashes = [], []
    for join_key, values in keys.items():
        kind = KINDS.get(join_key)
        if kind is None:
            continue
        for v in values:
            kinds.append(kind)
            hashes.append(ring.entity_hash(kind, v))
    return (f"select e.kind, e.entity_hash from {ERASED_ENTITIES_TABLE} e join unnest(%s::text[], %s::bytea[]) "
            "as k(kind, entity_hash) using (kind, entity_hash)", (kinds, hashes))


def check_erased(ring: SubjectKeys | None, keys: Mapping[str, Iterable[str]],
                 rows: list[tuple]) -> dict[str, set[str]]:
    """The erased keys per join key, from :func:`erased_sql`'s rows."""
    if ring is None:
        if rows:
            raise _refuse()
        return {}
    listed = {(kind, bytes(digest)) for kind, digest in rows}
    if not listed:
        return {}
    out: dict[str, set[str]] = {}
    for join_key, values in keys.items():
        kind = KINDS.get(join_key)
        if kind is not None:
            out[join_key] = {v for v in values if (kind, ring.entity_hash(kind, v)) in listed}
    return out
