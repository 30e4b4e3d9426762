"""The policy store: versions of a decision policy, named lists and emergency rules, in Postgres.

A change is a draft (:func:`draft`), checked completely when saved (:meth:`Policy.check`: an unknown
feature or list, a wrong type, refused with the field and the reason); it goes live only when
someone other than its author approves it (:func:`approve`). :func:`reject` and :func:`rollback`
(to any version that was live before, a shipped file included) are one call each. Every step is
an append-only row (migration ``0007_policy_store``).

A list change (:func:`add_entries`, :func:`remove_entries`, :func:`import_csv`) is a proposal under
the same maker-checker rule (:func:`approve_list_change`, :func:`reject_list_change`): approved,
its entries are written to ``list_events`` and applied everywhere; pending or rejected, never.
Emergency rules (:func:`stop`, :func:`lift`, admin only, with a reason and an expiry) stay
immediate: in an incident a blocked card must block now. All changes draw from one sequence; a
decision logs the sequence number it ran at (``signals.policy_seq``), and :func:`policy_at`
rebuilds that exact state for a replay or a backtest. Serving keeps a :class:`StoreState` per
process, refreshed from the new events only on each NOTIFY (or poll), and decides against the
immutable :class:`Policy` it binds.

Library API for other callers (backtest, review page): :func:`load_version` (a version, stored or
shipped, as a :class:`Policy` without lists), :func:`policy_at` (bound to the lists and emergency
rules in force at a sequence number and time), :func:`versions`, :func:`history`, :func:`diff`
(a draft against the live version), :func:`backtest_of` and :func:`list_changes`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from riskloop.core.identity import same_actor
from riskloop.decisions.policy import (
    LIST_KINDS,
    LIST_NAME,
    NUMBER,
    POLICY_DIR,
    TEXT,
    Condition,
    Policy,
    PolicyError,
    Rule,
    load_policy,
)

if TYPE_CHECKING:
    import psycopg

    from riskloop.core.config import Settings

log = logging.getLogger(__name__)

CHANNEL = "riskloop_policy"
LOCK = "riskloop policy store"
EMERGENCY_KINDS = ("review_above", "deny_bin", "deny_terminal", "deny_card", "rules_only")
_ID = re.compile(r"^(fraud|credit)-v([1-9][0-9]*)$")


class StoreError(ValueError):
    """A refused store operation (unknown version, wrong state, bad input): the message says why."""


class DraftInvalid(StoreError):
    """A draft refused at save: ``errors`` name each field and what is wrong with it."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("draft refused: " + "; ".join(errors))
        self.errors = errors


class SelfApproval(StoreError):
    """Maker-checker: the author of a version may not approve it."""


def parse_id(policy_id: str) -> tuple[str, int]:
    m = _ID.match(policy_id)
    if m is None:
        raise StoreError(f"{policy_id!r} is not a policy id (fraud-v3, credit-v1)")
    return m.group(1), int(m.group(2))


def _lock(conn: "psycopg.Connection") -> None:
    """Serialise writers, so the change sequence's order is the commit order (a snapshot read at
    sequence N never misses a change numbered below N that commits later)."""
    conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", (LOCK,))


# --- what a draft may name ------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _catalog(repo: Path) -> dict[str, str]:
    from riskloop.core import windows
    from riskloop.features.datasets import FRAUD_REQUEST_FEATURES
    from riskloop.features.store import _load_definitions

    contents = _load_definitions(repo, "catalog")
    out: dict[str, str] = {n: NUMBER for n in FRAUD_REQUEST_FEATURES}
    for view in [*contents.feature_views, *contents.on_demand_feature_views]:
        for f in view.features:
            out[f.name] = TEXT if "String" in str(f.dtype) else NUMBER
    for e in windows.ENTITIES:
        out.update({n: NUMBER for n in windows.feature_names(e)})
    return out


def feature_catalog(settings: "Settings") -> dict[str, str]:
    """Every feature a rule may read (batch, on-demand, real-time, request-time), with its type,
    from the feature repository's definitions."""
    return _catalog(Path(settings.feature_repo))


def known_lists(conn: "psycopg.Connection") -> dict[str, str]:
    return dict(conn.execute("select name, kind from policy.lists").fetchall())


# --- versions -------------------------------------------------------------------------------------

def _shipped(product: str) -> dict[int, Path]:
    return {int(p.stem.rsplit("-v", 1)[1]): p for p in POLICY_DIR.glob(f"{product}-v*.yaml")}


def load_version(conn: "psycopg.Connection", policy_id: str) -> Policy:
    """A version as a :class:`Policy` (its lists empty until :meth:`Policy.bind`): stored in the
    store, or shipped as a file (``riskloop/decisions/policies``)."""
    product, version = parse_id(policy_id)
    return _load_cached(conn, product, version)


def _load_cached(conn: "psycopg.Connection", product: str, version: int) -> Policy:
    row = conn.execute("select body, digest from policy.versions where product = %s and version = %s",
                       (product, version)).fetchone()
    if row is None:
        path = _shipped(product).get(version)
        if path is None:
            raise StoreError(f"no policy {product}-v{version} (stored or shipped)")
        return load_policy(path)
    return _parse(row[0], row[1])


