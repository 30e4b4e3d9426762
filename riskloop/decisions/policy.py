"""Decision policy as versioned configuration (``riskloop/decisions/policies/<product>-v<N>.yaml``).

Why a file and not environment variables: a regulator's "why was this allowed?" must be answered
with the exact thresholds and rules in force at the time. Each decision-log row records the
policy id (``fraud-v1``); a changed policy is a new file with a new version, so
``riskloop decisions replay`` can reload the very policy a decision was made under
(:func:`policy_by_id`). A policy file is validated completely at start-up: a typo in a rule
fails the deploy, not a payment.

Evaluation is pure (no I/O): thresholds map the model score to a base decision, every rule
whose condition holds is recorded as fired, and the most severe outcome wins. Stateful inputs a
rule needs beyond the request and the feature vector (is this device known? where and when did
this card pay last?) come in as ``signals``, which the log stores so that a replay sees what the
live decision saw. Each rule may carry a ``description``: the sentence a reviewer reads when it
fires (:meth:`Policy.explain`), with the values it fired on filled in.
"""

from __future__ import annotations

import hashlib
import logging
import string
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from riskloop.core import windows

log = logging.getLogger(__name__)

POLICY_DIR = Path(__file__).resolve().parent / "policies"

# Outcomes of each product in increasing severity: the most severe applicable one is the decision.
SEVERITY: dict[str, tuple[str, ...]] = {
    "fraud": ("allow", "step_up", "review", "deny"),
    "credit": ("approve", "refer", "decline"),
}

RuleKind = Literal["amount_above", "country_in", "card_in", "terminal_in", "feature_above", "feature_equals",
                   "new_device_amount_above", "impossible_travel"]

# The names a rule's description may use ({name} or {name:format}), all taken from the request, the
# rule, the feature it reads and the signals (serving.travel); checked at load so a typo fails the deploy.
DESCRIPTION_FIELDS = frozenset({
    "id", "action", "feature", "value", "max", "amount_minor", "limit_minor", "max_speed_kmh", "min_distance_km",
    "country", "currency", "card_token", "customer_id", "terminal_id", "device_id",
    "previous_country", "previous_at", "distance_km", "elapsed_h", "elapsed_min", "speed_kmh", "age_s"})


_REALTIME_VIEWS = {f: windows.view_name(e) for e in windows.ENTITIES for f in windows.feature_names(e)}


def realtime_view(feature: str) -> str | None:
    """The real-time feature view (riskloop.core.windows) a feature belongs to, if it is a window."""
    return _REALTIME_VIEWS.get(feature)


