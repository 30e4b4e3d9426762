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

import difflib
import hashlib
import logging
import string
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from riskloop.core import windows

log = logging.getLogger(__name__)

POLICY_DIR = Path(__file__).resolve().parent / "policies"

# Outcomes of each product in increasing severity: the most severe applicable one is the decision.
SEVERITY: dict[str, tuple[str, ...]] = {
    "fraud": ("allow", "step_up", "review", "deny"),
    "credit": ("approve", "refer", "decline"),
}

_RANK = {p: {d: i for i, d in enumerate(o)} for p, o in SEVERITY.items()}

RuleKind = Literal["amount_above", "country_in", "card_in", "terminal_in", "feature_above", "feature_equals",
                   "new_device_amount_above", "impossible_travel", "condition"]

# What a compound condition (kind ``condition``) may read besides features: the request fields of
# each product, the model score and the signals serving computes, each with its type, so that a
# comparison of a text with a number is refused when a draft is saved, not at scoring time.
NUMBER, TEXT, BOOLEAN = "number", "text", "boolean"
REQUEST_FIELDS: dict[str, dict[str, str]] = {
    "fraud": {"amount_minor": NUMBER, "currency": TEXT, "country": TEXT, "card_token": TEXT, "customer_id": TEXT,
              "terminal_id": TEXT, "device_id": TEXT, "ip": TEXT, "card_bin": TEXT, "card_last4": TEXT,
              "transaction_id": TEXT, "pan_token": TEXT},
    "credit": {"application_id": TEXT, "customer_id": TEXT},
}
SIGNAL_FIELDS: dict[str, str] = {"device_known": BOOLEAN, "distance_km": NUMBER, "elapsed_h": NUMBER,
                                 "speed_kmh": NUMBER}
SCORE_FIELD = "score"

# A list holds one kind of key, and a condition may look up a request field in it only if the
# field holds that kind (a card list is never searched for a terminal id).
LIST_KINDS: dict[str, str] = {"card": "card_token", "customer": "customer_id", "terminal": "terminal_id",
                              "device": "device_id", "ip": "ip", "country": "country", "bin": "card_bin"}
LIST_NAME = r"^[a-z][a-z0-9_]{0,62}$"

Op = Literal[">", ">=", "<", "<=", "==", "!=", "in", "not_in"]
_NUMERIC_OPS = frozenset({">", ">=", "<", "<="})

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


