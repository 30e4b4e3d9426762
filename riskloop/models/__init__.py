"""Models: the MLflow registry as riskloop reads it, the artifacts training logs, the XGBoost
classifier, the time split with label delay, and the evaluation metrics."""
