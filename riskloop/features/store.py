"""The one way riskloop reaches its Feast feature store.

``feature_repo/feature_store.yaml`` holds no connection values, only ``${RISKLOOP_FEAST_*}``
placeholders (Feast expands environment variables in that file). :func:`feature_store` derives
those variables from :class:`~riskloop.core.config.Settings`, so the CLI, Airflow tasks, training
and serving all open the same registry, offline store (the warehouse) and online store
(``riskloop_feast``) without a second copy of the configuration.

Feast is imported inside the functions: it takes seconds to import and most riskloop commands
never need it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from riskloop.core.config import Settings

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_contents import RepoContents

log = logging.getLogger(__name__)

PROJECT = "riskloop"
FRAUD_SERVICE = "fraud_model_v1"
CREDIT_SERVICE = "credit_model_v1"
DEFINITIONS_FILE = "definitions.py"


def feast_env(settings: Settings) -> dict[str, str]:
    """The environment ``feature_store.yaml`` expects, derived from the settings.

    The password is inserted into a single-quoted YAML scalar, hence the doubled quotes.
    """
    pg = settings.pg
    return {
        "RISKLOOP_FEAST_REGISTRY_URL": pg.url(settings.feast_db, driver="psycopg"),
        "RISKLOOP_FEAST_PG_HOST": pg.host,
        "RISKLOOP_FEAST_PG_PORT": str(pg.port),
        "RISKLOOP_FEAST_PG_USER": pg.user,
        "RISKLOOP_FEAST_PG_PASSWORD": pg.password.replace("'", "''"),
        "RISKLOOP_FEAST_OFFLINE_DB": settings.warehouse_db,
        "RISKLOOP_FEAST_ONLINE_DB": settings.feast_db,
    }


def feature_store(settings: Settings) -> "FeatureStore":
    """A FeatureStore on riskloop's repo, connected as the settings say.

    The variables are exported to this process's environment (rather than passed as a
    RepoConfig) so that anything Feast spawns, and any ``feast`` CLI call made from here,
    resolves the same ``feature_store.yaml`` the same way.
    """
    os.environ.update(feast_env(settings))
    from feast import FeatureStore

    return FeatureStore(repo_path=str(settings.feature_repo))


def _load_definitions(repo: Path, project: str) -> "RepoContents":
    """Collect the Feast objects of ``definitions.py`` like ``feast apply`` does.

    ``feast.repo_operations.apply_total`` would ``chdir`` into the repo and import it as a
    top-level module; loading the file by path keeps the process's cwd and sys.path untouched.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource
    from feast.feature_view import DUMMY_ENTITY
    from feast.on_demand_feature_view import OnDemandFeatureView
    from feast.project import Project
    from feast.repo_contents import RepoContents

    path = repo / DEFINITIONS_FILE
    spec = importlib.util.spec_from_file_location("_riskloop_feature_repo_definitions", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    objects = []
    for name in sorted(vars(module)):
        value = getattr(module, name)
        if not name.startswith("_"):  # a tuple of objects (views built in a loop) counts as its items
            objects.extend(value if isinstance(value, tuple) else [value])
    feature_views = [o for o in objects if isinstance(o, FeatureView)]
    sources: list[DataSource] = [o for o in objects if isinstance(o, DataSource)]
    for fv in feature_views:
        for src in (fv.batch_source, fv.stream_source):
            if src is not None and not any(src is s for s in sources):
                sources.append(src)
    return RepoContents(
        projects=[Project(name=project)],
        data_sources=sources,
        feature_views=feature_views,
        on_demand_feature_views=[o for o in objects if isinstance(o, OnDemandFeatureView)],
        stream_feature_views=[],
        label_views=[],
        entities=[o for o in objects if isinstance(o, Entity)] + [DUMMY_ENTITY],
        feature_services=[o for o in objects if isinstance(o, FeatureService)],
        permissions=[],
    )


def apply(settings: Settings) -> None:
    """Register ``feature_repo/definitions.py`` and create the online tables (``feast apply``).

    Idempotent: unchanged objects are left alone, objects removed from the file are deleted
    from the registry, as with the CLI. The mart tables must exist (Feast reads their columns).
    """
    from feast.repo_operations import apply_total_with_repo_instance

    settings = settings.as_role("ingest")  # Feast's tables are ingest's: it alone creates and writes them
    started = time.perf_counter()
    store = feature_store(settings)
    repo = _load_definitions(settings.feature_repo, store.config.project)
    apply_total_with_repo_instance(store, store.config.project, store.registry, repo,
                                   skip_source_validation=False)
    guard_newer_wins(settings, store)
    log.info("feast apply: %d feature views, %d services in %.1fs", len(repo.feature_views),
             len(repo.feature_services), time.perf_counter() - started)


NEWER_WINS = "riskloop_online_newer_wins"  # the trigger and its function, in the online database


def _push_fed(store: "FeatureStore") -> list:
    from feast.data_source import PushSource

    return [fv for fv in store.list_feature_views() if fv.online and isinstance(fv.stream_source, PushSource)]


def guard_newer_wins(settings: Settings, store: "FeatureStore") -> list[str]:
    """Make the online rows of the stream-fed views keep the newest event time, whoever writes.

    Two writers fill these views: the stream (``riskloop stream``: each key as of its latest live
    payment) and :func:`materialize` (each key's latest mart row, which also holds the payments
    known only from the day's files). Feast's online write overwrites unconditionally, so a batch
    built before the latest live events would put older windows back. A row trigger on each table
    drops an update whose ``event_ts`` is older than the stored one; the database enforces it, so it
    holds for any writer (Feast's push and materialize, a direct writer) and any interleaving.
    Idempotent (``create or replace``). Returns the guarded tables.
    """
    import psycopg
    from feast.infra.online_stores.helpers import compute_table_id

    from riskloop.core.db import quote_ident

    versioning = bool(getattr(store.config.registry, "enable_online_feature_view_versioning", False))
    tables = [compute_table_id(store.config.project, fv, versioning) for fv in _push_fed(store)]
    if not tables:
        return []
    statements = [f"""create or replace function {NEWER_WINS}() returns trigger language plpgsql as $$
begin
    return null;  -- the stored row is newer: keep it
end $$"""]
    statements += [f"create or replace trigger {NEWER_WINS} before update on {quote_ident(t)} for each row "
                   f"when (new.event_ts < old.event_ts) execute function {NEWER_WINS}()" for t in tables]
    with psycopg.connect(settings.pg.url(settings.feast_db, driver=""), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]
    return tables


def materialize(settings: Settings, end: datetime | None = None, *, start: datetime | None = None,
                views: Sequence[str] | None = None) -> None:
    """Load feature rows newer than the last materialization, up to ``end``, into the online store.

    The stream-fed views are loaded too, from their marts (payments known only from files reach
    the online store this way), under :func:`guard_newer_wins`: a key the stream has already
    pushed further keeps the stream's row.

    Incremental: Feast keeps each view's materialized interval in the registry; a view's first
    run starts at ``end - ttl`` (Feast's own default, ``now - ttl``, is empty for past data).
    With ``start``: the whole range ``[start, end]`` whatever was materialized before (a reload,
    e.g. after the marts were rebuilt, or a registry shared with another run that went further).
    ``views``: only these feature views (default: every online view).

    The rows of erased customers and cards are never written (``riskloop.features.suppression``):
    their payments stay in the marts until retention, their features do not come back online.
    """
    from riskloop.features.feast_offline import materialization_filter
    from riskloop.features.suppression import ErasedKeys, materialize_filter

    end = end or datetime.now(timezone.utc)
    if end.tzinfo is None:
        raise ValueError("materialize needs a timezone-aware end")
    if start is not None and start.tzinfo is None:
        raise ValueError("materialize needs a timezone-aware start")
    settings = settings.as_role("ingest")
    started = time.perf_counter()
    erased = ErasedKeys.load(settings)
    store = feature_store(settings)
    guard_newer_wins(settings, store)  # a deployment applied before the guard existed gets it here
    names = None if views is None else set(views)
    online = [fv for fv in store.list_feature_views() if fv.online and (names is None or fv.name in names)]
    with materialization_filter(materialize_filter(erased)):
        if start is not None:
            store.materialize(start_date=start, end_date=end, feature_views=[fv.name for fv in online])
            log.info("feast materialize %s .. %s in %.1fs", start.isoformat(), end.isoformat(),
                     time.perf_counter() - started)
            return
        for fv in online:
            if fv.most_recent_end_time is None and fv.ttl:
                # Feast would start a first incremental run at now() - ttl, which loads nothing
                # for a replayed or simulated past; start at end - ttl instead.
                store.materialize(start_date=end - fv.ttl, end_date=end, feature_views=[fv.name])
        if online:
            store.materialize_incremental(end_date=end, feature_views=[fv.name for fv in online])
    log.info("feast materialize-incremental to %s in %.1fs", end.isoformat(), time.perf_counter() - started)


def on_demand_view_names(store: "FeatureStore") -> frozenset[str]:
    """The repo's on-demand feature views: computed at read time, no online table to read."""
    return frozenset(v.name for v in store.list_on_demand_feature_views())


def _main(argv: list[str]) -> int:
    """``python -m riskloop.features.store env``: shell exports for running the ``feast`` CLI by hand."""
    import shlex

    from riskloop.core.config import get_settings

    if argv[1:] != ["env"]:
        sys.stderr.write("usage: python -m riskloop.features.store env\n")
        return 2
    for key, value in feast_env(get_settings()).items():
        sys.stdout.write(f"export {key}={shlex.quote(value)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv))
