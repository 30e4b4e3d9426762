"""The MLflow model registry as riskloop uses it: one client factory, one reading of the run
param ``features`` (the model's input names, in order). Light to import: serving uses it."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
_PERMANENT = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "PERMISSION_DENIED"})


def mlflow_client(tracking_uri: str) -> "MlflowClient":
    """A client whose registry is the tracking server too.

    MLflow otherwise resolves the registry from process-wide state, which defaults to a local
    sqlite file in the working directory: a model registered on the server would not be found.
    """
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def parse_features_param(raw: str | None) -> list[str]:
    """The run param ``features``: a JSON list or a comma-separated list of names, in model order."""
    if not raw:
        return []
    raw = raw.strip()
    names = json.loads(raw) if raw.startswith("[") else raw.split(",")
    return [str(n).strip() for n in names if str(n).strip()]


def download_version(tracking_uri: str, name: str, version: str, dst: str | Path, *, attempts: int = 3,
                     backoff_s: float = 1.0) -> Path:
    """Download the artifact of ``name`` v``version`` (a version, never an alias: an alias could move
    meanwhile) into ``dst``; the local directory.

    A download crosses the network to the tracking server's artifact proxy: a transient failure (a
    reset connection, a worker restarting) is retried ``attempts`` times with a growing pause, each
    failure logged, before the last one is raised. A missing version is not retried."""
    import mlflow

    for attempt in range(1, attempts + 1):
        try:
            return Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(dst), tracking_uri=tracking_uri,
                registry_uri=tracking_uri))
        except Exception as exc:  # noqa: BLE001 - MLflow raises its own and requests' errors alike
            if attempt == attempts or getattr(exc, "error_code", None) in _PERMANENT:
                raise
            log.warning("downloading %s v%s failed (attempt %d of %d), retrying: %s: %s", name, version, attempt,
                        attempts, type(exc).__name__, exc)
            time.sleep(backoff_s * attempt)
    raise AssertionError("unreachable")
