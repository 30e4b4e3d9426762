"""The wire contract of the scoring API (pydantic v2).

Validation lives here, not in the handler, so that every malformed request is refused with a
field-level 422 *before* anything is scored or logged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from serving.currencies import ISO_4217

Decision = Literal["allow", "review", "deny"]
Id = Annotated[str, Field(min_length=1, max_length=128)]


class FraudScoreRequest(BaseModel):
    """One card authorisation to score. ``amount_minor`` is in minor units (cents)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    transaction_id: Id | None = None
    card_token: Id
    customer_id: Id
    terminal_id: Id
    # strict: "100" or 10.5 are client bugs, not amounts; upper bound keeps it inside bigint.
    amount_minor: int = Field(gt=0, le=10**12, strict=True)
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217 alphabetic code, upper case.")
    timestamp: AwareDatetime

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        if value not in ISO_4217:
            raise ValueError(f"unknown ISO 4217 currency code {value!r}")
        return value


class ModelInfo(BaseModel):
    name: str
    version: str | None
    alias: str


class Reason(BaseModel):
    """A feature that pushed the score up, with its contribution in log-odds (approximate SHAP)."""

    code: str
    feature: str
    value: float | None
    contribution: float


class FraudScoreResponse(BaseModel):
    decision_id: UUID
    decision: Decision
    score: float | None = Field(description="Fraud probability; null when decided by rules only (degraded).")
    model: ModelInfo
    reasons: list[Reason] = Field(max_length=4)
    rules: list[str]
    degraded: bool


class LoadedModelInfo(BaseModel):
    loaded: bool
    name: str
    alias: str
    version: str | None = None
    run_id: str | None = None
    features: list[str] = []
    loaded_at: datetime | None = None
    error: str | None = None


class DecisionRecord(BaseModel):
    """A row of ``serving.decision_log`` as the API returns it."""

    decision_id: UUID
    request_id: str
    decided_at: datetime
    model_name: str | None
    model_version: str | None
    model_alias: str | None
    score: float | None
    decision: Decision
    reasons: list[dict]
    rules: list[str]
    features: dict
    feature_timestamps: dict
    request: dict
    latency_ms: float | None
    degraded: bool
    persisted: bool = Field(description="False while the row is still queued for the writer.")