@lru_cache(maxsize=64)
def _parse(body: str, digest: str) -> Policy:
    """A stored body as a Policy (bodies never change, so the digest is a safe cache key)."""
    try:
        return Policy.model_validate({**yaml.safe_load(body), "digest": digest})
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        raise PolicyError(f"stored policy {digest[:12]}: {exc}") from exc


def draft(conn: "psycopg.Connection", text: str, actor: str, *, features: Mapping[str, str] | None,
          note: str = "") -> Policy:
    """Save YAML ``text`` as the next version of its product, as a draft. Its ``version`` field is
    replaced by the next free number (a change is always a new version). Refused, with every
    error, if the YAML is invalid or names a feature, field or list that does not exist or has
    another type (``features``: :func:`feature_catalog`; None skips the feature check)."""
    try:
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise DraftInvalid(["policy: a YAML mapping is expected"])
        product = data.get("policy")
        if product not in ("fraud", "credit"):
            raise DraftInvalid([f"policy: fraud or credit, not {product!r}"])
        data["version"] = 1
        Policy.model_validate(data)  # the structure, before the next number is taken
    except yaml.YAMLError as exc:
        raise DraftInvalid([f"yaml: {exc}"]) from exc
    except ValueError as exc:
        if isinstance(exc, DraftInvalid):
            raise
        errors = getattr(exc, "errors", None)
        if callable(errors):
            raise DraftInvalid([f"{'.'.join(str(p) for p in e['loc']) or 'policy'}: {e['msg']}"
                                for e in errors()]) from exc
        raise DraftInvalid([str(exc)]) from exc
    with conn.transaction():
        _lock(conn)
        stored = conn.execute("select coalesce(max(version), 0) from policy.versions where product = %s",
                              (product,)).fetchone()[0]
        data["version"] = max([stored, *_shipped(product)]) + 1
        body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        digest = hashlib.sha256(body.encode()).hexdigest()
        policy = Policy.model_validate({**data, "digest": digest})
        errors = policy.check(features, known_lists(conn))
        if errors:
            raise DraftInvalid(errors)
        conn.execute("insert into policy.versions (product, version, body, digest, author) values (%s, %s, %s, %s, %s)",
                     (product, policy.version, body, digest, actor))
        _event(conn, product, policy.version, "drafted", actor, note)
    log.info("policy %s drafted by %s", policy.id, actor)
    return policy


def _event(conn: "psycopg.Connection", product: str, version: int, kind: str, actor: str, reason: str = "",
           details: Mapping[str, Any] | None = None) -> int:
    from psycopg.types.json import Jsonb

    return conn.execute("insert into policy.version_events (product, version, kind, actor, reason, details) "
                        "values (%s, %s, %s, %s, %s, %s) returning seq",
                        (product, version, kind, actor, reason, Jsonb(dict(details or {})))).fetchone()[0]


def _status(conn: "psycopg.Connection", product: str, version: int) -> tuple[str | None, str | None]:
    """(state, author) of a stored version: drafted, approved or rejected (None: not stored)."""
    author = conn.execute("select author from policy.versions where product = %s and version = %s",
                          (product, version)).fetchone()
    if author is None:
        return None, None
    kinds = {k for (k,) in conn.execute("select kind from policy.version_events where product = %s and version = %s",
                                        (product, version))}
    state = "approved" if "approved" in kinds else "rejected" if "rejected" in kinds else "drafted"
    return state, author[0]


def live_version(conn: "psycopg.Connection", product: str, as_of_seq: int | None = None) -> int | None:
    """The version live in the store (None: none approved yet, serving runs its configured file)."""
    row = conn.execute("select version from policy.version_events where product = %s "
                       "and kind in ('approved', 'rolled_back') and (%s::bigint is null or seq <= %s) "
                       "order by seq desc limit 1", (product, as_of_seq, as_of_seq)).fetchone()
    return None if row is None else row[0]


def _check_step(what: str, state: str | None, author: str | None, actor: str, step: str, reason: str) -> None:
    """Maker-checker, one rule for versions and list changes: only a draft is approved or rejected,
    a rejection says why, and the author of a change never approves it."""
    if state is None:
        raise StoreError(f"no stored draft {what}")
    if state != "drafted":
        raise StoreError(f"{what} is {state}, only a draft can be {step}")
    if step == "rejected" and not reason.strip():
        raise StoreError("a rejection needs a reason")
    if step == "approved" and same_actor(author, actor):
        raise SelfApproval(f"{what} was drafted by {author}: someone else must approve it")


def approve(conn: "psycopg.Connection", policy_id: str, actor: str, reason: str = "", *,
            require_backtest: bool = False) -> int:
    """Make a drafted version live: every serving process applies it within a second. Its author
    may not approve it; with ``require_backtest`` (setting ``policy_require_backtest``) neither
    may anyone before a backtest is attached. Returns the change's sequence number."""
    product, version = parse_id(policy_id)
    with conn.transaction():
        _lock(conn)
        state, author = _status(conn, product, version)
        _check_step(policy_id, state, author, actor, "approved", reason)
        if require_backtest and backtest_of(conn, policy_id) is None:
            raise StoreError(f"{policy_id} has no backtest attached, and approval requires one: "
                             f"`riskloop policy backtest {policy_id} --from ... --to ... --attach`")
        seq = _event(conn, product, version, "approved", actor, reason)
    log.warning("policy %s approved by %s (drafted by %s): live", policy_id, actor, author)
    return seq


