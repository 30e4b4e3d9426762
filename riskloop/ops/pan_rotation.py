"""Card-token key rotation (``riskloop pan rotate``): a new key for new tokens, stored tokens re-keyed.

A rotation adds a key to the ring (:func:`riskloop.core.pan.add_ring_key`) and makes it current; every
process that tokenises re-reads the ring within :data:`~riskloop.core.pan.RING_RELOAD_SECONDS`, so new
tokens use the new key without a restart. Then the stored tokens are re-keyed in batches, where they
are: riskloop keeps no PAN, so a token is re-keyed from itself (:meth:`PanTokenizer.rekey`), and a PAN
seen after the rotation tokenises to exactly the re-keyed value (see :mod:`riskloop.core.pan`).

Two kinds of places hold tokens, and they are treated differently on purpose:

- **Mutable tables** (the landed events, the webhook inbox bodies, the stream's payment events, card
  locations, the case projection and its open-entity keys, the dbt intermediate and mart tables, the
  quarantine copies: every base table with a ``card_token``/``pan_token`` column, found in the catalogue,
  plus the text columns of :data:`TEXT_TARGETS`) are **rewritten in place**, so the place features and
  labels join (payment fact, card windows, cases) needs no translation at all.
- **Append-only tables** (the decision log's request, case events, dead letters) are evidence: their
  triggers refuse UPDATE and a rotation must not weaken them. Their old tokens are instead **mapped**:
  ``serving.pan_token_map`` (old token → the card's current token), written in the same batches, and
  ``serving.pan_token_current(token)`` as the join key. A map was chosen over "compute both tokens while
  both keys exist" because that only covers cards seen again during the overlap, while the map covers
  every logged row at once and survives further rotations (its targets are themselves re-keyed).

Batches are short transactions over a range of the table's pages (a TID range scan, so the cost of a
batch does not grow with what was already done), each row locked while it is rewritten. Re-keying is
idempotent (a token of the current key is left alone), so a crash loses nothing: the next
``riskloop pan rotate`` finds the unfinished rotation in ``governance.pan_rotations`` and resumes it
without making another key.

Erased cards (``privacy.erased_entities``, by keyed hash of the token: ``riskloop.features.suppression``)
are listed under their new token in the batch that re-keys or maps the old one, so the online store's
writers keep skipping them, and the rotation pushes no windows for them.

Card deny lists and ``deny_card`` emergency stops (the policy store, append-only as well) are carried
through the policy store's own functions (:func:`carry_card_rules`): the new token is added beside the
old one as soon as the new key is current, so a blocked card stays blocked whichever key a process
tokenised it with, and the old entry is removed when the re-key ends. Card tokens written literally
into a policy version's YAML are not: a version's body never changes; draft a new one.

Without downtime: tokens written meanwhile by a process still on the old key (a serving request
tokenised just before the ring changed, a stream consumer catching up) are caught by the last pass,
which runs only after a grace period longer than the ring reload interval and repeats until a full
pass changes nothing. A unique-key clash (a card's location stored under both its old and its new
token) keeps the newer sighting; elsewhere (a card's second open case, opened during the rotation)
the clashing row keeps its old token, with a warning, and the rotation goes on.

The old key cannot be deleted from the ring: the current key's token is made from the older key's
token, so every key stays an inner layer. What rotation retires is the old key's *use*: after it,
nothing stored is a token an attacker holding only the old key could test PAN guesses against.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from riskloop.core import db, pan
from riskloop.core.config import Settings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from riskloop.features.suppression import ErasedKeys

LOCK = "riskloop.pan_rotation"
CARD_KEY = "card_token"  # the online store's join key of a card, re-keyed here like every token
DEFAULT_BATCH = 1000
GRACE_SECONDS = 3 * pan.RING_RELOAD_SECONDS + 2.0
# Schemas whose base tables may carry a card_token / pan_token column.
TOKEN_SCHEMAS = ("raw", "realtime", "serving", "cases", "intermediate", "marts", "quarantine")
TOKEN_COLUMNS = ("card_token", "pan_token")
# Text columns holding tokens inside a larger value (a scrubbed body, an entity key, the map's target).
TEXT_TARGETS = (("raw", "webhook_inbox", "body"), ("cases", "open_entities", "entity"),
                ("serving", "pan_token_map", "current_token"))
# Append-only tables whose tokens are mapped, never rewritten: (schema, table, column).
MAPPED_TARGETS = (("serving", "decision_log", "request"), ("cases", "case_events", "details"),
                  ("serving", "decision_log_dead_letters", "row_json"))
# A unique token column whose clash keeps the row with the later value of this column.
MERGE_NEWER = {("serving", "card_locations", "card_token"): "seen_at"}


class RotationError(RuntimeError):
    """A rotation cannot start or continue (another one runs, the ring and the record disagree)."""


@dataclass(frozen=True)
class Target:
    schema: str
    table: str
    column: str
    mapped: bool = False  # append-only: tokens go to the map, the row is never changed

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"

    @property
    def ident(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.table))


@dataclass
class Rotation:
    rotation_id: str
    old_kid: str
    new_kid: str
    resumed: bool
    counts: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    card_windows_pushed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"rotation_id": self.rotation_id, "old_kid": self.old_kid, "new_kid": self.new_kid,
                "resumed": self.resumed, "passes": self.passes, "counts": self.counts,
                "card_windows_pushed": self.card_windows_pushed}


# A progress sink: (target name, pages done, pages total) after each range of pages.
Progress = Callable[[str, int, int], None]


def targets(conn: psycopg.Connection) -> list[Target]:
    """Every place a token is stored: mutable columns (rewritten) and append-only ones (mapped)."""
    append_only = {(s, t) for s, t in conn.execute(
        "select n.nspname, c.relname from pg_trigger g join pg_class c on c.oid = g.tgrelid "
        "join pg_namespace n on n.oid = c.relnamespace where g.tgname like '%\\_append\\_only' and not g.tgisinternal")}
    found = conn.execute(
        "select c.table_schema, c.table_name, c.column_name from information_schema.columns c "
        "join information_schema.tables t using (table_schema, table_name) "
        "where t.table_type = 'BASE TABLE' and c.table_schema = any(%s) and c.column_name = any(%s) "
        "order by 1, 2, 3", (list(TOKEN_SCHEMAS), list(TOKEN_COLUMNS))).fetchall()
    out = [Target(s, t, c) for s, t, c in found if (s, t) not in append_only]
    for s, t, c in TEXT_TARGETS:
        if conn.execute("select to_regclass(%s)", (f"{s}.{t}",)).fetchone()[0] is not None:
            out.append(Target(s, t, c))
    for s, t, c in MAPPED_TARGETS:
        if conn.execute("select to_regclass(%s)", (f"{s}.{t}",)).fetchone()[0] is not None:
            out.append(Target(s, t, c, mapped=True))
    return out


def _pages(conn: psycopg.Connection, target: Target) -> tuple[int, int]:
    """(pages of the table now, rows per page as the planner last counted them; 50 if never counted)."""
    pages, tuples = conn.execute(
        "select pg_relation_size(c.oid) / current_setting('block_size')::int, greatest(c.reltuples, 0) "
        "from pg_class c where c.oid = %s::regclass", (f"{target.schema}.{target.table}",)).fetchone()
    density = tuples / pages if pages and tuples else 50.0
    return int(pages), max(1, int(density))


def _ranges(pages: int, per_batch_pages: int) -> Iterator[tuple[int, int]]:
    for start in range(0, pages, per_batch_pages):
        yield start, start + per_batch_pages


def _stale(target: Target, current_kid: str) -> sql.Composed:
    """The rows that may hold a token of an older key (a filter in SQL; Python decides). A mapped
    target's rows are all read: whether a token is already in the map is the upsert's business."""
    text = sql.SQL("{}::text").format(sql.Identifier(target.column))
    if target.mapped:
        return sql.SQL("strpos({t}, 'pant_') > 0").format(t=text)
    if current_kid == pan.FIRST_KID:  # never rotated: no token is older
        return sql.SQL("false")
    return sql.SQL("{t} ~ {older}").format(t=text, older=sql.Literal(
        f"pant_(?!{current_kid}_)(k[1-9][0-9]*_)?[0-9a-f]{{64}}"))


def rekey_batch(conn: psycopg.Connection, target: Target, tok: pan.PanTokenizer, lo: int, hi: int, batch: int,
                after: str | None = None, rekeyed: list[str] | None = None,
                erased: "ErasedKeys | None" = None) -> tuple[int, str | None]:
    """Re-key (or map) the tokens of up to ``batch`` rows in pages [lo, hi) of one target, after row
    ``after``, in one short transaction. Returns (rows changed, the last row read when the batch was
    full, else None: the range is done). ``rekeyed`` collects the new values written. ``erased``: the
    erased cards (``riskloop.features.suppression``), listed under their new tokens in the same
    transaction, so the online store's writers keep skipping them."""
    where = sql.SQL("ctid >= {lo}::tid and ctid < {hi}::tid and ctid > {after}::tid and ").format(
        lo=sql.Literal(f"({lo},0)"), hi=sql.Literal(f"({hi},0)"), after=sql.Literal(after or "(0,0)")) \
        + _stale(target, tok.current_kid)
    col = sql.Identifier(target.column)
    with conn.transaction():
        rows = conn.execute(sql.SQL("select ctid::text, {c}::text from {t} where {w} order by ctid limit {n} {lock}").format(
            c=col, t=target.ident, w=where, n=sql.Literal(batch),
            lock=sql.SQL("" if target.mapped else "for update"))).fetchall()
        last = rows[-1][0] if len(rows) == batch else None
        if target.mapped:
            return _map_rows(conn, tok, [v for _, v in rows], erased), last
        changes = [(ctid, new) for ctid, old in rows for new, n in [tok.rekey_text(old)] if n]
        if not changes:
            return 0, last
        ctids, news = [c for c, _ in changes], [n for _, n in changes]
        if erased and target.column == CARD_KEY:
            olds = dict(rows)
            erased.carry(conn, CARD_KEY, {olds[c]: n for c, n in changes})
        if rekeyed is not None:
            rekeyed.extend(news)
        newer = MERGE_NEWER.get((target.schema, target.table, target.column))
        if newer is not None:
            return _merge_rows(conn, target, newer, ctids, news), last
        update = sql.SQL("update {t} set {c} = v.new from unnest(%s::tid[], %s::text[]) as v(ct, new) "
                         "where {t}.ctid = v.ct and {t}.ctid = any(%s::tid[])").format(t=target.ident, c=col)
        try:
            with conn.transaction():
                conn.execute(update, (ctids, news, ctids))
            return len(changes), last
        except psycopg.errors.UniqueViolation:
            pass
        # A unique key that exists under the new token already (say a second open case of the card,
        # opened during the rotation): that row keeps its old token, the others move.
        done = 0
        for ctid, value in changes:
            try:
                with conn.transaction():
                    conn.execute(update, ([ctid], [value], [ctid]))
                done += 1
            except psycopg.errors.UniqueViolation:
                log.warning("%s: row %s stays under its old token (its new token has a row already)", target.name, ctid)
        return done, last


