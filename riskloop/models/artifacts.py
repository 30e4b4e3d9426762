"""The names of what a training run logs and the registry aliases it sets: written by ``training``,
read back by monitoring (the drift reference, the test predictions) and governance."""

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
REFERENCE_ARTIFACT = "reference/features.parquet"
PREDICTIONS_ARTIFACT = "evaluation/test_predictions.parquet"
