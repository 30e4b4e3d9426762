"""Reviewer approval of model versions: four eyes, bound to the exact bytes that will serve.

An approval or rejection is a row of ``governance.model_approvals`` (append-only in the database:
UPDATE, DELETE and TRUNCATE raise): who, when, which model version, the sha256 of that version's
artifact (:func:`content_hash`) and why. Nobody may approve a version whose MLflow run they
authored (the run's ``user_id``). The promotion gate (:func:`approval_gate`) recomputes the hash
of the challenger it is about to promote and accepts only an approval of *that* hash by someone
other than the author, not followed by a rejection: a model re-uploaded under the same version
after its review is not approved.

Both the CLI (``riskloop review``) and the web page (``serving.review``) call these functions.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.models.registry import download_version, mlflow_client

log = logging.getLogger(__name__)

SCHEMA = "governance"
TABLE = f"{SCHEMA}.model_approvals"
VERDICTS = ("approved", "rejected")

class ReviewError(ValueError):
    """A review that must not be recorded (no reason, unknown version...)."""


class UnknownModel(ReviewError):
    """The registry has no such model or version (an API answers 404, not a server error)."""


# The registry's answers meaning "no such name" (an unusable name, non-ASCII for one, is one too).
_UNKNOWN_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


class SelfApproval(ReviewError):
    """The reviewer authored the version's run: four eyes means someone else approves."""


@dataclass(frozen=True)
class Approval:
    """One recorded verdict."""

    approval_id: str
    decided_at: datetime
    model_name: str
    model_version: str
    content_hash: str
    verdict: str
    reviewer: str
    reason: str
    run_id: str | None
    run_author: str | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decided_at"] = self.decided_at.isoformat()
        return out


@dataclass(frozen=True)
class GateResult:
    """The approval gate's answer for one version, with its evidence."""

    ok: bool
    reason: str
    content_hash: str
    approval_id: str | None = None
    approved_by: str | None = None


def hash_tree(root: Path) -> str:
    """sha256 over every file under ``root``: its relative path and its bytes, in path order, so the
    same artifact hashes the same wherever it was downloaded to."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(hashlib.sha256(chunk).digest())
        digest.update(b"\0")
    return digest.hexdigest()


def content_hash(settings: Settings, name: str, version: str) -> str:
    """sha256 of the registered artifact of ``name`` v``version`` as the registry serves it now."""
    with tempfile.TemporaryDirectory(prefix="riskloop-hash-") as tmp:
        return hash_tree(download_version(settings.tracking_uri, name, version, tmp))


def _version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise UnknownModel(f"{name} v{version} is not a registered model version") from exc


def run_author(client, mv) -> str | None:
    """Who created the version's training run (MLflow's ``user_id``); None without a run."""
    return client.get_run(mv.run_id).info.user_id if mv.run_id else None


def record(settings: Settings, name: str, version: str, verdict: str, reviewer: str | None, reason: str) -> Approval:
    """Record an approval or a rejection of ``name`` v``version`` by ``reviewer``, bound to its hash now."""
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {VERDICTS}")
    reviewer = (reviewer or "").strip()
    reason = (reason or "").strip()
    if not reviewer:
        raise ReviewError("a reviewer identity is required (--reviewer or RISKLOOP_REVIEWER)")
    if not reason:
        raise ReviewError("a reason is required")
    client = mlflow_client(settings.tracking_uri)
    mv = _version(client, name, version)
    author = run_author(client, mv)
    if verdict == "approved" and author is not None and reviewer == author:
        raise SelfApproval(f"{reviewer} authored the run of {name} v{mv.version} and cannot approve it: "
                          "another reviewer must")
    approval = Approval(approval_id=str(uuid.uuid4()), decided_at=datetime.now(UTC), model_name=name,
                        model_version=str(mv.version), content_hash=content_hash(settings, name, str(mv.version)),
                        verdict=verdict, reviewer=reviewer, reason=reason, run_id=mv.run_id, run_author=author)
    with db.connect(settings) as conn:
        conn.execute(
            f"""insert into {TABLE} (approval_id, decided_at, model_name, model_version, content_hash, verdict,
                reviewer, reason, run_id, run_author) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (approval.approval_id, approval.decided_at, name, approval.model_version, approval.content_hash,
             verdict, reviewer, reason, mv.run_id, author))
    try:  # a convenience copy in the registry; the table is the record of authority
        client.set_model_version_tag(name, approval.model_version, "review.last_verdict", verdict)
        client.set_model_version_tag(name, approval.model_version, "review.last_reviewer", reviewer)
    except Exception:  # noqa: BLE001
        log.warning("could not tag %s v%s with the review verdict", name, approval.model_version)
    log.info("review %s v%s: %s by %s (hash %s): %s", name, approval.model_version, verdict, reviewer,
             approval.content_hash[:12], reason)
    return approval


