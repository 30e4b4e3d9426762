"""Serving knobs: decision thresholds, rules and the decision-log writer.

Kept apart from :class:`riskloop.config.Settings` (which says *where* things are) because these
say *how* the service decides; they are still plain ``RISKLOOP_SERVING_*`` environment variables,
so an operator can tighten a threshold without a code change.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """How the fraud endpoint turns a score into a decision, and how it logs it."""

    model_config = SettingsConfigDict(env_prefix="RISKLOOP_SERVING_", extra="ignore")

    model_alias: str = Field(default="champion", description="Registry alias served (champion or challenger).")
    feature_service: str = Field(default="fraud_model_v1", description="Feast feature service of the fraud model.")
    review_threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="score >= this: review.")
    deny_threshold: float = Field(default=0.9, ge=0.0, le=1.0, description="score >= this: deny.")
    hard_amount_limit_minor: int = Field(
        default=1_000_000, gt=0, description="Rule HARD_AMOUNT_LIMIT: above this amount (minor units) always deny.")
    degraded_review_limit_minor: int = Field(
        default=50_000, gt=0,
        description="Rules-only mode (no features or no model): above this amount review instead of allow.")
    feature_store_retry_s: float = Field(
        default=5.0, ge=0.0, description="After a feature-store failure, rebuild it at most this often.")
    max_reasons: int = Field(default=4, ge=0, le=4)
    log_queue_size: int = Field(default=10_000, gt=0, description="Decisions waiting for the writer, at most.")
    log_batch_size: int = Field(default=500, gt=0, description="Rows per INSERT batch.")
    log_enqueue_timeout_s: float = Field(
        default=1.0, ge=0.0, description="How long a request waits for room in a full queue before a 503.")
    log_shutdown_timeout_s: float = Field(
        default=30.0, gt=0.0, description="On shutdown, how long to keep retrying the database before spilling "
        "unwritten decisions to <home>/run/decision_log_spill.jsonl.")
    admin_token: str | None = Field(
        default=None, description="If set, POST /v1/admin/* needs the header 'Authorization: Bearer <token>'.")

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> "ServingSettings":
        if self.review_threshold > self.deny_threshold:
            raise ValueError("review_threshold must be <= deny_threshold")
        return self