def reject(conn: "psycopg.Connection", policy_id: str, actor: str, reason: str) -> int:
    product, version = parse_id(policy_id)
    with conn.transaction():
        _lock(conn)
        state, author = _status(conn, product, version)
        _check_step(policy_id, state, author, actor, "rejected", reason)
        seq = _event(conn, product, version, "rejected", actor, reason)
    log.info("policy %s rejected by %s: %s", policy_id, actor, reason)
    return seq


def rollback(conn: "psycopg.Connection", policy_id: str, actor: str, reason: str) -> int:
    """Make an earlier version live again: one that was approved before, or a shipped file."""
    product, version = parse_id(policy_id)
    if not reason.strip():
        raise StoreError("a rollback needs a reason")
    with conn.transaction():
        _lock(conn)
        state, _ = _status(conn, product, version)
        if state is None and version not in _shipped(product):
            raise StoreError(f"no policy {policy_id} (stored or shipped)")
        if state in ("drafted", "rejected"):
            raise StoreError(f"{policy_id} was never approved ({state}): approve it instead")
        if live_version(conn, product) == version:
            raise StoreError(f"{policy_id} is already live")
        seq = _event(conn, product, version, "rolled_back", actor, reason)
    log.warning("policy %s rolled back to by %s: %s", policy_id, actor, reason)
    return seq


def attach_backtest(conn: "psycopg.Connection", policy_id: str, actor: str, report: Mapping[str, Any]) -> int:
    """Attach a backtest's report to a version (``backtested`` event): the approver reads it."""
    product, version = parse_id(policy_id)
    with conn.transaction():
        _lock(conn)
        if _status(conn, product, version)[0] is None:
            raise StoreError(f"no stored policy {policy_id}")
        return _event(conn, product, version, "backtested", actor, details=report)


def versions(conn: "psycopg.Connection", product: str | None = None) -> list[dict[str, Any]]:
    """Stored versions, newest first: id, author, created_at, state, live, last backtest seq."""
    rows = conn.execute("""
        select v.product, v.version, v.author, v.created_at, v.digest,
               bool_or(e.kind = 'approved') as approved, bool_or(e.kind = 'rejected') as rejected,
               max(e.seq) filter (where e.kind = 'backtested') as backtest_seq
        from policy.versions v left join policy.version_events e using (product, version)
        where %s::text is null or v.product = %s
        group by 1, 2, 3, 4, 5 order by v.product, v.version desc""", (product, product)).fetchall()
    live = {p: live_version(conn, p) for p in ("fraud", "credit")}
    return [{"id": f"{p}-v{v}", "product": p, "version": v, "author": a, "created_at": c, "digest": d,
             "state": "approved" if ap else "rejected" if rj else "drafted", "live": live[p] == v,
             "backtest_seq": b} for p, v, a, c, d, ap, rj, b in rows]


def history(conn: "psycopg.Connection", policy_id: str | None = None) -> list[dict[str, Any]]:
    """Every step of every version (or of one), oldest first."""
    product, version = parse_id(policy_id) if policy_id else (None, None)
    cur = conn.execute("select seq, at, product, version, kind, actor, reason, details from policy.version_events "
                       "where %s::text is null or (product = %s and version = %s) order by seq",
                       (product, product, version))
    cols = [d.name for d in cur.description]
    return [{**dict(zip(cols, r, strict=True)), "id": f"{r[2]}-v{r[3]}"} for r in cur.fetchall()]


def backtest_of(conn: "psycopg.Connection", policy_id: str) -> dict[str, Any] | None:
    """The newest backtest attached to a version (its report, who attached it and when), or None."""
    product, version = parse_id(policy_id)
    row = conn.execute("select seq, at, actor, details from policy.version_events where product = %s and version = %s "
                       "and kind = 'backtested' order by seq desc limit 1", (product, version)).fetchone()
    return None if row is None else {"seq": row[0], "at": row[1], "actor": row[2], "report": row[3]}


def diff(conn: "psycopg.Connection", policy_id: str, base_id: str) -> dict[str, Any]:
    """What ``policy_id`` changes against ``base_id`` (the live version): rules added, removed and
    changed (matched by id, each side as written), rules whose place in the order moved (the first
    deciding rule wins), and every other setting (thresholds, ...) whose value differs."""
    new, old = (yaml.safe_load(export_yaml(conn, p)) or {} for p in (policy_id, base_id))
    new_rules = {r["id"]: r for r in new.get("rules") or []}
    old_rules = {r["id"]: r for r in old.get("rules") or []}
    kept_new = [i for i in new_rules if i in old_rules]
    kept_old = [i for i in old_rules if i in new_rules]
    return {
        "id": policy_id, "base": base_id,
        "rules_added": [new_rules[i] for i in new_rules if i not in old_rules],
        "rules_removed": [old_rules[i] for i in old_rules if i not in new_rules],
        "rules_changed": [{"id": i, "before": old_rules[i], "after": new_rules[i]}
                          for i in kept_new if old_rules[i] != new_rules[i]],
        "rules_moved": [i for i, j in zip(kept_new, kept_old, strict=True) if i != j],
        "settings_changed": [{"key": k, "before": old.get(k), "after": new.get(k)}
                             for k in sorted(set(old) | set(new)) if k not in ("rules", "version", "digest")
                             and old.get(k) != new.get(k)],
    }