def history(settings: Settings, name: str, version: str | None = None) -> list[Approval]:
    """Recorded verdicts of a model (or one version), oldest first."""
    sql = f"select {', '.join(Approval.__dataclass_fields__)} from {TABLE} where model_name = %s"
    params: list[Any] = [name]
    if version is not None:
        sql += " and model_version = %s"
        params.append(str(version))
    with db.connect(settings) as conn:
        rows = conn.execute(sql + " order by decided_at, approval_id", params).fetchall()
    return [Approval(*(str(v) if k == "approval_id" else v for k, v in zip(Approval.__dataclass_fields__, r)))
            for r in rows]


def approval_gate(settings: Settings, name: str, version: str, *, client=None) -> GateResult:
    """Whether ``name`` v``version`` is approved, as it is now, by someone other than its author."""
    client = client or mlflow_client(settings.tracking_uri)
    mv = _version(client, name, version)
    author = run_author(client, mv)
    current = content_hash(settings, name, str(mv.version))
    reviews = history(settings, name, str(mv.version))
    bound = [a for a in reviews if a.content_hash == current]
    if not bound:
        if reviews:
            older = reviews
            return GateResult(False, f"v{mv.version} was reviewed for content hash {older[-1].content_hash[:12]} "
                                     f"but its artifact now hashes {current[:12]}: review it again", current)
        return GateResult(False, f"v{mv.version} has no reviewer approval (riskloop review approve)", current)
    last = bound[-1]
    if last.verdict == "rejected":
        return GateResult(False, f"v{mv.version} rejected by {last.reviewer} at {last.decided_at:%Y-%m-%d %H:%M}Z: "
                                 f"{last.reason}", current, last.approval_id)
    if author is not None and last.reviewer == author:  # the table refuses this; belt and braces
        return GateResult(False, f"v{mv.version} approved only by its own author {author}", current)
    return GateResult(True, f"approved by {last.reviewer} (not the author {author}) for hash {current[:12]}: "
                            f"{last.reason}", current, last.approval_id, last.reviewer)


# --- what a reviewer looks at ------------------------------------------------------------------