@lru_cache(maxsize=1024)  # one decision asks for the same two or three times once per rule
def _parse_time(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def _seconds_between(earlier: str | datetime | None, later: str | datetime | None) -> float | None:
    if earlier is None or later is None:
        return None
    a = earlier if isinstance(earlier, datetime) else _parse_time(earlier)
    b = later if isinstance(later, datetime) else _parse_time(later)
    return (b - a).total_seconds()


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
    max_speed_kmh: float | None = Field(default=None, gt=0, description="impossible_travel: faster than this "
                                        "between the card's last country and this one is impossible.")
    min_distance_km: float = Field(default=0.0, ge=0, description="impossible_travel: nearer countries never "
                                   "fire (their centroids say too little about where a border town is).")
    max_age_s: float | None = Field(
        default=None, gt=0, description="feature_above/feature_equals on a real-time window: its online value is "
        "as of the entity's latest payment; older than this before the payment, it cannot prove a breach.")
    description: str = Field(default="", description="What the reviewer reads when the rule fires; "
                             "{placeholders} from DESCRIPTION_FIELDS.")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "Rule":
        need = {"amount_above": ("amount_minor",), "new_device_amount_above": ("amount_minor",),
                "country_in": ("countries",), "card_in": ("card_tokens",), "terminal_in": ("terminal_ids",),
                "feature_above": ("feature", "max"), "feature_equals": ("feature", "value"),
                "impossible_travel": ("max_speed_kmh",)}[self.kind]
        missing = [f for f in need if getattr(self, f) in (None, frozenset())]
        if missing:
            raise ValueError(f"rule {self.id} ({self.kind}) needs {missing}")
        if self.max_age_s is not None and (self.kind not in ("feature_above", "feature_equals")
                                           or realtime_view(self.feature or "") is None):
            raise ValueError(f"rule {self.id}: max_age_s is for feature rules on a real-time window "
                             f"({', '.join(windows.view_name(e) for e in windows.ENTITIES)})")
        unknown = sorted({name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(self.description)
                          if name is not None} - DESCRIPTION_FIELDS)
        if unknown:
            raise ValueError(f"rule {self.id}: description names {unknown}; it may use {sorted(DESCRIPTION_FIELDS)}")
        return self

    def age_s(self, request: Mapping[str, Any], stamps: Mapping[str, Any]) -> float | None:
        """Seconds from the event time of the rule's real-time value to the payment (None: unknown)."""
        view = realtime_view(self.feature or "")
        return None if view is None else _seconds_between(stamps.get(view), request.get("timestamp"))

    def fires(self, request: Mapping[str, Any], features: Mapping[str, Any], signals: Mapping[str, Any],
              degraded: bool, stamps: Mapping[str, Any] | None = None) -> bool:
        if (self.when == "degraded" and not degraded) or (self.when == "scored" and degraded):
            return False
        if self.max_age_s is not None:
            age = self.age_s(request, stamps or {})
            if age is None or age > self.max_age_s:  # no stamp, or a burst that is over: no proof
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
            case "impossible_travel":
                # From the logged signals only (serving.travel computed them), so a replay needs no
                # state and no centroid table. No previous payment, or an unknown country: no breach.
                distance, hours = signals.get("distance_km"), signals.get("elapsed_h")
                return (distance is not None and hours is not None and distance >= self.min_distance_km
                        and distance > self.max_speed_kmh * hours)
        return False  # pragma: no cover - kind is a closed Literal

    def explain(self, request: Mapping[str, Any], features: Mapping[str, Any], signals: Mapping[str, Any],
                stamps: Mapping[str, Any] | None = None) -> str:
        """The rule's description with the values it fired on (:class:`_Lenient`); its id when it has none."""
        if not self.description:
            return self.id
        values: dict[str, Any] = {k: request.get(k) for k in ("country", "currency", "card_token", "customer_id",
                                                              "terminal_id", "device_id")}
        values.update({k: v for k, v in signals.items() if k in DESCRIPTION_FIELDS})
        if signals.get("elapsed_h") is not None:
            values["elapsed_min"] = signals["elapsed_h"] * 60.0
        values.update(id=self.id, action=self.action, feature=self.feature, max=self.max,
                      amount_minor=request.get("amount_minor"), limit_minor=self.amount_minor,
                      max_speed_kmh=self.max_speed_kmh, min_distance_km=self.min_distance_km,
                      value=features.get(self.feature) if self.feature else self.value,
                      age_s=self.age_s(request, stamps or {}) if self.max_age_s is not None else None)
        return _FORMATTER.vformat(self.description, (), values)


class _Lenient(string.Formatter):
    """Fills a description: an absent or null value reads as "?", a format spec that does not fit
    the value (``{speed_kmh:,.0f}`` of "?") is dropped, so reading a decision never fails on it."""

    def get_value(self, key: int | str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        v = kwargs.get(key) if isinstance(key, str) else None
        return "?" if v is None else v

    def format_field(self, value: Any, format_spec: str) -> str:
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):
            return str(value)


_FORMATTER = _Lenient()


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
               signals: Mapping[str, Any] | None = None,
               stamps: Mapping[str, Any] | None = None) -> tuple[str, list[str]]:
        """(decision, ids of the rules that fired, in policy order). ``score`` None = degraded.
        ``stamps``: feature view → event time of its values (as logged in ``feature_timestamps``),
        which rules with ``max_age_s`` need."""
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
            if rule.fires(request, features, signals or {}, degraded, stamps):
                fired.append(rule.id)
                if rank[rule.action] > rank[decision]:
                    decision = rule.action
        return decision, fired

    def explain(self, rule_ids: list[str], request: Mapping[str, Any], features: Mapping[str, Any],
                signals: Mapping[str, Any] | None = None,
                stamps: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
        """What a reviewer reads about the rules that fired: ``{id, action, description}`` each, in
        the order given. An id this policy does not have is kept with an empty description."""
        by_id = {r.id: r for r in self.rules}
        out = []
        for rid in rule_ids:
            rule = by_id.get(rid)
            out.append({"id": rid, "action": rule.action if rule else "",
                        "description": rule.explain(request, features, signals or {}, stamps) if rule else ""})
        return out


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
