"""Loading the served model from the MLflow registry.

The model is downloaded once and kept as a raw ``xgboost.Booster``, read from the artifact's
booster file alone (:func:`riskloop.models.registry.read_booster`: a model is data; no class or
code the artifact names is imported). A single-row ``inplace_predict`` and
``pred_contribs(approx_contribs=True)`` on a Booster cost well under a millisecond, whereas going
through ``mlflow.pyfunc`` would add a pandas round trip per request.

Before a loaded model decides, :func:`require_clearance` checks the governance record
(:mod:`riskloop.governance.clearance`): an alias moved outside the promotion gate is refused.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from riskloop.core.config import Settings
from riskloop.models.registry import (
    UnsafeArtifact,
    download_version,
    hash_tree,
    mlflow_client,
    parse_features_param,
    read_booster,
)
from serving.trees import CompiledTrees, compile_booster

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The alias does not resolve, or the model it points at cannot be served."""


class ModelRefused(ModelLoadError):
    """The model was loaded but may not decide: the gate never let it through, or its artifact is
    not plain data. On-call is paged; the model served before stays."""

    def __init__(self, name: str, alias: str, version: str, content_hash: str | None, reason: str) -> None:
        super().__init__(f"{name}@{alias} v{version} refused: {reason}")
        self.name, self.alias, self.version, self.content_hash, self.reason = name, alias, version, content_hash, reason


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
    compiled: CompiledTrees | None = None  # the booster as numpy arrays (serving.trees), when it compiles
    source: str = "registry"  # or "last_known_good": read from the local cache, the registry being down
    content_hash: str | None = None  # sha256 of the artifact's files as downloaded (riskloop.models.registry.hash_tree)

    def predict(self, x: np.ndarray, exact: bool = False) -> tuple[float, np.ndarray]:
        """Probability and per-feature contributions (last column = bias) of one row ``x`` (1, n).

        ``exact=False`` (the fraud hot path): Saabas-style approximate contributions, a fraction
        of TreeSHAP's cost, computed by :mod:`serving.trees` in one pass with the score (no
        XGBoost call, no DMatrix). ``exact=True`` (credit adverse action): exact TreeSHAP values."""
        if not exact and self.compiled is not None:
            return self.compiled.predict(x[0])
        import xgboost as xgb

        score = float(np.asarray(self.booster.inplace_predict(x)).reshape(-1)[0])
        dm = xgb.DMatrix(x, feature_names=list(self.features), missing=np.nan)
        contribs = np.asarray(self.booster.predict(dm, pred_contribs=True, approx_contribs=not exact))[0]
        return score, contribs



def load_model(tracking_uri: str, name: str, alias: str, version: str | None = None) -> LoadedModel:
    """Resolve ``models:/<name>@<alias>`` to a version, download it once and unwrap the Booster.

    The version is pinned *before* downloading, so the version we report is exactly the one we
    serve even if the alias moves during the download. ``version`` skips the alias and loads that
    exact version (replay of a logged decision; ``alias`` is then only a label).
    """
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
    with tempfile.TemporaryDirectory(prefix="riskloop-model-") as tmp:
        local = download_version(tracking_uri, name, version, tmp)
        content_hash = hash_tree(local)  # of the very bytes the booster is read from
        try:
            booster = read_booster(local)
        except UnsafeArtifact as exc:
            raise ModelRefused(name, alias, version, content_hash, f"unsafe artifact: {exc}") from exc
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
                       features=tuple(features), booster=booster, compiled=compile_booster(booster),
                       content_hash=content_hash)


def require_clearance(settings: Settings, model: LoadedModel, *, as_challenger: bool = False) -> None:
    """Raise :class:`ModelRefused` unless the governance record lets ``model`` decide: a promotion
    decision for its version and content hash, or (``as_challenger``: canary or shadow) a running
    canary of its version (:mod:`riskloop.governance.clearance`). A database that does not answer
    refuses too: serving never decides with a model it could not check."""
    import psycopg

    from riskloop.governance import clearance

    try:
        verdict = clearance.check(settings, model.name, model.version, model.content_hash or "",
                                  as_challenger=as_challenger)
    except psycopg.Error as exc:
        raise ModelRefused(model.name, model.alias, model.version, model.content_hash,
                           f"governance record unreadable: {exc}") from exc
    if not verdict.ok:
        raise ModelRefused(model.name, model.alias, model.version, model.content_hash, verdict.reason)
    log.info("%s v%s (@%s) cleared to decide: %s", model.name, model.version, model.alias, verdict.reason)