def _merge_rows(conn: psycopg.Connection, target: Target, newer: str, ctids: list[str], news: list[str]) -> int:
    """A unique token column: move each row to its new token; where the new token already has a row
    (written by a process on the new key meanwhile), the later ``newer`` value wins."""
    t, c, n = target.ident, sql.Identifier(target.column), sql.Identifier(newer)
    cols = [r[0] for r in conn.execute(
        "select attname from pg_attribute where attrelid = %s::regclass and attnum > 0 and not attisdropped "
        "order by attnum", (f"{target.schema}.{target.table}",))]
    rest = [x for x in cols if x != target.column]
    # a reader that follows the table by updated_at (serving's travel cache) must see the moved row
    src = [sql.SQL("clock_timestamp()") if x == "updated_at" else sql.SQL("s.{}").format(sql.Identifier(x))
           for x in rest]
    conn.execute(sql.SQL(
        "insert into {t} as cur ({c}, {rest}) select v.new, {src} from {t} s join unnest(%s::tid[], %s::text[]) "
        "as v(ct, new) on s.ctid = v.ct where s.ctid = any(%s::tid[]) "
        "on conflict ({c}) do update set {upd} where excluded.{n} > cur.{n}").format(
        t=t, c=c, n=n, rest=sql.SQL(", ").join(map(sql.Identifier, rest)), src=sql.SQL(", ").join(src),
        upd=sql.SQL(", ").join(sql.SQL("{} = excluded.{}").format(sql.Identifier(x), sql.Identifier(x)) for x in rest)),
        (ctids, news, ctids))
    conn.execute(sql.SQL("delete from {t} where ctid = any(%s::tid[])").format(t=t), (ctids,))
    return len(ctids)