def export_yaml(conn: "psycopg.Connection", policy_id: str) -> str:
    """A version as YAML (stored body, or the shipped file as it is)."""
    product, version = parse_id(policy_id)
    row = conn.execute("select body from policy.versions where product = %s and version = %s",
                       (product, version)).fetchone()
    if row is not None:
        return row[0]
    path = _shipped(product).get(version)
    if path is None:
        raise StoreError(f"no policy {policy_id} (stored or shipped)")
    return path.read_text()


# --- lists ----------------------------------------------------------------------------------------

def create_list(conn: "psycopg.Connection", name: str, kind: str, actor: str, description: str = "") -> None:
    if not re.match(LIST_NAME, name):
        raise StoreError(f"list name {name!r}: lower case letters, digits and _, starting with a letter")
    if kind not in LIST_KINDS:
        raise StoreError(f"list kind {kind!r}: one of {sorted(LIST_KINDS)}")
    with conn.transaction():
        _lock(conn)
        if conn.execute("select 1 from policy.lists where name = %s", (name,)).fetchone():
            raise StoreError(f"list {name} exists")
        conn.execute("insert into policy.lists (name, kind, description, created_by) values (%s, %s, %s, %s)",
                     (name, kind, description, actor))


def lists(conn: "psycopg.Connection") -> list[dict[str, Any]]:
    """Every list with its kind and how many entries are in force now."""
    now = datetime.now(UTC)
    out = []
    for name, kind, desc, by, at in conn.execute(
            "select name, kind, description, created_by, created_at from policy.lists order by name").fetchall():
        out.append({"name": name, "kind": kind, "description": desc, "created_by": by, "created_at": at,
                    "entries": len(entries(conn, name, at=now))})
    return out


def _normalise(kind: str, entry: str) -> str:
    entry = entry.strip()
    return entry.upper() if kind == "country" else entry


def _propose(conn: "psycopg.Connection", name: str, op: str, items: Iterable[tuple[str, str, datetime | None]],
             actor: str, source: str) -> dict[str, Any]:
    """Store a list change as a draft: nothing changes until someone else approves it."""
    from psycopg.types.json import Jsonb

    if not actor.strip():
        raise StoreError("an actor is required")
    with conn.transaction():
        _lock(conn)
        kind = conn.execute("select kind from policy.lists where name = %s", (name,)).fetchone()
        if kind is None:
            raise StoreError(f"no list {name}")
        rows = []
        for entry, reason, expires_at in items:
            entry = _normalise(kind[0], entry)
            if not entry:
                raise StoreError("an empty entry")
            if not (reason or "").strip():
                raise StoreError(f"entry {entry}: a reason is required")
            rows.append([entry, reason, expires_at.isoformat() if expires_at else None])
        if not rows:
            raise StoreError(f"list {name}: no entries to {op}")
        change_id, at = conn.execute(
            "insert into policy.list_changes (list_name, op, entries, n_entries, actor, source) "
            "values (%s, %s, %s, %s, %s, %s) returning change_id, at",
            (name, op, Jsonb(rows), len(rows), actor, source)).fetchone()
    log.info("list %s: %s of %d entries drafted by %s (%s) as change %s", name, op, len(rows), actor, source, change_id)
    return {"change_id": change_id, "list": name, "op": op, "entries": len(rows), "state": "drafted",
            "author": actor, "at": at}


def add_entries(conn: "psycopg.Connection", name: str, values: Iterable[str], reason: str, actor: str,
                expires_at: datetime | None = None, source: str = "api") -> dict[str, Any]:
    """Draft adding entries (:func:`approve_list_change` makes them live)."""
    return _propose(conn, name, "add", ((v, reason, expires_at) for v in values), actor, source)


def remove_entries(conn: "psycopg.Connection", name: str, values: Iterable[str], reason: str, actor: str,
                   source: str = "api") -> dict[str, Any]:
    """Draft removing entries (:func:`approve_list_change` makes it live)."""
    return _propose(conn, name, "remove", ((v, reason, None) for v in values), actor, source)


def carry_rekeyed(conn: "psycopg.Connection", name: str, op: str, values: Iterable[str], reason: str, actor: str,
                  expires_at: datetime | None = None) -> int:
    """Entries of a card list under a rotated card-token key (:mod:`riskloop.ops.pan_rotation`), live at
    once: the same cards under another token keep the list's meaning, which a second person would
    only be asked to take on trust, so they are appended as list events (``source`` ``pan_rotation``)
    rather than drafted. Only for card lists, only riskloop tokens; returns the entries appended."""
    from riskloop.core import pan

    values = [v.strip() for v in values]
    bad = [v for v in values if pan.kid_of(v) is None]
    if bad:
        raise StoreError(f"list {name}: only card tokens are carried over a rotation, not {bad[0]!r}")
    if op not in ("add", "remove") or not values:
        return 0
    with conn.transaction():
        _lock(conn)
        kind = conn.execute("select kind from policy.lists where name = %s", (name,)).fetchone()
        if kind is None or kind[0] != "card":
            raise StoreError(f"no card list {name}")
        with conn.cursor() as cur:
            cur.executemany("insert into policy.list_events (list_name, op, entry, reason, expires_at, actor, source) "
                            "values (%s, %s, %s, %s, %s, %s, 'pan_rotation')",
                            [(name, op, v, reason, expires_at, actor) for v in values])
    return len(values)


