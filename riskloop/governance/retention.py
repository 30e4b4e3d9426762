"""Retention: delete what has been kept long enough, per data class, and record that it was done.

Each data class has its own period (``RISKLOOP_RETENTION_<CLASS>_DAYS``; unset keeps it):

* ``raw_payloads``: webhook bodies in ``raw.webhook_inbox`` received before the cutoff. The payment
  fact keeps what dbt parsed from them; a ``--full-refresh`` cannot rebuild the deleted ones.
* ``cases``: cases closed before the cutoff, with their events.
* ``decisions``: decisions made before the cutoff with their overrides and step-up outcomes (when
  those are older than the cutoff too), and dead letters set aside before it. A decision a kept case
  still holds stays until its case goes: the case's evidence must stay whole. Also the
  (customer, device) pairs first allowed before the cutoff (``serving.known_devices``), a cache of
  the log holding the same personal data.
* ``model_artifacts``: versions of riskloop's models (the fraud and the credit model; other models in
  the registry are not its to delete) without an alias, registered before the cutoff, that no
  kept decision was made by (``riskloop decisions replay`` needs the artifact of every kept
  decision's model).

The append-only tables refuse every delete unless the transaction declares a cutoff
(``riskloop.retention_cutoff``) and the row is older than it (migration ``0005_retention``), so this
module is the one road by which a decision or a case event leaves, and only once it aged out. The
deletes themselves are the owner's function ``governance.retention_purge`` (migration
``0011_retention_purge``): the governance role that runs retention may call it, and may not DELETE.
Cases go before decisions, so decisions freed by a deleted case go in the same run. Each class is
one transaction; each run is recorded in ``governance.retention_runs`` (dry runs too), and a dry
run counts in the same statements' terms and rolls back.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from riskloop.core import db
from riskloop.core.config import Settings

log = logging.getLogger(__name__)

DATA_CLASSES = ("raw_payloads", "cases", "decisions", "model_artifacts")
RUNS = "governance.retention_runs"


@dataclass
class ClassResult:
    """What a data class's retention deleted (or, in a dry run, would delete), per table."""

    data_class: str
    cutoff: datetime | None  # None: the class has no retention period, nothing was touched
    rows: dict[str, int] = field(default_factory=dict)


@dataclass
class RetentionRun:
    run_id: str
    dry_run: bool
    as_of: datetime
    classes: list[ClassResult]

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "dry_run": self.dry_run, "as_of": self.as_of.isoformat(),
                "classes": {c.data_class: {"cutoff": c.cutoff.isoformat() if c.cutoff else None, "rows": c.rows}
                            for c in self.classes}}


def cutoffs(settings: Settings, as_of: datetime) -> dict[str, datetime | None]:
    """Per data class, the time before which its data goes (None: kept)."""
    days = {"raw_payloads": settings.retention_raw_payloads_days, "cases": settings.retention_cases_days,
            "decisions": settings.retention_decisions_days,
            "model_artifacts": settings.retention_model_artifacts_days}
    return {c: (as_of - timedelta(days=d) if d else None) for c, d in days.items()}


def _exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (table,)).fetchone()[0]


def _purge(conn: psycopg.Connection, data_class: str, cutoff: datetime) -> dict[str, int]:
    """A data class's deletes, by ``governance.retention_purge`` (migration 0011): the tables' owner runs
    them, so the role running retention holds no DELETE on the append-only tables."""
    return {target: int(n) for target, n in conn.execute(
        "select target, n from governance.retention_purge(%s, %s)", (data_class, cutoff))}


def _model_artifacts(settings: Settings, conn: psycopg.Connection, cutoff: datetime, dry_run: bool) -> dict[str, int]:
    """Registry versions past their period; deleted through the configured registry (not a transaction:
    a dry run only lists)."""
    from riskloop.models.registry import mlflow_client

    client = mlflow_client(settings.tracking_uri)
    used = set()
    if _exists(conn, "serving.decision_log"):
        used = {(n, str(v)) for n, v in conn.execute(
            "select distinct model_name, model_version from serving.decision_log where model_name is not null")}
    gone = 0
    from mlflow.exceptions import MlflowException

    # riskloop's own models only: the registry may hold other teams' models, never ours to delete
    for name in dict.fromkeys((settings.fraud_model_name, settings.credit_model_name)):
        try:
            model = client.get_registered_model(name)
        except MlflowException as exc:
            if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                continue
            raise
        # a version's own alias list is not filled in by a search: the model's alias map is
        aliased = {str(v) for v in model.aliases.values()}
        for mv in client.search_model_versions(f"name = '{model.name}'"):
            registered = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
            if str(mv.version) in aliased or registered >= cutoff or (model.name, str(mv.version)) in used:
                continue
            log.info("retention: %s v%s (registered %s) %s", model.name, mv.version, registered.date(),
                     "would be deleted" if dry_run else "deleted")
            if not dry_run:
                client.delete_model_version(model.name, mv.version)
            gone += 1
    return {"mlflow.model_versions": gone}


def apply(settings: Settings, *, dry_run: bool, actor: str, as_of: datetime | None = None,
          classes: tuple[str, ...] = DATA_CLASSES) -> RetentionRun:
    """Apply every configured data class's retention as of ``as_of`` (default now); ``dry_run``
    counts what would go and deletes nothing. Recorded in ``governance.retention_runs``."""
    unknown = sorted(set(classes) - set(DATA_CLASSES))
    if unknown:
        raise ValueError(f"unknown data classes {unknown} (known: {', '.join(DATA_CLASSES)})")
    as_of = as_of or datetime.now(UTC)
    run = RetentionRun(run_id=str(uuid.uuid4()), dry_run=dry_run, as_of=as_of, classes=[])
    limits = cutoffs(settings, as_of)
    with db.connect(settings) as conn:
        for data_class in DATA_CLASSES:
            cutoff = limits[data_class]
            if data_class not in classes or cutoff is None:
                run.classes.append(ClassResult(data_class, None))
                continue
            if data_class == "model_artifacts":
                rows = _model_artifacts(settings, conn, cutoff, dry_run)
            else:
                rows = _purge(conn, data_class, cutoff)
            if not dry_run:  # one transaction per class; a dry run sees each class's deletes, then undoes them all
                _record(conn, run, data_class, cutoff, rows, actor)
                conn.commit()
            run.classes.append(ClassResult(data_class, cutoff, rows))
            log.info("retention %s (%s, before %s): %s", data_class, "dry run" if dry_run else "applied",
                     cutoff.isoformat(), ", ".join(f"{t} {n}" for t, n in rows.items()) or "nothing to do")
        if dry_run:
            conn.rollback()
            for c in run.classes:
                if c.cutoff is not None:
                    _record(conn, run, c.data_class, c.cutoff, c.rows, actor)
            conn.commit()
    return run


def _record(conn: psycopg.Connection, run: RetentionRun, data_class: str, cutoff: datetime, rows: dict[str, int],
            actor: str) -> None:
    for target, n in rows.items():
        conn.execute(f"insert into {RUNS} (run_id, data_class, target, cutoff, rows, dry_run, actor) "
                     "values (%s, %s, %s, %s, %s, %s, %s)", (run.run_id, data_class, target, cutoff, n, run.dry_run, actor))
