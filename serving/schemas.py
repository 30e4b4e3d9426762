"""The wire contract of the scoring API (pydantic v2).

Validation lives here, not in the handler, so that every malformed request is refused with a
field-level 422 *before* anything is scored or logged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, IPvAnyAddress, field_validator

from riskloop.core.storable import StorableModel
from serving.currencies import ISO_4217

Decision = Literal["allow", "review", "step_up", "deny"]
CreditDecision = Literal["approve", "decline", "refer"]
Id = Annotated[str, Field(min_length=1, max_length=128)]


class FraudScoreRequest(StorableModel):
    """One card authorisation to score. ``amount_minor`` is in minor units (cents)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    transaction_id: Id | None = None
    card_token: Id
    # Never logged, stored or echoed: the handler tokenises it (riskloop.core.pan) before anything else,
    # and the decision log keeps only pan_token, card_bin and card_last4.
    pan: str | None = Field(default=None, max_length=32, exclude=True, repr=False,
                            description="The card number, if the channel has it (12-19 digits, spaces or "
                            "dashes allowed, Luhn-valid); replaced by its keyed token, BIN and last four.")
    customer_id: Id
    terminal_id: Id
    # strict: "100" or 10.5 are client bugs, not amounts; upper bound keeps it inside bigint.
    amount_minor: int = Field(gt=0, le=10**12, strict=True)
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217 alphabetic code, upper case.")
    timestamp: AwareDatetime
    device_id: Id | None = Field(default=None, description="Device fingerprint, if the channel has one.")
    ip: IPvAnyAddress | None = Field(default=None, description="Client IP address (v4 or v6), if known.")
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$",
                                description="ISO 3166-1 alpha-2 country of the payment (e.g. of the card-present "
                                "terminal or the IP), for the sanctioned-country rule.")

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
    rules: list[str] = Field(description="Ids of the policy rules that fired, in policy order.")
    degraded: bool
    policy_version: str = Field(description="The decision policy applied, e.g. fraud-v1 (riskloop/decisions/policies/).")


class LoadedModelInfo(BaseModel):
    loaded: bool
    name: str
    alias: str
    version: str | None = None
    run_id: str | None = None
    features: list[str] = []
    loaded_at: datetime | None = None
    error: str | None = None
    source: str | None = Field(default=None, description="'registry', or 'last_known_good' when the registry "
                               "was unreachable at start and the model comes from the local cache.")


class DecisionRecord(BaseModel):
    """A row of ``serving.decision_log`` as the API returns it."""

    decision_id: UUID
    request_id: str
    decided_at: datetime
    model_name: str | None
    model_version: str | None
    model_alias: str | None
    score: float | None
    decision: Decision | CreditDecision
    reasons: list[dict]
    rules: list[str]
    rule_reasons: list[dict] = Field(
        default_factory=list, description="For each rule that fired: id, action and the policy's description of it "
        "with the values it fired on (e.g. the two countries and the speed of an impossible travel).")
    features: dict
    feature_timestamps: dict
    request: dict
    latency_ms: float | None
    degraded: bool
    product: str = "fraud"
    policy_version: str | None = None
    signals: dict = Field(default_factory=dict, description="Stateful rule inputs (e.g. device_known), for replay.")
    serving_mode: str | None = Field(default=None, description="champion (alone), canary or shadow: how the "
                                     "deciding model (model_alias) was chosen.")
    shadow: dict | None = Field(default=None, description="The other model's outcome in shadow mode or a failed "
                                "canary route: alias, version, score, latency_ms, error.")
    persisted: bool = Field(description="False while the row is still queued for the writer.")
    overrides: list["Override"] = Field(default_factory=list, description="Reviewer overrides, oldest first.")
    effective_decision: Decision | CreditDecision | None = Field(
        default=None, description="The latest override's decision, else the logged decision.")


class OverrideRequest(StorableModel):
    """A reviewer's new outcome for a logged decision; the reason is mandatory (it is the audit trail)."""

    model_config = ConfigDict(str_strip_whitespace=True)

    decision: Decision | CreditDecision
    reason: str = Field(min_length=1, max_length=2000)


class Override(BaseModel):
    override_id: UUID
    decision_id: UUID
    overridden_at: datetime
    previous_decision: str
    decision: str
    reason: str
    actor: str = Field(description="role:<key fingerprint> of the reviewer's API key (never the key).")
    request_id: str | None = None


DecisionRecord.model_rebuild()  # it refers to Override, defined after it