def _list_change_status(conn: "psycopg.Connection", change_id: int) -> tuple[str | None, str | None]:
    row = conn.execute("select c.actor, e.kind from policy.list_changes c left join policy.list_change_events e "
                       "using (change_id) where c.change_id = %s", (change_id,)).fetchone()
    return (None, None) if row is None else (row[1] or "drafted", row[0])


def approve_list_change(conn: "psycopg.Connection", change_id: int, actor: str, reason: str = "") -> int:
    """Make a drafted list change live (not by its author): its entries are written to the list's
    history in the same transaction, and every serving process applies them within a second."""
    what = f"list change {change_id}"
    with conn.transaction():
        _lock(conn)
        state, author = _list_change_status(conn, change_id)
        _check_step(what, state, author, actor, "approved", reason)
        seq = conn.execute("insert into policy.list_change_events (change_id, kind, actor, reason) "
                           "values (%s, 'approved', %s, %s) returning seq", (change_id, actor, reason)).fetchone()[0]
        n = conn.execute("""
            insert into policy.list_events (list_name, op, entry, reason, expires_at, actor, source, change_id)
            select c.list_name, c.op, e.v->>0, e.v->>1, (e.v->>2)::timestamptz, c.actor, c.source, c.change_id
            from policy.list_changes c cross join lateral jsonb_array_elements(c.entries) with ordinality as e(v, i)
            where c.change_id = %s order by e.i""", (change_id,)).rowcount
    log.warning("%s approved by %s (drafted by %s): %d entries live", what, actor, author, n)
    return seq


def reject_list_change(conn: "psycopg.Connection", change_id: int, actor: str, reason: str) -> int:
    what = f"list change {change_id}"
    with conn.transaction():
        _lock(conn)
        state, author = _list_change_status(conn, change_id)
        _check_step(what, state, author, actor, "rejected", reason)
        seq = conn.execute("insert into policy.list_change_events (change_id, kind, actor, reason) "
                           "values (%s, 'rejected', %s, %s) returning seq", (change_id, actor, reason)).fetchone()[0]
    log.info("%s rejected by %s: %s", what, actor, reason)
    return seq


def list_changes(conn: "psycopg.Connection", state: str | None = None, name: str | None = None,
                 limit: int = 200, sample: int = 20) -> list[dict[str, Any]]:
    """List changes, newest first (``state``: drafted, approved, rejected), each with its first
    ``sample`` entries (entry, reason, expires_at) and its decision."""
    cur = conn.execute("""
        select c.change_id, c.at, c.list_name, l.kind, c.op, c.n_entries, c.actor as author, c.source,
               coalesce(e.kind, 'drafted') as state, e.actor as decided_by, e.at as decided_at, e.reason as decision_reason,
               (select coalesce(jsonb_agg(x.v order by x.i), '[]'::jsonb) from jsonb_array_elements(c.entries)
                with ordinality as x(v, i) where x.i <= %(sample)s) as sample
        from policy.list_changes c join policy.lists l on l.name = c.list_name
        left join policy.list_change_events e using (change_id)
        where (%(state)s::text is null or coalesce(e.kind, 'drafted') = %(state)s)
          and (%(name)s::text is null or c.list_name = %(name)s)
        order by c.change_id desc limit %(limit)s""", {"state": state, "name": name, "limit": limit, "sample": sample})
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def import_csv(conn: "psycopg.Connection", name: str, text: str, actor: str, reason: str = "",
               expires_at: datetime | None = None) -> dict[str, Any]:
    """Draft adding the entries of a CSV (``entry[,reason[,expires_at]]``, a header row optional) as
    one list change: a bad row refuses the file with its line number, nothing half-drafted."""
    items: list[tuple[str, str, datetime | None]] = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not row[0].strip() or (lineno == 1 and row[0].strip().lower() == "entry"):
            continue
        why = (row[1].strip() if len(row) > 1 else "") or reason
        if not why:
            raise StoreError(f"line {lineno}: no reason (a column or --reason)")
        try:
            exp = datetime.fromisoformat(row[2].strip()) if len(row) > 2 and row[2].strip() else expires_at
        except ValueError as exc:
            raise StoreError(f"line {lineno}: expires_at {row[2]!r} is not an ISO time") from exc
        if exp is not None and exp.tzinfo is None:
            raise StoreError(f"line {lineno}: expires_at needs a time zone")
        items.append((row[0], why, exp))
    return _propose(conn, name, "add", items, actor, "csv")