# --- last-known-good: the registry down at start must not mean "no model" ------------------------

def registry_reachable(tracking_uri: str, timeout_s: float = 2.0) -> bool:
    """Does the tracking server answer ``/health``? Asked before loading, because MLflow's own
    client retries a refused connection with backoff for minutes before giving up."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True  # a local store: nothing to be unreachable
    import httpx

    # A plain-http server needs no certificates: without verify=False httpx loads the CA bundle on
    # every call (from this poll, holding the GIL the serving loop needs).
    https = tracking_uri.startswith("https://")
    try:
        return httpx.get(tracking_uri.rstrip("/") + "/health", timeout=timeout_s,
                         verify=https).status_code == 200
    except httpx.HTTPError:
        return False


def _cache_file(cache_dir: Path, name: str, alias: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{name}@{alias}")
    return cache_dir / f"{safe}.json"


def save_last_known_good(model: LoadedModel, cache_dir: Path) -> None:
    """Keep the model just loaded from the registry on local disk, as one file replaced atomically
    (metadata and booster together, so a crash mid-write never pairs one version's name with
    another's trees). Failures are logged: serving goes on without a fresh cache."""
    import xgboost as xgb

    assert isinstance(model.booster, xgb.Booster)
    doc = {"name": model.name, "alias": model.alias, "version": model.version, "run_id": model.run_id,
           "features": list(model.features), "loaded_at": model.loaded_at.isoformat(),
           "content_hash": model.content_hash,
           "booster_ubj_b64": base64.b64encode(bytes(model.booster.save_raw("ubj"))).decode("ascii")}
    path = _cache_file(cache_dir, model.name, model.alias)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.error("could not save the last-known-good model to %s: %s", path, exc)
        return
    log.info("saved %s v%s as the last-known-good model (%s)", model.name, model.version, path)


def alias_version(tracking_uri: str, name: str, alias: str) -> str:
    """The version ``name@alias`` points at now (one registry call; the registry must answer)."""
    if not registry_reachable(tracking_uri):
        raise ModelLoadError(f"model registry {tracking_uri} unreachable")
    return str(mlflow_client(tracking_uri).get_model_version_by_alias(name, alias).version)


def load_for_serving(tracking_uri: str, name: str, alias: str, cache_dir: Path, *, at_start: bool) -> LoadedModel:
    """``name@alias`` from the registry; at start only, from the last-known-good cache when the
    registry does not answer (a reload never falls back: the model being served stays). The
    caller checks it (:func:`require_clearance`; a cached model keeps the content hash it was
    cleared for) and saves a registry model with :func:`save_last_known_good` once it has."""
    if registry_reachable(tracking_uri):  # asked first: MLflow retries a refused connection for minutes
        return load_model(tracking_uri, name, alias)
    if not at_start:
        raise ModelLoadError(f"model registry {tracking_uri} unreachable")
    log.error("model registry %s unreachable at start: looking for a last-known-good %s@%s", tracking_uri,
              name, alias)
    return load_last_known_good(cache_dir, name, alias)


def load_last_known_good(cache_dir: Path, name: str, alias: str) -> LoadedModel:
    """The model last loaded from the registry for ``name@alias``; ModelLoadError if there is none."""
    import xgboost as xgb

    path = _cache_file(cache_dir, name, alias)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        booster = xgb.Booster(model_file=bytearray(base64.b64decode(doc["booster_ubj_b64"])))
    except FileNotFoundError:
        raise ModelLoadError(f"no last-known-good model for {name}@{alias} in {cache_dir}") from None
    except (OSError, ValueError, KeyError, xgb.core.XGBoostError) as exc:
        raise ModelLoadError(f"unreadable last-known-good model {path}: {exc}") from exc
    booster.set_param({"nthread": 1})
    features = tuple(doc["features"])
    if booster.num_features() != len(features):
        raise ModelLoadError(f"last-known-good model {path}: {booster.num_features()} inputs, "
                             f"{len(features)} feature names")
    model = LoadedModel(name=doc["name"], alias=doc["alias"], version=str(doc["version"]), run_id=doc["run_id"],
                        features=features, booster=booster, compiled=compile_booster(booster),
                        source="last_known_good", content_hash=doc.get("content_hash"))
    log.warning("serving the last-known-good model %s v%s (loaded from the registry at %s)",
                model.name, model.version, doc["loaded_at"])
    return model

