"""Who authored a model version: the authenticated principal that registered it, recorded by riskloop.

MLflow's run ``user_id`` is whatever the client declares (a ``USER`` environment variable or an
``mlflow.user`` tag sets it), so four eyes cannot rest on it. Training records its principal here
when it registers a version (:func:`record_author`), and for a DAG run also the person who
triggered it; review (:mod:`riskloop.governance.review`) reads it back (:func:`author_of`). A version
with no row (registered outside riskloop's training) has an unknown author and cannot be approved.
The table is append-only and keyed by version: a later claim on a version is refused, not recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.core.identity import Principal

log = logging.getLogger(__name__)

TABLE = "governance.model_authors"
TAG = "riskloop.author"  # a convenience copy on the MLflow version; the table is the record


@dataclass(frozen=True)
class Authorship:
    model_name: str
    model_version: str
    author: str
    author_role: str
    key_id: str
    triggered_by: str | None
    run_id: str | None
    recorded_at: datetime

    def people(self) -> list[str]:
        """Everyone who may not approve this version: the author, and whoever triggered its DAG run."""
        return [a for a in (self.author, self.triggered_by) if a]


def record_author(settings: Settings, name: str, version: str, principal: Principal, *, run_id: str | None = None,
                  triggered_by: str | None = None, client=None) -> Authorship:
    """Record ``principal`` (a named one) as the author of ``name`` v``version``."""
    if not principal.named:
        raise ValueError(f"{principal.actor} has no name and cannot author a model version")
    with db.connect(settings) as conn:
        row = conn.execute(
            f"""insert into {TABLE} (model_name, model_version, author, author_role, key_id, triggered_by, run_id)
                values (%s, %s, %s, %s, %s, %s, %s) returning recorded_at""",
            (name, str(version), principal.actor, principal.role, principal.key_id, triggered_by, run_id)).fetchone()
    if client is not None:
        try:
            client.set_model_version_tag(name, str(version), TAG, principal.actor)
        except Exception:  # noqa: BLE001
            log.warning("could not tag %s v%s with its author", name, version)
    log.info("%s v%s authored by %s%s", name, version, principal.actor,
             f" (triggered by {triggered_by})" if triggered_by else "")
    return Authorship(name, str(version), principal.actor, principal.role, principal.key_id, triggered_by, run_id,
                      row[0])


def author_of(settings: Settings, name: str, version: str) -> Authorship | None:
    """The recorded author of ``name`` v``version``; None if riskloop never recorded one."""
    with db.connect(settings) as conn:
        if not conn.execute(f"select to_regclass('{TABLE}') is not null").fetchone()[0]:
            return None
        row = conn.execute(
            f"""select model_name, model_version, author, author_role, key_id, triggered_by, run_id, recorded_at
                from {TABLE} where model_name = %s and model_version = %s""", (name, str(version))).fetchone()
    return Authorship(*row) if row else None