def entries(conn: "psycopg.Connection", name: str, *, as_of_seq: int | None = None,
            at: datetime | None = None) -> dict[str, datetime | None]:
    """A list's entries in force (entry → expiry) after change ``as_of_seq`` at time ``at``."""
    at = at or datetime.now(UTC)
    rows = conn.execute("select distinct on (entry) entry, op, expires_at from policy.list_events "
                        "where list_name = %s and (%s::bigint is null or seq <= %s) order by entry, seq desc",
                        (name, as_of_seq, as_of_seq)).fetchall()
    return {e: x for e, op, x in rows if op == "add" and (x is None or x > at)}


def entry_history(conn: "psycopg.Connection", name: str, entry: str | None = None) -> list[dict[str, Any]]:
    """Every applied change of a list (or of one entry), oldest first: who drafted it (``actor``)
    and who approved it (``approved_by``; none for entries written before maker-checker)."""
    cur = conn.execute("select l.seq, l.at, l.list_name, l.op, l.entry, l.reason, l.expires_at, l.actor, l.source, "
                       "l.change_id, e.actor as approved_by from policy.list_events l "
                       "left join policy.list_change_events e on e.change_id = l.change_id and e.kind = 'approved' "
                       "where l.list_name = %s and (%s::text is null or l.entry = %s) order by l.seq",
                       (name, entry, entry))
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


# --- emergency rules ------------------------------------------------------------------------------

def stop(conn: "psycopg.Connection", kind: str, actor: str, reason: str, expires_in: timedelta, *,
         amount_minor: int | None = None, value: str | None = None, product: str = "fraud") -> dict[str, Any]:
    """Start an emergency rule (in every process within a second) until ``expires_in`` from now."""
    if kind not in EMERGENCY_KINDS:
        raise StoreError(f"emergency kind {kind!r}: one of {list(EMERGENCY_KINDS)}")
    if not reason.strip():
        raise StoreError("an emergency stop needs a reason")
    if expires_in <= timedelta(0):
        raise StoreError("an emergency stop needs an expiry in the future")
    if kind == "review_above" and not (amount_minor and amount_minor > 0):
        raise StoreError("review_above needs --amount-minor > 0")
    if kind.startswith("deny_") and not (value or "").strip():
        raise StoreError(f"{kind} needs a value")
    if product != "fraud" and kind != "rules_only":
        raise StoreError("credit takes only rules_only")
    with conn.transaction():
        _lock(conn)
        cur = conn.execute("insert into policy.emergency_events (op, product, kind, amount_minor, value, reason, "
                           "expires_at, actor) values ('start', %s, %s, %s, %s, %s, clock_timestamp() + %s, %s) "
                           "returning seq, at, expires_at",
                           (product, kind, amount_minor, (value or "").strip() or None, reason, expires_in, actor))
        seq, at, expires_at = cur.fetchone()
    row = {"stop_id": seq, "product": product, "kind": kind, "amount_minor": amount_minor, "value": value,
           "reason": reason, "actor": actor, "at": at, "expires_at": expires_at}
    log.warning("EMERGENCY stop %s started by %s: %s %s until %s (%s)", seq, actor, kind,
                amount_minor or value or "", expires_at, reason)
    return row


def lift(conn: "psycopg.Connection", stop_id: int, actor: str, reason: str) -> int:
    if not reason.strip():
        raise StoreError("lifting an emergency stop needs a reason")
    with conn.transaction():
        _lock(conn)
        if not any(r["stop_id"] == stop_id for r in active_emergency(conn)):
            raise StoreError(f"no active emergency stop {stop_id}")
        seq = conn.execute("insert into policy.emergency_events (op, stop_seq, reason, actor) "
                           "values ('lift', %s, %s, %s) returning seq", (stop_id, reason, actor)).fetchone()[0]
    log.warning("EMERGENCY stop %s lifted by %s: %s", stop_id, actor, reason)
    return seq


def active_emergency(conn: "psycopg.Connection", *, as_of_seq: int | None = None,
                     at: datetime | None = None) -> list[dict[str, Any]]:
    """Emergency rules in force after change ``as_of_seq`` at time ``at`` (default: now)."""
    at = at or datetime.now(UTC)
    rows = conn.execute("""
        select s.seq, s.product, s.kind, s.amount_minor, s.value, s.reason, s.actor, s.at, s.expires_at
        from policy.emergency_events s
        where s.op = 'start' and (%(seq)s::bigint is null or s.seq <= %(seq)s) and s.expires_at > %(at)s
          and not exists (select 1 from policy.emergency_events l where l.op = 'lift' and l.stop_seq = s.seq
                          and (%(seq)s::bigint is null or l.seq <= %(seq)s))
        order by s.seq""", {"seq": as_of_seq, "at": at}).fetchall()
    keys = ("stop_id", "product", "kind", "amount_minor", "value", "reason", "actor", "at", "expires_at")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def emergency_rule(stop_row: Mapping[str, Any]) -> Rule | None:
    """The rule an emergency stop adds (None for rules_only, which drops the model score instead)."""
    rid, why = f"EMERGENCY_{stop_row['stop_id']}", f"Emergency stop {stop_row['stop_id']}: {stop_row['reason']}"
    match stop_row["kind"]:
        case "review_above":
            return Rule(id=rid, kind="amount_above", amount_minor=stop_row["amount_minor"], action="review",
                        description=f"{why} (amount {{amount_minor:,}} over {{limit_minor:,}})")
        case "deny_terminal":
            return Rule(id=rid, kind="terminal_in", terminal_ids=frozenset({stop_row["value"]}), action="deny",
                        description=why)
        case "deny_card":
            return Rule(id=rid, kind="card_in", card_tokens=frozenset({stop_row["value"]}), action="deny",
                        description=why)
        case "deny_bin":
            return Rule(id=rid, kind="condition", action="deny", description=why,
                        condition=Condition(field="card_bin", op="==", value=stop_row["value"]))
    return None


