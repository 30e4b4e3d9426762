"""Loading the served model from the MLflow registry.

The model is downloaded once and kept as a raw ``xgboost.Booster``: a single-row
``inplace_predict`` and ``pred_contribs(approx_contribs=True)`` on a Booster cost well under a
millisecond, whereas going through ``mlflow.pyfunc`` would add a pandas round trip per request.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from riskloop.registry import mlflow_client, parse_features_param

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The alias does not resolve, or the model it points at cannot be served."""


@dataclass(frozen=True)
class LoadedModel:
    """An immutable snapshot of one model version: a reload swaps the whole object atomically."""

    name: str
    alias: str
    version: str
    run_id: str | None
    features: tuple[str, ...]
    booster: object  # xgboost.Booster (typed loosely to keep xgboost out of this module's import)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def predict(self, x: np.ndarray, exact: bool = False) -> tuple[float, np.ndarray]:
        """Probability and per-feature contributions (last column = bias) of one row ``x`` (1, n).

        ``exact=False`` (the fraud hot path): Saabas-style approximate contributions, a fraction
        of TreeSHAP's cost. ``exact=True`` (credit adverse action): exact TreeSHAP values."""
        import xgboost as xgb

        score = float(np.asarray(self.booster.inplace_predict(x)).reshape(-1)[0])
        dm = xgb.DMatrix(x, feature_names=list(self.features), missing=np.nan)
        contribs = np.asarray(self.booster.predict(dm, pred_contribs=True, approx_contribs=not exact))[0]
        return score, contribs




def _as_booster(obj: object):
    import xgboost as xgb

    if isinstance(obj, xgb.Booster):
        return obj
    if hasattr(obj, "get_booster"):
        return obj.get_booster()
    raise ModelLoadError(f"expected an XGBoost model, got {type(obj).__name__}")


def load_model(tracking_uri: str, name: str, alias: str, version: str | None = None) -> LoadedModel:
    """Resolve ``models:/<name>@<alias>`` to a version, download it once and unwrap the Booster.

    The version is pinned *before* downloading, so the version we report is exactly the one we
    serve even if the alias moves during the download. ``version`` skips the alias and loads that
    exact version (replay of a logged decision; ``alias`` is then only a label).
    """
    import mlflow
    import mlflow.xgboost
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    try:
        mv = (client.get_model_version(name, version) if version is not None
              else client.get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        where = f"models:/{name}/{version}" if version is not None else f"models:/{name}@{alias}"
        raise ModelLoadError(f"{where} does not resolve: {exc}") from exc
    version = str(mv.version)
    run_features: list[str] = []
    if mv.run_id:
        try:
            run_features = parse_features_param(client.get_run(mv.run_id).data.params.get("features"))
        except MlflowException:
            log.warning("run %s of %s v%s is not readable; falling back to the booster's names",
                        mv.run_id, name, version)
    # Resolve the storage location through *our* client: a ``models:/`` URI is resolved by MLflow
    # with the process-global registry URI (a sqlite file in the cwd unless set globally).
    location = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="riskloop-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=tracking_uri)
        booster = _as_booster(mlflow.xgboost.load_model(local))
    booster_features = list(booster.feature_names or [])
    features = run_features or booster_features
    if not features:
        raise ModelLoadError(f"{name} v{version}: no 'features' run param and no feature names in the booster")
    if booster_features and booster_features != features:
        raise ModelLoadError(f"{name} v{version}: run param features {features} differ from the booster's "
                             f"{booster_features}; refusing to guess the input order")
    if booster.num_features() != len(features):
        raise ModelLoadError(f"{name} v{version}: booster expects {booster.num_features()} inputs, "
                             f"'features' lists {len(features)}")
    # One row per request: threads inside XGBoost only add overhead and fight the web workers.
    booster.set_param({"nthread": 1})
    log.info("loaded %s v%s (@%s, run %s) with %d features", name, version, alias, mv.run_id, len(features))
    return LoadedModel(name=name, alias=alias, version=version, run_id=mv.run_id,
                       features=tuple(features), booster=booster)
