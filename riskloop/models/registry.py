"""The MLflow model registry as riskloop uses it: one client factory, one way to download a
version, one reading of a downloaded artifact, one reading of the run param ``features`` (the
model's input names, in order). Light to import: serving uses it.

Every registry call of every process goes through :func:`mlflow_client` with the configured URI.
MLflow otherwise resolves a ``models:/`` URI (and a client built without URIs) through
process-wide state, which in a process that never set it is a ``mlflow.db`` sqlite file in the
working directory: a model registered on the server is then "not found".

A downloaded artifact is data, never code: :func:`read_booster` reads the ``MLmodel`` file as
YAML, checks it describes a plain XGBoost model, and loads the booster file with
``xgboost.Booster``. Nothing named by the artifact (a class, a ``code/`` folder, a pyfunc loader)
is imported or run, so whoever can write to the registry cannot run code where models are loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import xgboost
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
_PERMANENT = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "PERMISSION_DENIED"})

# What a riskloop model artifact may say about itself (MLmodel ``flavors``): the xgboost flavor of
# an XGBoost classifier or booster, saved in XGBoost's own formats, and MLflow's generic pyfunc
# entry that points back at it. The class name is only checked, never imported.
ALLOWED_FLAVORS = frozenset({"xgboost", "python_function"})
ALLOWED_MODEL_CLASSES = frozenset({"xgboost.sklearn.XGBClassifier", "xgboost.core.Booster"})
ALLOWED_FORMATS = frozenset({"ubj", "json"})
PYFUNC_LOADER = "mlflow.xgboost"


class UnsafeArtifact(ValueError):
    """A model artifact that is not a plain XGBoost booster file: refused, with the reason."""


def mlflow_client(tracking_uri: str) -> "MlflowClient":
    """A client whose registry is the tracking server too (never MLflow's process-wide default)."""
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

    The storage location is asked of the configured registry (:func:`mlflow_client`), then
    downloaded from there: never a ``models:/`` URI, which MLflow resolves through its
    process-wide registry. A download crosses the network to the tracking server's artifact proxy:
    a transient failure (a reset connection, a worker restarting) is retried ``attempts`` times with
    a growing pause, each failure logged, before the last one is raised. A missing version is not
    retried."""
    import mlflow

    client = mlflow_client(tracking_uri)
    for attempt in range(1, attempts + 1):
        try:
            location = client.get_model_version_download_uri(name, str(version))
            return Path(mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(dst), tracking_uri=tracking_uri, registry_uri=tracking_uri))
        except Exception as exc:  # noqa: BLE001 - MLflow raises its own and requests' errors alike
            if attempt == attempts or getattr(exc, "error_code", None) in _PERMANENT:
                raise
            log.warning("downloading %s v%s failed (attempt %d of %d), retrying: %s: %s", name, version, attempt,
                        attempts, type(exc).__name__, exc)
            time.sleep(backoff_s * attempt)
    raise AssertionError("unreachable")


def hash_tree(root: Path) -> str:
    """sha256 over every file under ``root``: its relative path and its bytes, in path order, so the
    same artifact hashes the same wherever it was downloaded to (the content hash that reviews,
    promotion decisions and serving compare)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(hashlib.sha256(chunk).digest())
        digest.update(b"\0")
    return digest.hexdigest()


def booster_file(root: Path) -> Path:
    """The booster file of a downloaded artifact, after checking its ``MLmodel`` describes nothing
    but a plain XGBoost model; :class:`UnsafeArtifact` with the reason otherwise."""
    import yaml

    root = Path(root)
    try:
        spec: Any = yaml.safe_load((root / "MLmodel").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnsafeArtifact(f"no MLmodel file in the artifact ({root.name})") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UnsafeArtifact(f"unreadable MLmodel: {exc}") from exc
    flavors = spec.get("flavors") if isinstance(spec, dict) else None
    if not isinstance(flavors, dict) or "xgboost" not in flavors:
        raise UnsafeArtifact(f"MLmodel has no xgboost flavor (flavors: {sorted(flavors or {})})")
    others = sorted(set(flavors) - ALLOWED_FLAVORS)
    if others:
        raise UnsafeArtifact(f"MLmodel names flavors other than xgboost: {others}")
    if (root / "code").exists():
        raise UnsafeArtifact("the artifact ships a code/ folder: a model is data, its code is never loaded")
    xgb_conf, pyfunc = flavors["xgboost"], flavors.get("python_function") or {}
    if not isinstance(xgb_conf, dict) or not isinstance(pyfunc, dict):
        raise UnsafeArtifact("MLmodel flavors are not mappings")
    for flavor, conf in (("xgboost", xgb_conf), ("python_function", pyfunc)):
        if conf.get("code"):
            raise UnsafeArtifact(f"MLmodel's {flavor} flavor names code ({conf['code']!r})")
    model_class = xgb_conf.get("model_class", "xgboost.core.Booster")
    if model_class not in ALLOWED_MODEL_CLASSES:
        raise UnsafeArtifact(f"MLmodel names model class {model_class!r}, not one of {sorted(ALLOWED_MODEL_CLASSES)}")
    if pyfunc and pyfunc.get("loader_module", PYFUNC_LOADER) != PYFUNC_LOADER:
        raise UnsafeArtifact(f"MLmodel names pyfunc loader {pyfunc.get('loader_module')!r}, not {PYFUNC_LOADER}")
    fmt = xgb_conf.get("model_format", "xgb")
    if fmt not in ALLOWED_FORMATS:
        raise UnsafeArtifact(f"model format {fmt!r} is not one of XGBoost's own {sorted(ALLOWED_FORMATS)}")
    data = PurePosixPath(str(xgb_conf.get("data") or ""))
    if not data.parts or data.is_absolute() or ".." in data.parts or data.suffix != f".{fmt}":
        raise UnsafeArtifact(f"MLmodel's model file {str(data)!r} is not a .{fmt} file inside the artifact")
    path = root / data
    if not path.is_file():
        raise UnsafeArtifact(f"the model file {data} named by MLmodel is missing")
    return path


def read_booster(root: Path) -> "xgboost.Booster":
    """The ``xgboost.Booster`` of a downloaded artifact, read from its booster file alone
    (:func:`booster_file`); :class:`UnsafeArtifact` for anything else."""
    import xgboost as xgb

    path = booster_file(root)
    try:
        return xgb.Booster(model_file=str(path))
    except xgb.core.XGBoostError as exc:
        raise UnsafeArtifact(f"{path.name} is not a readable XGBoost model: {exc}") from exc