def _bind(policy: Policy, list_entries: Mapping[str, Mapping[str, datetime | None]],
          stops: Iterable[Mapping[str, Any]], seq: int | None, at: datetime) -> Policy:
    mine = [s for s in stops if s["product"] == policy.policy and s["expires_at"] > at]
    rules = tuple(r for r in (emergency_rule(s) for s in mine) if r is not None)
    lists_now = {n: frozenset(e for e, x in list_entries.get(n, {}).items() if x is None or x > at)
                 for n in policy.list_names}
    return policy.bind(lists_now, rules, rules_only=any(s["kind"] == "rules_only" for s in mine), seq=seq)


def policy_at(conn: "psycopg.Connection", policy_id: str, seq: int | None, at: datetime) -> Policy:
    """Version ``policy_id`` bound to the lists and emergency rules in force after change ``seq`` at
    time ``at``: what a decision logged with that version, ``signals.policy_seq`` and ``decided_at``
    ran under (``seq`` None: a decision made before the store, lists empty, no emergency rules)."""
    policy = load_version(conn, policy_id)
    if seq is None:
        return policy.bind({})
    entries_of = {n: entries(conn, n, as_of_seq=seq, at=at) for n in policy.list_names}
    return _bind(policy, entries_of, active_emergency(conn, as_of_seq=seq, at=at), seq, at)


# --- what a serving process keeps -------------------------------------------------------------------

@dataclass
class StoreState:
    """A process's copy of the store, advanced by the new events only (:meth:`refresh`): a list
    change costs the changed entries, not a reload of a 100,000-entry list. Owned by one task;
    what decisions read is the immutable Policy :meth:`bind` returns."""

    seq: int = 0
    live: dict[str, int] = field(default_factory=dict)  # product → stored live version
    list_entries: dict[str, dict[str, datetime | None]] = field(default_factory=dict)
    stops: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_expiry: datetime | None = None

    def refresh(self, conn: "psycopg.Connection") -> bool:
        """Apply the changes after :attr:`seq`; True when anything changed (or something expired)."""
        changed, top = False, self.seq
        # One snapshot for the three reads; writers commit in sequence order (:func:`_lock`), so
        # what a snapshot shows is every change up to its highest number, none missing below it.
        with conn.transaction():
            conn.execute("set transaction isolation level repeatable read")
            versions_ = conn.execute("select seq, product, version, kind from policy.version_events where seq > %s "
                                     "order by seq", (self.seq,)).fetchall()
            list_rows = conn.execute("select seq, list_name, op, entry, expires_at from policy.list_events "
                                     "where seq > %s order by seq", (self.seq,)).fetchall()
            stop_rows = conn.execute("select seq, op, stop_seq, product, kind, amount_minor, value, reason, actor, at, "
                                     "expires_at from policy.emergency_events where seq > %s order by seq",
                                     (self.seq,)).fetchall()
        for seq, product, version, kind in versions_:
            top = max(top, seq)
            if kind not in ("approved", "rolled_back"):
                continue
            self.live[product] = version
            changed = True
        for seq, name, op, entry, exp in list_rows:
            top = max(top, seq)
            target = self.list_entries.setdefault(name, {})
            if op == "add":
                target[entry] = exp
            else:
                target.pop(entry, None)
            changed = True
        for row in stop_rows:
            seq, op, stop_seq, *rest = row
            top = max(top, seq)
            if op == "start":
                self.stops[seq] = dict(zip(("product", "kind", "amount_minor", "value", "reason", "actor", "at",
                                            "expires_at"), rest, strict=True), stop_id=seq)
            else:
                self.stops.pop(stop_seq, None)
            changed = True
        self.seq = top
        now = datetime.now(UTC)
        if self.next_expiry is not None and self.next_expiry <= now:
            changed = True
        if not changed:  # the scan below is O(entries): only after a change or an expiry
            return False
        expiries = [x for es in self.list_entries.values() for x in es.values() if x is not None and x > now]
        expiries += [s["expires_at"] for s in self.stops.values() if s["expires_at"] > now]
        self.next_expiry = min(expiries, default=None)
        return changed

    def bind(self, conn: "psycopg.Connection", product: str, fallback: Policy) -> Policy:
        """The policy a process decides with: the store's live version (``fallback``, the configured
        file, while none is approved), bound to the lists and emergency rules in force now."""
        version = self.live.get(product)
        policy = fallback if version is None else _load_cached(conn, product, version)
        return _bind(policy, self.list_entries, self.stops.values(), self.seq, datetime.now(UTC))