def _map_rows(conn: psycopg.Connection, tok: pan.PanTokenizer, values: list[str], erased: "ErasedKeys | None" = None) -> int:
    current = tok.current_kid
    pairs: dict[str, str] = {}
    for text in values:
        for m in pan.TOKEN_PATTERN.finditer(text):
            old = m.group(0)
            if (m.group(1) or pan.FIRST_KID) != current and old not in pairs:
                pairs[old] = tok.rekey(old)
    if not pairs:
        return 0
    if erased:
        erased.carry(conn, CARD_KEY, pairs)
    cur = conn.execute(
        "insert into serving.pan_token_map as m (token, current_token) select * from unnest(%s::text[], %s::text[]) "
        "on conflict (token) do update set current_token = excluded.current_token, mapped_at = clock_timestamp() "
        "where m.current_token <> excluded.current_token", (list(pairs), list(pairs.values())))
    return cur.rowcount


def rekey_pass(conn: psycopg.Connection, tok: pan.PanTokenizer, batch: int, progress: Progress | None = None,
               stop_after_batches: int | None = None, online: "CardWindows | None" = None,
               erased: "ErasedKeys | None" = None) -> dict[str, int]:
    """One pass over every target; rows changed (or tokens mapped) per target."""
    from riskloop.core import windows

    counts: dict[str, int] = {}
    batches = 0
    for target in targets(conn):
        pages, density = _pages(conn, target)
        per_batch = max(1, batch // density)
        feeds_windows = online is not None and f"{target.schema}.{target.table}" == windows.EVENTS_TABLE \
            and target.column == "card_token"
        for lo, hi in _ranges(pages + 1, per_batch):  # +1: a page filled since the size was read
            after: str | None = None
            while True:
                rekeyed: list[str] = []
                n, after = rekey_batch(conn, target, tok, lo, hi, batch, after, rekeyed, erased)
                counts[target.name] = counts.get(target.name, 0) + n
                if feeds_windows and rekeyed:
                    online.push(conn, sorted(set(rekeyed)))  # type: ignore[union-attr]
                batches += 1
                if stop_after_batches is not None and batches >= stop_after_batches:
                    raise _Interrupted(counts)
                if after is None:
                    break
            if progress is not None:
                progress(target.name, min(hi, pages), pages)
    return counts


class CardWindows:
    """The online store's card windows under the new tokens, pushed as the stream's payment events are
    re-keyed (the windows the stream computes, from the re-keyed rows): otherwise a card's first
    payment after the rotation would be scored with empty card windows. Without a Feast registry
    (nothing applied yet) it warns once and pushes nothing."""

    def __init__(self, settings: Settings, erased: "ErasedKeys | None" = None) -> None:
        self.settings = settings
        self.erased = erased  # erased cards get no windows online (riskloop.features.suppression)
        self.pushed = 0
        self._pusher: Any = None
        self._unavailable = False

    def push(self, conn: psycopg.Connection, tokens: list[str]) -> None:
        if self._unavailable:
            return
        from riskloop.core import windows

        card = windows.entity("card")
        if self.erased:
            gone = self.erased.erased(CARD_KEY, tokens)
            tokens = [t for t in tokens if t not in gone]
            if not tokens:
                return
        try:
            if self._pusher is None:
                from riskloop.features.store import feature_store
                from riskloop.features.stream import OnlinePush

                self._pusher = OnlinePush(feature_store(self.settings))
            cur = conn.execute(windows.stream_sql(card), {"keys": tokens})
            rows = cur.fetchall()
            self._pusher.push_rows({windows.push_source_name(card): ([c.name for c in cur.description or ()], rows)})
        except Exception as exc:  # noqa: BLE001 - the re-key goes on; the windows follow on each card's next payment
            log.warning("card windows not pushed to the online store (%s: %s); each card's windows follow "
                        "its next payment", type(exc).__name__, exc)
            self._unavailable = True
            return
        self.pushed += len(rows)

    def close(self) -> None:
        if self._pusher is not None:
            self._pusher.close()


class _Interrupted(Exception):
    """Raised by a test's ``stop_after_batches``: a crash in the middle of a re-key."""

    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__("re-key interrupted")
        self.counts = counts


def carry_card_rules(conn: psycopg.Connection, tok: pan.PanTokenizer, actor: str, rotation_id: str, *,
                     finish: bool) -> int:
    """Erased cards (``privacy.erased_entities``, by keyed hash of the token: ``riskloop.features.suppression``)
are listed under their new token in the batch that re-keys or maps the old one, so the online store's
writers keep skipping them, and the rotation pushes no windows for them.

Card deny lists and ``deny_card`` emergency stops under the new tokens, through the policy store
    (appended events: its tables are append-only too). At the start of a rotation the new token is
    added beside the old one, so a blocked card stays blocked whichever key tokenised it; at the end
    (``finish``) the old entries are removed and the old stops lifted. Returns the changes appended."""
    from riskloop.decisions import policy_store

    if conn.execute("select to_regclass('policy.lists')").fetchone()[0] is None:
        return 0
    current, why = tok.current_kid, f"card-token key rotation {rotation_id}"
    changes = 0
    for (name,) in conn.execute("select name from policy.lists where kind = 'card' order by name").fetchall():
        entries = policy_store.entries(conn, name)
        older = {e: x for e, x in entries.items() if pan.kid_of(e) not in (None, current)}
        by_expiry: dict[Any, list[str]] = {}
        for entry, expires_at in older.items():
            if tok.rekey(entry) not in entries:
                by_expiry.setdefault(expires_at, []).append(tok.rekey(entry))
        for expires_at, values in by_expiry.items():
            changes += policy_store.carry_rekeyed(conn, name, "add", values, why, actor, expires_at)
        if finish and older:
            changes += policy_store.carry_rekeyed(conn, name, "remove", list(older), why, actor)
    stops = policy_store.active_emergency(conn)
    denied = {s["value"] for s in stops if s["kind"] == "deny_card"}
    for s in stops:
        if s["kind"] != "deny_card" or pan.kid_of(s["value"] or "") in (None, current):
            continue
        new = tok.rekey(s["value"])
        if new not in denied:
            remaining = s["expires_at"] - conn.execute("select clock_timestamp()").fetchone()[0]
            policy_store.stop(conn, "deny_card", actor, f"{s['reason']} ({why})", remaining, value=new)
            denied.add(new)
            changes += 1
        if finish:
            policy_store.lift(conn, s["stop_id"], actor, f"{why}: continued as a stop on the new token")
            changes += 1
    return changes


def _erased_cards(settings: Settings) -> "ErasedKeys | None":
    """The erased entities, when there are any, to carry erased cards to their new tokens."""
    from riskloop.core.subject_keys import SubjectKeyMissing
    from riskloop.features.suppression import ErasedKeys

    try:
        erased = ErasedKeys.load(settings)
    except SubjectKeyMissing as exc:
        log.error("erased cards are not listed under their new tokens (their features may come back online "
                  "under them): %s", exc)
        return None
    return erased if erased else None


def _next_kid(kid: str) -> str:
    return f"k{int(kid[1:]) + 1}"


def _unfinished(conn: psycopg.Connection) -> tuple[str, str, str] | None:
    row = conn.execute(
        "select s.rotation_id::text, s.old_kid, s.new_kid from governance.pan_rotations s where s.event = 'started' "
        "and not exists (select 1 from governance.pan_rotations f where f.rotation_id = s.rotation_id "
        "and f.event = 'finished') order by s.seq desc limit 1").fetchone()
    return None if row is None else (row[0], row[1], row[2])


def rotate(settings: Settings, actor: str, *, batch: int = DEFAULT_BATCH, grace_seconds: float = GRACE_SECONDS,
           progress: Progress | None = None, stop_after_batches: int | None = None, online: bool = True,
           new_key: bool = True) -> Rotation:
    """Make a new key current and re-key every stored token, or resume the rotation a crash left unfinished.

    ``new_key=False`` (``riskloop pan rekey``) re-keys what is still under an older key with the current
    one, without a new key: a writer that outlived the grace period, a dbt run that straddled the
    rotation. It is recorded like a rotation whose old and new kid are the same.

    ``stop_after_batches`` stops after that many batches, as a crash would (tests); ``online=False``
    leaves the online store's card windows to each card's next payment."""
    if batch < 1:
        raise ValueError("--batch must be at least 1")
    tok = pan.tokenizer(settings)
    ring = pan.ring_file(settings)
    with db.connect(settings, autocommit=True) as conn:
        if not conn.execute("select pg_try_advisory_lock(hashtext(%s))", (LOCK,)).fetchone()[0]:
            raise RotationError("another `riskloop pan rotate` is running")
        try:
            pending = _unfinished(conn)
            if pending is not None:
                rotation = Rotation(*pending, resumed=True)
                log.info("resuming rotation %s (%s -> %s)", rotation.rotation_id, rotation.old_kid, rotation.new_kid)
            else:
                old = tok.current_kid
                rotation = Rotation(str(uuid.uuid4()), old, _next_kid(old) if new_key else old, resumed=False)
                # The record first: a crash before the ring is written resumes with the same kid.
                conn.execute("insert into governance.pan_rotations (rotation_id, event, actor, old_kid, new_kid) "
                             "values (%s, 'started', %s, %s, %s)",
                             (rotation.rotation_id, actor, rotation.old_kid, rotation.new_kid))
            kids = [k.kid for k in tok.keys]
            if rotation.new_kid not in kids and kids[-1] != rotation.old_kid:
                raise RotationError(f"the key ring {ring} ends at {kids[-1]}, but the unfinished rotation "
                                    f"{rotation.rotation_id} goes {rotation.old_kid} -> {rotation.new_kid}")
            pan.add_ring_key(ring, rotation.new_kid)
            tok.reload()
            if tok.current_kid != rotation.new_kid:
                raise RotationError(f"the key ring {ring} has keys after {rotation.new_kid}: resolve by hand")
            # Until every process has re-read the ring (and finished what it tokenised before), old tokens may still arrive.
            settle_at = ring.stat().st_mtime + grace_seconds
            rotation.counts["policy.card_rules"] = carry_card_rules(conn, tok, actor, rotation.rotation_id, finish=False)
            erased = _erased_cards(settings)
            cards = CardWindows(settings, erased) if online else None
            try:
                while True:
                    try:
                        changed = rekey_pass(conn, tok, batch, progress, stop_after_batches, cards, erased)
                    except _Interrupted as exc:
                        _add(rotation.counts, exc.counts)
                        raise
                    rotation.passes += 1
                    _add(rotation.counts, changed)
                    if time.time() >= settle_at and not any(changed.values()):
                        break
                    if time.time() < settle_at:
                        time.sleep(max(0.0, min(settle_at - time.time(), grace_seconds)))
            finally:
                if cards is not None:
                    rotation.card_windows_pushed = cards.pushed
                    cards.close()
            rotation.counts["policy.card_rules"] += carry_card_rules(conn, tok, actor, rotation.rotation_id, finish=True)
            conn.execute("insert into governance.pan_rotations (rotation_id, event, actor, old_kid, new_kid, counts) "
                         "values (%s, 'finished', %s, %s, %s, %s)",
                         (rotation.rotation_id, actor, rotation.old_kid, rotation.new_kid,
                          json.dumps(rotation.counts)))
            log.info("rotation %s finished: %s -> %s, %d rows re-keyed or mapped in %d passes", rotation.rotation_id,
                     rotation.old_kid, rotation.new_kid, sum(rotation.counts.values()), rotation.passes)
            return rotation
        finally:
            conn.execute("select pg_advisory_unlock(hashtext(%s))", (LOCK,))


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def status(settings: Settings) -> dict[str, Any]:
    """The keys of the ring (never their material), the rotations, and the rows still under an older key."""
    tok = pan.tokenizer(settings)
    keys = [{"kid": k.kid, "created_at": k.created_at or None, "current": i == len(tok.keys) - 1}
            for i, k in enumerate(tok.keys)]
    with db.connect(settings, autocommit=True) as conn:
        rotations = [{"rotation_id": str(r[0]), "event": r[1], "at": r[2].isoformat(), "actor": r[3], "old_kid": r[4],
                      "new_kid": r[5], "counts": r[6]} for r in conn.execute(
            "select rotation_id, event, at, actor, old_kid, new_kid, counts from governance.pan_rotations order by seq")]
        stale: dict[str, int] = {}
        mapped = 0
        for target in targets(conn):
            if target.mapped:
                continue
            stale[target.name] = conn.execute(sql.SQL("select count(*) from {t} where {w}").format(
                t=target.ident, w=_stale(target, tok.current_kid))).fetchone()[0]
        mapped = conn.execute("select count(*) from serving.pan_token_map").fetchone()[0]
        unfinished = _unfinished(conn)
    return {"ring": str(pan.ring_file(settings)), "current_kid": tok.current_kid, "keys": keys,
            "rotations": rotations, "unfinished": unfinished[0] if unfinished else None,
            "rows_under_older_keys": stale, "mapped_tokens": mapped}
