"""Run the dbt project (``dbt_project/``) against the warehouse of :class:`~riskloop.core.config.Settings`.

dbt's profile (``dbt_project/profiles.yml``) reads ``RISKLOOP_DBT_*`` environment variables;
:func:`run_dbt` derives them from Settings so there is one source of configuration, and calls
dbt's programmatic ``dbtRunner`` in-process (no shell, the real result objects back).  dbt's
``target/`` and ``logs/`` go under ``<home>/dbt`` rather than into the repository, so runs from
several checkouts or test sessions never overwrite each other's artifacts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from riskloop.core.config import Settings

log = logging.getLogger(__name__)

_FAILED = {"error", "fail", "runtime error"}


class DbtError(RuntimeError):
    """dbt did not succeed; ``.failures`` lists (node, status, message) of what failed."""

    def __init__(self, message: str, failures: list[tuple[str, str, str]] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


def dbt_env(settings: Settings) -> dict[str, str]:
    """The environment the profile and dbt itself read, derived from Settings. dbt logs in as the
    transform role (riskloop.core.roles: it reads every schema and owns staging, intermediate and
    marts), unless these settings chose a role already."""
    pg = settings.as_role("transform").pg
    artifacts = dbt_artifacts_dir(settings)
    return {
        "RISKLOOP_DBT_HOST": pg.host,
        "RISKLOOP_DBT_PORT": str(pg.port),
        "RISKLOOP_DBT_USER": pg.user,
        "RISKLOOP_DBT_PASSWORD": pg.password,
        "RISKLOOP_DBT_DBNAME": settings.warehouse_db,
        "RISKLOOP_DBT_SCHEMA": "marts",
        "DBT_TARGET_PATH": str(artifacts / "target"),
        "DBT_LOG_PATH": str(artifacts / "logs"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }


def dbt_artifacts_dir(settings: Settings) -> Path:
    """Where dbt writes ``target/`` and ``logs/`` (scanned by ``riskloop audit pan`` too)."""
    return settings.home / "dbt"


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables for the duration of an in-process dbt call, then restore the caller's."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failures(result: Any) -> list[tuple[str, str, str]]:
    out = []
    for r in getattr(result, "results", None) or []:
        status = str(getattr(r, "status", "")).lower()
        if status in _FAILED:
            node = getattr(getattr(r, "node", None), "unique_id", "?")
            out.append((node, status, (getattr(r, "message", "") or "").strip()))
    return out


def run_dbt(settings: Settings, args: Sequence[str] = ("build",), *, vars: Mapping[str, Any] | None = None,
            raise_on_failure: bool = True) -> Any:
    """Invoke ``dbt <args>`` on ``settings.dbt_project_dir``; return dbt's result object.

    ``label_delay_days`` (from Settings) and ``realtime_windows`` (the window spec of
    :mod:`riskloop.core.windows`, which the dbt project deliberately has no copy of) are passed as dbt
    vars unless the caller passes ``--vars`` itself.  Raises :class:`DbtError` naming the failed nodes when dbt does not succeed.
    """
    from dbt.cli.main import dbtRunner

    project = settings.dbt_project_dir
    cli = [*args, "--project-dir", str(project), "--profiles-dir", str(project)]
    if "--vars" not in args:
        from riskloop.core.windows import dbt_var

        merged = {"label_delay_days": settings.label_delay_days, "realtime_windows": dbt_var(), **(vars or {})}
        cli += ["--vars", json.dumps(merged)]
    env = dbt_env(settings)
    log.info("dbt %s (project %s, database %s)", " ".join(args), project, settings.warehouse_db)
    t0 = time.perf_counter()
    with _environ(env):
        res = dbtRunner().invoke(cli)
    seconds = time.perf_counter() - t0
    failures = _failures(res.result)
    if res.success:
        log.info("dbt %s succeeded in %.1fs", " ".join(args), seconds)
        return res.result
    detail = "; ".join(f"{node} [{status}]: {msg[:300]}" for node, status, msg in failures)
    message = f"dbt {' '.join(args)} failed after {seconds:.1f}s: {detail or res.exception}"
    log.error("%s", message)
    if raise_on_failure:
        raise DbtError(message, failures) from res.exception
    return res.result