def policy_for_decision(conn: "psycopg.Connection", row: Mapping[str, Any]) -> Policy:
    """The policy a logged decision ran under, as it was then: its version (stored or shipped)
    bound to the lists and emergency rules at its ``signals.policy_seq`` and ``decided_at``."""
    from riskloop.decisions.policy import policy_by_id

    version = row["policy_version"]
    if conn.execute("select to_regclass('policy.versions')").fetchone()[0] is None:
        return policy_by_id(version)
    seq = (row.get("signals") or {}).get("policy_seq")
    return policy_at(conn, version, seq, row["decided_at"])


# --- watching and alerting ------------------------------------------------------------------------

_SHADOW_SQL = """
with d as (
    select policy_version, request->>'transaction_id' as tx, coalesce(signals->'shadow_rules', '[]'::jsonb) as sr
    from serving.decision_log where decided_at >= now() - %(window)s and policy_version is not null
), totals as (select policy_version, count(*) as n from d group by 1),
hits as (
    select d.policy_version, r.rule, d.tx from d cross join lateral jsonb_array_elements_text(d.sr) as r(rule)
), labelled as (
    select h.policy_version, h.rule, count(*) as hits,
           count(f.payment_id) filter (where f.tx_at <= (select max(tx_at) from marts.fct_transactions)
                                       - make_interval(days => %(delay)s)) as matured,
           count(f.payment_id) filter (where f.is_fraud = 1 and f.tx_at <= (select max(tx_at) from marts.fct_transactions)
                                       - make_interval(days => %(delay)s)) as fraud
    from hits h left join marts.fct_transactions f on f.payment_id = h.tx
    group by 1, 2
)
select t.policy_version, t.n, l.rule, coalesce(l.hits, 0), coalesce(l.matured, 0), coalesce(l.fraud, 0)
from totals t left join labelled l using (policy_version)
"""


def shadow_stats(conn: "psycopg.Connection", window: timedelta, label_delay_days: int) -> list[dict[str, Any]]:
    """Each shadow rule of the versions that decided in ``window``: decisions it saw, hits, hit
    rate, and precision on matured labels (fraud among its hits whose label is final)."""
    if conn.execute("select to_regclass('serving.decision_log') is not null and "
                    "to_regclass('marts.fct_transactions') is not null").fetchone()[0] is not True:
        return []
    rows = conn.execute(_SHADOW_SQL, {"window": window, "delay": int(label_delay_days)}).fetchall()
    seen: dict[str, int] = {}
    stats: dict[tuple[str, str], list[int]] = {}
    for version, n, rule, hits, matured, fraud in rows:
        seen[version] = n
        if rule is not None:
            stats[(version, rule)] = [hits, matured, fraud]
    out = []
    for version, n in sorted(seen.items()):
        try:
            shadow_ids = [r.id for r in load_version(conn, version).rules if r.mode == "shadow"]
        except (StoreError, PolicyError):
            continue
        for rid in shadow_ids:
            hits, matured, fraud = stats.get((version, rid), [0, 0, 0])
            out.append({"policy_version": version, "rule": rid, "decisions": n, "hits": hits,
                        "hit_rate": hits / n if n else None, "matured_hits": matured,
                        "precision": fraud / matured if matured else None})
    return out


def alert_stop(settings: "Settings", stop_row: Mapping[str, Any]) -> None:
    """Page on-call: an emergency stop changes every decision it touches (runbook emergency_stop)."""
    from riskloop.core import alerts

    what = stop_row.get("amount_minor") or stop_row.get("value") or ""
    alerts.notify(settings, "emergency_stop", f"{stop_row['product']}:{stop_row['stop_id']}",
                  f"Emergency stop {stop_row['stop_id']} by {stop_row['actor']}: {stop_row['kind']} {what} until "
                  f"{stop_row['expires_at']} ({stop_row['reason']})",
                  {k: str(v) for k, v in stop_row.items()})


def with_current_lists(conn: "psycopg.Connection", policy_id: str, list_changes: Iterable[int] = ()) -> Policy:
    """A version (stored or shipped) bound to its lists' entries in force now, without emergency
    rules: the candidate a backtest replays history under. ``list_changes``: drafted list changes
    applied on top, so a rule and the list change it needs are backtested together before either
    is approved. Without the store: the shipped file."""
    from riskloop.decisions.policy import policy_by_id

    changes = list(list_changes)
    if conn.execute("select to_regclass('policy.versions')").fetchone()[0] is None:
        if changes:
            raise StoreError("no policy store here: no list change to apply")
        return policy_by_id(policy_id).bind({})
    policy = load_version(conn, policy_id)
    lists_now = {n: set(entries(conn, n)) for n in policy.list_names}
    for change_id in changes:
        row = conn.execute("select c.list_name, c.op, c.entries, e.kind from policy.list_changes c "
                           "left join policy.list_change_events e using (change_id) where c.change_id = %s",
                           (change_id,)).fetchone()
        if row is None:
            raise StoreError(f"no list change {change_id}")
        name, op, items, decided = row
        if decided is not None:
            raise StoreError(f"list change {change_id} is {decided}: only a drafted one is applied on top of the lists")
        if name not in lists_now:
            raise StoreError(f"list change {change_id} changes list {name}, which {policy_id} does not read")
        for entry, _reason, _expires in items:
            (lists_now[name].add if op == "add" else lists_now[name].discard)(entry)
    return policy.bind({n: frozenset(v) for n, v in lists_now.items()})
