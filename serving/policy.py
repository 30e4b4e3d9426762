"""Decision policy as versioned configuration (``serving/policies/<product>-v<N>.yaml``).

Why a file and not environment variables: a regulator's "why was this allowed?" must be answered
with the exact thresholds and rules in force at the time. Each decision-log row records the
policy id (``fraud-v1``); a changed policy is a new file with a new version, so
``riskloop decisions replay`` can reload the very policy a decision was made under
(:func:`policy_by_id`). A policy file is validated completely at start-up: a typo in a rule
fails the deploy, not a payment.

Evaluation is pure (no I/O): thresholds map the model score to a base decision, every rule
whose condition holds is recorded as fired, and the most severe outcome wins. Stateful inputs a
rule needs beyond the request and the feature vector (is this device known?) come in as
``signals``, which the log stores so that a replay sees what the live decision saw.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)

POLICY_DIR = Path(__file__).resolve().parent / "policies"

# Outcomes of each product in increasing severity: the most severe applicable one is the decision.
SEVERITY: dict[str, tuple[str, ...]] = {
    "fraud": ("allow", "step_up", "review", "deny"),
    "credit": ("approve", "refer", "decline"),
}

RuleKind = Literal["amount_above", "country_in", "card_in", "terminal_in", "feature_above", "feature_equals",
                   "new_device_amount_above"]


class PolicyError(ValueError):
    """A policy file is invalid or a requested policy version does not exist."""


class Rule(BaseModel):
    """One hard rule. Which fields it needs depends on ``kind`` (checked at load)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    kind: RuleKind
    action: str
    when: Literal["always", "scored", "degraded"] = "always"
    amount_minor: int | None = Field(default=None, gt=0)
    countries: frozenset[str] = frozenset()
    card_tokens: frozenset[str] = frozenset()
    terminal_ids: frozenset[str] = frozenset()
    feature: str | None = None
    max: float | None = None
    value: float | None = None

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "Rule":
        need = {"amount_above": ("amount_minor",), "new_device_amount_above": ("amount_minor",),
                "country_in": ("countries",), "card_in": ("card_tokens",), "terminal_in": ("terminal_ids",),
                "feature_above": ("feature", "max"), "feature_equals": ("feature", "value")}[self.kind]
        missing = [f for f in need if getattr(self, f) in (None, frozenset())]
        if missing:
            raise ValueError(f"rule {self.id} ({self.kind}) needs {missing}")
        return self

    def fires(self, request: Mapping[str, Any], features: Mapping[str, Any], signals: Mapping[str, Any],
              degraded: bool) -> bool:
        if (self.when == "degraded" and not degraded) or (self.when == "scored" and degraded):
            return False
        amount = request.get("amount_minor")
        match self.kind:
            case "amount_above":
                return amount is not None and amount > self.amount_minor
            case "country_in":
                return request.get("country") in self.countries
            case "card_in":
                return request.get("card_token") in self.card_tokens
            case "terminal_in":
                return request.get("terminal_id") in self.terminal_ids
            case "feature_above":
                v = features.get(self.feature)
                return v is not None and v > self.max  # a missing feature cannot prove a breach
            case "feature_equals":
                v = features.get(self.feature)
                return v is not None and v == self.value
            case "new_device_amount_above":
                return (request.get("device_id") is not None and signals.get("device_known") is False
                        and amount is not None and amount > self.amount_minor)
        return False  # pragma: no cover - kind is a closed Literal


class Policy(BaseModel):
    """A product's thresholds and rules; ``id`` (e.g. ``fraud-v1``) is what the log records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["fraud", "credit"]
    version: int = Field(ge=1)
    description: str = ""
    thresholds: dict[str, float]
    rules: tuple[Rule, ...] = ()
    degraded_decision: str | None = Field(
        default=None, description="Base decision without a model score (default: the least severe).")
    digest: str = Field(default="", description="sha256 of the file, to spot an edited-in-place version.")

    @property
    def id(self) -> str:
        return f"{self.policy}-v{self.version}"

    @property
    def outcomes(self) -> tuple[str, ...]:
        return SEVERITY[self.policy]

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The features the rules read, in policy order: serving fetches them with the model's
        inputs (a velocity rule may read a window the model does not use) and logs them."""
        return tuple(dict.fromkeys(r.feature for r in self.rules if r.feature is not None))

    @model_validator(mode="after")
    def _consistent(self) -> "Policy":
        outcomes = SEVERITY[self.policy]
        bad = [d for d in [*self.thresholds, *(r.action for r in self.rules), self.degraded_decision]
               if d is not None and d not in outcomes]
        if bad:
            raise ValueError(f"{self.policy} decisions are {list(outcomes)}, not {bad}")
        if any(not 0.0 <= t <= 1.0 for t in self.thresholds.values()):
            raise ValueError("thresholds are probabilities in [0, 1]")
        ordered = [self.thresholds[d] for d in outcomes if d in self.thresholds]
        if ordered != sorted(ordered):
            raise ValueError(f"thresholds must not decrease with severity ({list(outcomes)})")
        ids = [r.id for r in self.rules]
        if len(ids) != len(set(ids)):
            raise ValueError("rule ids must be unique")
        return self

    def decide(self, score: float | None, request: Mapping[str, Any], features: Mapping[str, Any],
               signals: Mapping[str, Any] | None = None) -> tuple[str, list[str]]:
        """(decision, ids of the rules that fired, in policy order). ``score`` None = degraded."""
        degraded = score is None
        rank = {d: i for i, d in enumerate(self.outcomes)}
        decision = self.outcomes[0]
        if degraded:
            decision = self.degraded_decision or decision
        else:
            for d, t in self.thresholds.items():
                if score >= t and rank[d] > rank[decision]:
                    decision = d
        fired: list[str] = []
        for rule in self.rules:
            if rule.fires(request, features, signals or {}, degraded):
                fired.append(rule.id)
                if rank[rule.action] > rank[decision]:
                    decision = rule.action
        return decision, fired


def load_policy(path: Path | str) -> Policy:
    """Parse and validate a policy file; raises :class:`PolicyError` with the file name."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = yaml.safe_load(raw)
        policy = Policy.model_validate({**data, "digest": hashlib.sha256(raw).hexdigest()})
    except (OSError, yaml.YAMLError, ValueError, TypeError) as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    if path.stem != policy.id:
        raise PolicyError(f"{path}: declares {policy.id}; a policy file is named after its id")
    return policy


@lru_cache(maxsize=32)
def policy_by_id(policy_id: str, directory: Path = POLICY_DIR) -> Policy:
    """The policy a logged decision names (``fraud-v1`` → ``<directory>/fraud-v1.yaml``)."""
    path = directory / f"{policy_id}.yaml"
    if not path.is_file():
        raise PolicyError(f"no policy {policy_id} in {directory}")
    return load_policy(path)
