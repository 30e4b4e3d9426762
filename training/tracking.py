"""MLflow bookkeeping shared by the fraud and credit trainings.

Aliases, not stages (MLflow 3): every new version becomes ``challenger``; the very first
version of a registered model also becomes ``champion``, through a recorded bootstrap decision,
so serving has something to load before the gate ever compared two versions.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from riskloop.core.config import PROJECT_ROOT, Settings
from riskloop.models.artifacts import CHALLENGER, CHAMPION

log = logging.getLogger(__name__)



def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of a frame's values and column names: the same training set, the same hash."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def git_commit() -> str | None:
    """The checked-out commit of the repo, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def dataset_params(prefix: str, frame: pd.DataFrame, time_col: str = "event_timestamp") -> dict[str, Any]:
    """Rows and time range of a data set, as run params."""
    return {
        f"{prefix}_rows": len(frame),
        f"{prefix}_min_ts": frame[time_col].min().isoformat() if len(frame) else "",
        f"{prefix}_max_ts": frame[time_col].max().isoformat() if len(frame) else "",
    }


def log_frame(frame: pd.DataFrame, artifact_path: str) -> None:
    """Log a frame as a Parquet artifact at exactly ``artifact_path``."""
    import mlflow

    target = Path(artifact_path)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / target.name
        frame.to_parquet(local, index=False)
        mlflow.log_artifact(str(local), artifact_path=str(target.parent) if target.parent.parts else None)


def register_aliases(settings: Settings, client: Any, name: str, version: str, first: bool,
                     actor: str | None = None) -> list[str]:
    """Point ``challenger`` at ``version``; a first version also becomes ``champion`` through the
    recorded bootstrap (:func:`riskloop.governance.promotion.bootstrap_champion`, decided by ``actor``,
    the principal who trained it), since serving decides only with a version the governance record
    names for its bytes."""
    from riskloop.governance.promotion import bootstrap_champion

    client.set_registered_model_alias(name, CHALLENGER, version)
    aliases = [CHALLENGER]
    if first:
        bootstrap_champion(settings, name, version, actor=actor)
        aliases.append(CHAMPION)
    log.info("%s version %s: aliases %s", name, version, aliases)
    return aliases


def has_versions(client: Any, name: str) -> bool:
    """Whether the registered model exists with at least one version."""
    return bool(client.search_model_versions(f"name = '{name}'", max_results=1))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
