"""The MLflow model registry as riskloop uses it: one client factory, one reading of the run
param ``features`` (the model's input names, in order). Light to import: serving uses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient


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


def download_version(tracking_uri: str, name: str, version: str, dst: str | Path) -> Path:
    """Download the artifact of ``name`` v``version`` (a version, never an alias: an alias could move
    meanwhile) into ``dst``; the local directory."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(dst), tracking_uri=tracking_uri,
        registry_uri=tracking_uri))