class Condition(BaseModel):
    """A compound condition: exactly one of ``all`` / ``any`` / ``not`` (over conditions), or a leaf
    on one ``field`` (request field, ``score`` or signal) or ``feature`` with ``op`` and ``value``,
    or with ``in_list`` (membership of a named list). A missing value never proves a breach: a
    leaf on it is false, and so is its ``not`` (absence is not evidence either way)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    all: tuple["Condition", ...] | None = None
    any: tuple["Condition", ...] | None = None
    not_: "Condition | None" = Field(default=None, alias="not")
    field: str | None = None
    feature: str | None = None
    op: Op | None = None
    value: float | bool | str | tuple[float | str, ...] | None = None
    in_list: str | None = Field(default=None, pattern=LIST_NAME)

    @model_validator(mode="after")
    def _one_shape(self) -> "Condition":
        shapes = [k for k in ("all", "any", "not_", "field", "feature") if getattr(self, k) is not None]
        if len(shapes) != 1:
            raise ValueError("a condition is exactly one of all, any, not, field or feature "
                             f"(got {[s.rstrip('_') for s in shapes] or 'none'})")
        if shapes[0] in ("all", "any") and not getattr(self, shapes[0]):
            raise ValueError(f"{shapes[0]} needs at least one condition")
        if shapes[0] in ("field", "feature"):
            if (self.in_list is None) == (self.op is None):
                raise ValueError(f"{shapes[0]} {self.field or self.feature}: give either op and value, or in_list")
            if self.op is not None and self.value is None:
                raise ValueError(f"{shapes[0]} {self.field or self.feature}: op {self.op} needs a value")
            if self.op in ("in", "not_in") and not isinstance(self.value, tuple):
                raise ValueError(f"op {self.op} needs a list value")
            if self.op in _NUMERIC_OPS and isinstance(self.value, (str, bool, tuple)):
                raise ValueError(f"op {self.op} compares numbers, not {self.value!r}")
        elif self.op is not None or self.value is not None or self.in_list is not None:
            raise ValueError("op, value and in_list belong to a field or feature condition")
        return self

    def leaves(self) -> "list[Condition]":
        if self.all is not None or self.any is not None:
            return [leaf for c in (self.all or self.any or ()) for leaf in c.leaves()]
        if self.not_ is not None:
            return self.not_.leaves()
        return [self]

    def expression(self, consts: dict[str, Any]) -> str:
        """This condition as one Python expression over ``r`` (request), ``f`` (features), ``s``
        (signals), ``sc`` (score) and ``ls`` (lists); every value from the policy goes into
        ``consts`` by name, never into the text. :meth:`Rule._compile` makes it one function: a
        200-rule policy is then 200 calls per decision, not a tree walk each."""
        if self.all is not None or self.any is not None:
            joiner = " and " if self.all is not None else " or "
            return "(" + joiner.join(c.expression(consts) for c in (self.all or self.any or ())) + ")"
        if self.not_ is not None:
            # not(x) on a missing input stays false: absence cannot prove the opposite either
            present = " and ".join(f"{_source(leaf, consts)} is not None" for leaf in self.not_.leaves())
            return f"({present} and not {self.not_.expression(consts)})"
        get = _source(self, consts)
        if self.in_list is not None:
            return f"((v := {get}) is not None and v in ls.get({_const(consts, self.in_list)}, _EMPTY))"
        if self.op in ("in", "not_in"):
            members = _const(consts, frozenset(self.value))  # type: ignore[arg-type]
            return f"((v := {get}) is not None and v {'in' if self.op == 'in' else 'not in'} {members})"
        return f"((v := {get}) is not None and v {self.op} {_const(consts, self.value)})"

    def check(self, product: str, features: Mapping[str, str] | None, lists: Mapping[str, str] | None,
              where: str) -> list[str]:
        """What is wrong with this condition against the features and lists that exist
        (``None``: not checked), each as ``<where>: <reason>``."""
        errors: list[str] = []
        for path, leaf in self._paths(where):
            kind: str | None
            if leaf.field is not None:
                name = leaf.field
                kind = (NUMBER if name == SCORE_FIELD else REQUEST_FIELDS[product].get(name) or SIGNAL_FIELDS.get(name))
                if kind is None:
                    errors.append(f"{path}.field: unknown field {name!r} (request fields "
                                  f"{sorted(REQUEST_FIELDS[product])}, signals {sorted(SIGNAL_FIELDS)} or score)")
                    continue
            else:
                name = leaf.feature or ""
                if features is None:
                    kind = None
                elif name not in features:
                    close = difflib.get_close_matches(name, list(features), n=1)
                    errors.append(f"{path}.feature: unknown feature {name!r}"
                                  + (f" (did you mean {close[0]!r}?)" if close else ""))
                    continue
                else:
                    kind = features[name]
            if leaf.in_list is not None:
                if leaf.feature is not None:
                    errors.append(f"{path}.in_list: lists hold request keys, not feature values")
                elif lists is not None and leaf.in_list not in lists:
                    errors.append(f"{path}.in_list: unknown list {leaf.in_list!r}")
                elif lists is not None and LIST_KINDS.get(lists[leaf.in_list]) != name:
                    errors.append(f"{path}.in_list: list {leaf.in_list!r} holds {lists[leaf.in_list]} keys, "
                                  f"not {name}")
                continue
            if kind is None:
                continue
            values = leaf.value if isinstance(leaf.value, tuple) else (leaf.value,)
            for v in values:
                vkind = BOOLEAN if isinstance(v, bool) else NUMBER if isinstance(v, (int, float)) else TEXT
                if leaf.op in _NUMERIC_OPS and kind != NUMBER:
                    errors.append(f"{path}.op: {name} is {kind}, {leaf.op} compares numbers")
                    break
                if vkind != kind:
                    errors.append(f"{path}.value: {name} is {kind}, {v!r} is {vkind}")
                    break
        return errors

    def _paths(self, where: str) -> "list[tuple[str, Condition]]":
        for key in ("all", "any"):
            items = getattr(self, key)
            if items is not None:
                return [p for i, c in enumerate(items) for p in c._paths(f"{where}.{key}[{i}]")]
        if self.not_ is not None:
            return self.not_._paths(f"{where}.not")
        return [(where, self)]


def _const(consts: dict[str, Any], value: Any) -> str:
    name = f"c{len(consts)}"
    consts[name] = value
    return name


def _source(leaf: Condition, consts: dict[str, Any]) -> str:
    """Where a leaf reads its value: the request, the features, the signals or the score."""
    if leaf.feature is not None:
        return f"f.get({_const(consts, leaf.feature)})"
    name = leaf.field or ""
    if name == SCORE_FIELD:
        return "sc"
    return f"{'s' if name in SIGNAL_FIELDS else 'r'}.get({_const(consts, name)})"


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
    condition: Condition | None = Field(default=None, description="kind condition: all / any / not over request "
                                        "fields, features, list membership and the score.")
    mode: Literal["live", "shadow"] = Field(
        default="live", description="shadow: evaluated and logged (decision-log signals.shadow_rules), never deciding.")
    _test: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "Rule":
        need = {"amount_above": ("amount_minor",), "new_device_amount_above": ("amount_minor",),
                "country_in": ("countries",), "card_in": ("card_tokens",), "terminal_in": ("terminal_ids",),
                "feature_above": ("feature", "max"), "feature_equals": ("feature", "value"),
                "impossible_travel": ("max_speed_kmh",), "condition": ("condition",)}[self.kind]
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
        if self.condition is not None and self.kind != "condition":
            raise ValueError(f"rule {self.id}: condition is for kind condition")
        self._test = self._compile()
        return self

    def _compile(self) -> Any:
        """The rule as one function ``(r, f, s, sc, ls, dg, st) -> bool`` (``dg``: degraded, ``st``:
        stamps), built from :meth:`Condition.expression` or its kind's expression."""
        consts: dict[str, Any] = {"_EMPTY": frozenset(), "_age_ok": self._age_ok}
        c = lambda v: _const(consts, v)  # noqa: E731
        match self.kind:
            case "amount_above":
                expr = f"((v := r.get('amount_minor')) is not None and v > {c(self.amount_minor)})"
            case "country_in":
                expr = f"r.get('country') in {c(self.countries)}"
            case "card_in":
                expr = f"r.get('card_token') in {c(self.card_tokens)}"
            case "terminal_in":
                expr = f"r.get('terminal_id') in {c(self.terminal_ids)}"
            case "feature_above":  # a missing feature cannot prove a breach
                expr = f"((v := f.get({c(self.feature)})) is not None and v > {c(self.max)})"
            case "feature_equals":
                expr = f"((v := f.get({c(self.feature)})) is not None and v == {c(self.value)})"
            case "new_device_amount_above":
                expr = (f"(r.get('device_id') is not None and s.get('device_known') is False and "
                        f"(v := r.get('amount_minor')) is not None and v > {c(self.amount_minor)})")
            case "impossible_travel":
                # From the logged signals only (serving.travel computed them), so a replay needs no
                # state and no centroid table. No previous payment, or an unknown country: no breach.
                expr = (f"((d := s.get('distance_km')) is not None and (h := s.get('elapsed_h')) is not None "
                        f"and d >= {c(self.min_distance_km)} and d > {c(self.max_speed_kmh)} * h)")
            case "condition":
                expr = self.condition.expression(consts)  # type: ignore[union-attr]
        if self.max_age_s is not None:  # no stamp, or a burst that is over: no proof
            expr = f"_age_ok(r, st) and {expr}"
        if self.when != "always":
            expr = f"{'dg' if self.when == 'degraded' else 'not dg'} and {expr}"
        return eval(compile(f"lambda r, f, s, sc, ls, dg, st: bool({expr})", f"<rule {self.id}>", "eval"), consts)

    def _age_ok(self, request: Mapping[str, Any], stamps: Mapping[str, Any]) -> bool:
        age = self.age_s(request, stamps)
        return age is not None and age <= (self.max_age_s or 0.0)

    def features_read(self) -> tuple[str, ...]:
        if self.condition is not None:
            return tuple(leaf.feature for leaf in self.condition.leaves() if leaf.feature is not None)
        return (self.feature,) if self.feature is not None else ()

    def lists_read(self) -> tuple[str, ...]:
        return tuple(leaf.in_list for leaf in self.condition.leaves()
                     if leaf.in_list is not None) if self.condition is not None else ()

    def age_s(self, request: Mapping[str, Any], stamps: Mapping[str, Any]) -> float | None:
        """Seconds from the event time of the rule's real-time value to the payment (None: unknown)."""
        view = realtime_view(self.feature or "")
        return None if view is None else _seconds_between(stamps.get(view), request.get("timestamp"))

    def fires(self, request: Mapping[str, Any], features: Mapping[str, Any], signals: Mapping[str, Any],
              degraded: bool, stamps: Mapping[str, Any] | None = None, score: float | None = None,
              lists: Mapping[str, frozenset[str]] | None = None) -> bool:
        return self._test(request, features, signals, score, lists or {}, degraded, stamps or {})

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
    # Bound at run time (:meth:`bind`), never part of the version: the lists' entries, the emergency
    # rules and rules-only mode in force, and the policy store's change sequence they were read at.
    _lists: Mapping[str, frozenset[str]] = PrivateAttr(default_factory=dict)
    _rules_only: bool = PrivateAttr(default=False)
    _seq: int | None = PrivateAttr(default=None)
    _live: tuple[tuple[str, Any], ...] = PrivateAttr(default=())
    _shadow: tuple[tuple[str, Any], ...] = PrivateAttr(default=())
    _features: tuple[str, ...] = PrivateAttr(default=())
    _by_id: dict[str, Rule] = PrivateAttr(default_factory=dict)
    _fast: tuple[Any, ...] = PrivateAttr(default=({}, (), (), {}))

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
        return self._features

    @property
    def list_names(self) -> tuple[str, ...]:
        """The lists the rules look up (their entries come from the policy store, :meth:`bind`)."""
        return tuple(dict.fromkeys(n for r in self.rules for n in r.lists_read()))

    @property
    def rules_only(self) -> bool:
        """An emergency stop sends every decision to the rules alone (no model score)."""
        return self._rules_only

    @property
    def seq(self) -> int | None:
        """The policy store's change sequence this policy's lists and emergency rules were read at
        (None: a file, no store)."""
        return self._seq

    @property
    def lists(self) -> Mapping[str, frozenset[str]]:
        return self._lists

    def bind(self, lists: Mapping[str, frozenset[str]], emergency: tuple[Rule, ...] = (), *,
             rules_only: bool = False, seq: int | None = None) -> "Policy":
        """This version with the store's state at ``seq``: list entries, emergency rules (added after
        the version's own rules, most severe outcome still wins) and rules-only mode. A new immutable
        object: serving swaps it in with one attribute store, a decision in flight keeps its own."""
        bound = self.model_copy(update={"rules": self.rules + tuple(emergency)}) if emergency else self.model_copy()
        bound._lists = {k: frozenset(v) for k, v in lists.items()}
        bound._rules_only, bound._seq = rules_only, seq
        bound._split()
        return bound

    def _split(self) -> None:
        self._live = tuple((r.id, r._test) for r in self.rules if r.mode == "live")
        self._shadow = tuple((r.id, r._test) for r in self.rules if r.mode == "shadow")
        self._by_id = {r.id: r for r in self.rules}
        self._fast = (self._lists, self._live, self._shadow, self._by_id)
        self._features = tuple(dict.fromkeys(f for r in self.rules for f in r.features_read()))

    def check(self, features: Mapping[str, str] | None, lists: Mapping[str, str] | None) -> list[str]:
        """What a draft gets wrong against what exists: unknown or mistyped features, unknown lists
        or lists of the wrong kind (``features``: name → number/text; ``lists``: name → kind; None:
        not checked). Each error names the field (``rules[3].condition.all[0].feature``)."""
        errors: list[str] = []
        for i, rule in enumerate(self.rules):
            where = f"rules[{i}] ({rule.id})"
            if rule.condition is not None:
                errors += rule.condition.check(self.policy, features, lists, f"{where}.condition")
            elif rule.feature is not None and features is not None and rule.feature not in features:
                close = difflib.get_close_matches(rule.feature, list(features), n=1)
                errors.append(f"{where}.feature: unknown feature {rule.feature!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else ""))
        return errors

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
        wrong = self.check(None, None)  # request fields, signals and score: their types are known here
        if wrong:
            raise ValueError("; ".join(wrong))
        self._split()
        return self

    def decide(self, score: float | None, request: Mapping[str, Any], features: Mapping[str, Any],
               signals: Mapping[str, Any] | None = None,
               stamps: Mapping[str, Any] | None = None) -> tuple[str, list[str]]:
        """(decision, ids of the rules that fired, in policy order). ``score`` None = degraded.
        ``stamps``: feature view → event time of its values (as logged in ``feature_timestamps``),
        which rules with ``max_age_s`` need. Shadow rules: :meth:`evaluate`."""
        decision, fired, _ = self.evaluate(score, request, features, signals, stamps)
        return decision, fired

    def evaluate(self, score: float | None, request: Mapping[str, Any], features: Mapping[str, Any],
                 signals: Mapping[str, Any] | None = None,
                 stamps: Mapping[str, Any] | None = None) -> tuple[str, list[str], list[str]]:
        """:meth:`decide` plus the ids of the shadow rules that would have fired (never deciding)."""
        degraded = score is None
        signals = signals or {}
        # One private read: a private attribute of a pydantic model is read through __getattr__ (µs each)
        lists, live, shadow_rules, by_id = self._fast
        rank = _RANK[self.policy]
        decision = self.outcomes[0]
        if degraded:
            decision = self.degraded_decision or decision
        else:
            for d, t in self.thresholds.items():
                if score >= t and rank[d] > rank[decision]:
                    decision = d
        stamps = stamps or {}
        fired = [rid for rid, test in live if test(request, features, signals, score, lists, degraded, stamps)]
        if fired:
            for rid in fired:
                action = by_id[rid].action
                if rank[action] > rank[decision]:
                    decision = action
        shadow = [rid for rid, test in shadow_rules if test(request, features, signals, score, lists, degraded, stamps)]
        return decision, fired, shadow

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