def _alias_map(client, name: str) -> dict[str, str]:
    """The model's aliases; :class:`UnknownModel` for a name the registry does not know (a registry
    that fails otherwise still raises: that is not the caller's mistake)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code in _UNKNOWN_CODES:
            raise UnknownModel(f"no registered model {name!r}") from exc
        raise
    return {alias: str(v) for alias, v in (model.aliases or {}).items()}


def pending(settings: Settings, model_name: str | None = None) -> list[dict[str, Any]]:
    """Challengers that are not the champion, with their review state (approved / rejected / pending)."""
    client = mlflow_client(settings.tracking_uri)
    names = [model_name] if model_name else _all_model_names(client)
    out = []
    for name in names:
        aliases = _alias_map(client, name)
        challenger, champion = aliases.get("challenger"), aliases.get("champion")
        if challenger is None or challenger == champion:
            continue
        mv = client.get_model_version(name, challenger)
        verdicts = history(settings, name, challenger)
        out.append({"model_name": name, "version": challenger, "champion_version": champion,
                    "author": run_author(client, mv), "created_at": _ms(mv.creation_timestamp),
                    "review": verdicts[-1].verdict if verdicts else "pending",
                    "reviewed_by": verdicts[-1].reviewer if verdicts else None})
    return out


def _all_model_names(client) -> list[str]:
    """Every registered model, across result pages."""
    names, token = [], None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        names.extend(m.name for m in page)
        token = page.token
        if not token:
            return names


def _ms(ts: int | None) -> str | None:
    return datetime.fromtimestamp(ts / 1000, UTC).isoformat() if ts else None


def card(settings: Settings, name: str, version: str | None = None) -> dict[str, Any]:
    """Everything a reviewer needs about one version (default: the challenger): model card, metrics and
    their difference to the champion, the latest drift verdict, canary figures, the review history."""
    client = mlflow_client(settings.tracking_uri)
    aliases = _alias_map(client, name)
    version = str(version or aliases.get("challenger") or "")
    if not version:
        raise ReviewError(f"{name} has no challenger; name a version")
    mv = _version(client, name, version)
    run = client.get_run(mv.run_id) if mv.run_id else None
    metrics = dict(run.data.metrics) if run else {}
    champion = aliases.get("champion")
    champ_metrics: dict[str, float] = {}
    if champion and champion != version:
        cmv = client.get_model_version(name, champion)
        champ_metrics = dict(client.get_run(cmv.run_id).data.metrics) if cmv.run_id else {}
    diff = {k: {"version": metrics[k], "champion": champ_metrics[k], "delta": metrics[k] - champ_metrics[k]}
            for k in sorted(metrics) if k in champ_metrics}
    return {
        "model_name": name, "version": version, "aliases": sorted(a for a, v in aliases.items() if v == version),
        "champion_version": champion, "run_id": mv.run_id, "author": run.info.user_id if run else None,
        "created_at": _ms(mv.creation_timestamp), "description": mv.description or "",
        "params": dict(run.data.params) if run else {}, "metrics": metrics, "metrics_vs_champion": diff,
        "content_hash": content_hash(settings, name, version),
        "drift": _latest_drift(settings, name),
        "canary": {k.removeprefix("canary."): v for k, v in (mv.tags or {}).items() if k.startswith("canary.")},
        "last_gate": _latest_gate(settings, name, version),
        "reviews": [a.to_dict() for a in history(settings, name, version)],
    }


def _latest_drift(settings: Settings, name: str) -> dict[str, Any] | None:
    with db.connect(settings) as conn:
        if not conn.execute("select to_regclass('monitoring.drift_reports') is not null").fetchone()[0]:
            return None
        row = conn.execute(
            "select report_id, model_version, verdict, reason, share_drifted, report_path, created_at "
            "from monitoring.drift_reports where model_name = %s order by created_at desc limit 1", (name,)).fetchone()
    if row is None:
        return None
    keys = ("report_id", "model_version", "verdict", "reason", "share_drifted", "report_path", "created_at")
    out = dict(zip(keys, row))
    out["report_id"], out["created_at"] = str(out["report_id"]), out["created_at"].isoformat()
    return out


def _latest_gate(settings: Settings, name: str, version: str) -> dict[str, Any] | None:
    """The last gate decision about this challenger: its metrics on the *same* window as the champion's."""
    with db.connect(settings) as conn:
        if not conn.execute("select to_regclass('governance.promotion_decisions') is not null").fetchone()[0]:
            return None
        row = conn.execute(
            "select decision, reason, decided_at, champion_version, champion_metrics, challenger_metrics "
            "from governance.promotion_decisions where model_name = %s and challenger_version = %s "
            "and decision <> 'no_change' order by decided_at desc limit 1", (name, version)).fetchone()
    if row is None:
        return None
    return {"decision": row[0], "reason": row[1], "decided_at": row[2].isoformat(), "champion_version": row[3],
            "champion_metrics": row[4], "challenger_metrics": row[5]}
