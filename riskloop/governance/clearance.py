"""Whether a model version may decide: the record serving checks before a loaded model serves.

A registry alias is only a pointer, and whoever can write to MLflow can move it. What the gate let
through is recorded in Postgres, so serving asks there before a model it loaded decides:

* a model deciding all traffic (``@champion``) needs a ``promoted`` row of
  ``governance.promotion_decisions`` whose new champion is that version and whose ``content_hash``
  is the hash of the very bytes serving loaded (a re-uploaded artifact is not the one promoted);
  the first version of a model has its bootstrap row (:func:`riskloop.governance.promotion.bootstrap_champion`);
* a challenger deciding a canary share, or scoring in shadow, needs the model's current canary
  state (``governance.canary_state``) to be a running canary or shadow of that version.

Light to import (no MLflow): serving's poller calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.governance import canary

PROMOTIONS = "governance.promotion_decisions"


@dataclass(frozen=True)
class Clearance:
    """The answer, with the row it rests on (a decision id or a canary id) or why there is none."""

    ok: bool
    reason: str
    evidence_id: str | None = None


def champion(conn, model_name: str, version: str, content_hash: str) -> Clearance:
    """May ``model_name`` v``version``, whose artifact hashes ``content_hash``, decide all traffic?"""
    if conn.execute("select to_regclass(%s)", (PROMOTIONS,)).fetchone()[0] is None:
        return Clearance(False, f"{PROMOTIONS} does not exist: no promotion was ever recorded")
    row = conn.execute(
        f"""select decision_id, decided_at, decided_by from {PROMOTIONS}
            where model_name = %s and decision = 'promoted' and new_champion_version = %s and content_hash = %s
            order by decided_at desc limit 1""", (model_name, str(version), content_hash)).fetchone()
    if row is not None:
        return Clearance(True, f"promoted by decision {row[0]} at {row[1]:%Y-%m-%d %H:%M}Z ({row[2]}) for hash "
                               f"{content_hash[:12]}", str(row[0]))
    other = conn.execute(
        f"""select decision_id, content_hash from {PROMOTIONS}
            where model_name = %s and decision = 'promoted' and new_champion_version = %s
            order by decided_at desc limit 1""", (model_name, str(version))).fetchone()
    if other is not None:
        return Clearance(False, f"{model_name} v{version} was promoted (decision {other[0]}) for content hash "
                                f"{str(other[1] or '')[:12]}, but the artifact loaded hashes {content_hash[:12]}")
    return Clearance(False, f"{model_name} v{version} has no promotion decision: the alias was moved outside the "
                            "promotion gate (riskloop promote)")


def challenger(conn, model_name: str, version: str) -> Clearance:
    """May ``model_name`` v``version`` decide a canary share or score in shadow?"""
    if conn.execute("select to_regclass(%s)", (canary.TABLE,)).fetchone()[0] is None:
        return Clearance(False, f"{canary.TABLE} does not exist: no canary was ever started")
    state = canary.current(conn, model_name)
    if state is None or not state.active:
        return Clearance(False, f"no canary or shadow of {model_name} is running (riskloop canary start)")
    if state.challenger_version != str(version):
        return Clearance(False, f"the running {state.mode} {state.canary_id} is of v{state.challenger_version}, "
                                f"not v{version}")
    return Clearance(True, f"{state.mode} {state.canary_id} of v{version} started at {state.started_at:%Y-%m-%d %H:%M}Z",
                     state.canary_id)


def check(settings: Settings, model_name: str, version: str, content_hash: str, *, as_challenger: bool) -> Clearance:
    """:func:`champion` or :func:`challenger` on a connection of its own."""
    with db.connect(settings, autocommit=True) as conn:
        if as_challenger:
            return challenger(conn, model_name, version)
        return champion(conn, model_name, version, content_hash)
