"""RISKLOOP_ARTIFACT_ROOT=s3://... works end to end, with nothing mocked in this process.

A real S3-compatible HTTP server (``moto_server``, a separate process on loopback) holds a bucket;
a separate riskloop stack (its own Postgres and ``mlflow server --artifacts-destination s3://...``)
inherits the AWS/MLFLOW_S3_ENDPOINT_URL environment. The MLflow client here only talks HTTP to the
tracking server (proxied artifacts); the tracking server writes to the bucket with boto3. We then
read the bucket directly with boto3 and read the artifacts back through MLflow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import boto3
import mlflow
import numpy as np
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from riskloop.core.config import Settings
from riskloop.ops import stack
from tests.conftest import free_port, start_moto, stop_process

BUCKET = "riskloop-artifacts"
PREFIX = "mlflow"


def test_mlflow_server_writes_artifacts_and_models_to_s3(monkeypatch) -> None:
    home = Path(tempfile.mkdtemp(prefix="riskloop-s3-"))
    home.chmod(0o755)
    s3_port = free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    moto = start_moto(s3_port, home / "moto.log")
    settings: Settings | None = None
    before_uri = mlflow.get_tracking_uri()
    try:
        for var in ("RISKLOOP_DATABASE_URL", "RISKLOOP_MLFLOW_TRACKING_URI", "AWS_PROFILE",
                    "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_URI"):
            monkeypatch.delenv(var, raising=False)
        env = {
            "RISKLOOP_HOME": str(home),
            "RISKLOOP_PG_PORT": str(free_port()),
            "RISKLOOP_MLFLOW_PORT": str(free_port()),
            "RISKLOOP_ARTIFACT_ROOT": f"s3://{BUCKET}/{PREFIX}",
            "RISKLOOP_STREAM_SERVICE": "false",  # an MLflow-only stack
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)

        settings = Settings()
        assert settings.artifacts == f"s3://{BUCKET}/{PREFIX}"
        info = stack.up(settings)
        assert info["mlflow"] == "up" and info["artifact_root"] == settings.artifacts

        mlflow.set_tracking_uri(settings.tracking_uri)
        client = MlflowClient(settings.tracking_uri)
        exp_id = client.create_experiment("riskloop-s3")
        # Proxied artifacts: the client sees mlflow-artifacts:, never the bucket.
        assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")

        payload = os.urandom(64 * 1024) + b"riskloop\n"
        X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
        y = np.array([0, 1, 0, 1])
        clf = LogisticRegression().fit(X, y)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "payload.bin"
            src.write_bytes(payload)
            with mlflow.start_run(experiment_id=exp_id) as run:
                mlflow.log_artifact(str(src), artifact_path="data")
                model_info = mlflow.sklearn.log_model(clf, name="model",
                                                      pip_requirements=["scikit-learn"])
        run_id = run.info.run_id

        # The bucket has both the run artifact and the logged model, under the prefix.
        keys: set[str] = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys |= {o["Key"] for o in page.get("Contents", [])}
        assert keys and all(k.startswith(f"{PREFIX}/") for k in keys), sorted(keys)
        artifact_key = f"{PREFIX}/{exp_id}/{run_id}/artifacts/data/payload.bin"
        assert artifact_key in keys, sorted(keys)
        model_dir = f"{PREFIX}/{exp_id}/models/{model_info.model_id}/artifacts"
        model_files = {k.removeprefix(model_dir + "/") for k in keys if k.startswith(model_dir + "/")}
        # MLflow 3 serialises sklearn with skops by default (model.pkl with pickle/cloudpickle).
        assert "MLmodel" in model_files and model_files & {"model.skops", "model.pkl"}, sorted(keys)
        assert s3.get_object(Bucket=BUCKET, Key=artifact_key)["Body"].read() == payload

        # Nothing fell back to the local default artifact directory.
        assert not (home / "mlartifacts").exists()

        # Reading back through MLflow (server proxies from S3) returns the same bytes and model.
        with tempfile.TemporaryDirectory() as dst:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="data/payload.bin",
                                                        dst_path=dst, tracking_uri=settings.tracking_uri)
            assert Path(local).read_bytes() == payload
        loaded = mlflow.sklearn.load_model(model_info.model_uri)
        np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    finally:
        mlflow.set_tracking_uri(before_uri)
        try:
            if settings is not None:
                stack.down(settings)
        finally:
            stop_process(moto)
            shutil.rmtree(home, ignore_errors=True)
