"""The names of what a training run logs and the registry aliases it sets: written by ``training``,
read back by monitoring (the drift reference, the test predictions) and governance."""

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
REFERENCE_ARTIFACT = "reference/features.parquet"
PREDICTIONS_ARTIFACT = "evaluation/test_predictions.parquet"
# A training run's tag per schema it read: ``riskloop.contracts.<schema>`` = ``passed <run_at>`` |
# ``failed <run_at>``, the latest data-contract run of that schema (the promotion gate reads them).
CONTRACT_TAG_PREFIX = "riskloop.contracts."
