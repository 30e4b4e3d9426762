"""The one redaction function, on the shapes of secret riskloop meets and by configured value."""

from __future__ import annotations

import pytest

from riskloop.core import redact as redact_module
from riskloop.core.config import Settings
from riskloop.core.redact import describe, redact, redact_value, register_settings, secrets_of


@pytest.fixture()
def no_registered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shapes alone: the by-value list is process-wide, and earlier tests in this worker may have
    registered a secret that one of these examples contains (the Slack URL, a webhook secret)."""
    monkeypatch.setattr(redact_module, "_values", set())
    monkeypatch.setattr(redact_module, "_by_value", None)


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql://ann:p%40ss@db.example:6543/warehouse", "postgresql://ann:***@db.example:6543/warehouse"),
    ("redis://:hunter22@cache:6379/0", "redis://:***@cache:6379/0"),
    ("http://127.0.0.1:5000/api/2.0/mlflow", "http://127.0.0.1:5000/api/2.0/mlflow"),
    ("post to https://hooks.slack.com/services/T000/B000/SECRETXXX failed",
     "post to https://hooks.slack.com/services/*** failed"),
    ("https://events.pagerduty.com/integration/abcdef0123/enqueue", "https://events.pagerduty.com/integration/***"),
    ("https://discord.com/api/webhooks/123/tok-en", "https://discord.com/api/webhooks/***"),
    ("Authorization: Bearer abcdefghijkl", "Authorization: Bearer ***"),
    ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw here", "secret whsec_*** here"),
    ("host=db password=hunter22 user=x", "host=db password=*** user=x"),
    ('{"password": "hun\\"ter", "pan_token": "tok_abc", "card_token": "c1"}',
     '{"password": "***", "pan_token": "tok_abc", "card_token": "c1"}'),
    ("{'api_key': 'k-123456', 'n': 1}", "{'api_key': '***', 'n': 1}"),
    ("https://x.example/cb?token=abc123&page=2", "https://x.example/cb?token=***&page=2"),
    ("RISKLOOP_ALERT_SMTP_PASSWORD is set", "RISKLOOP_ALERT_SMTP_PASSWORD is set"),
    ('password authentication failed for user "ann"', 'password authentication failed for user "ann"'),
])
def test_secrets_are_masked_by_shape(text: str, expected: str, no_registered_secrets: None) -> None:
    assert redact(text) == expected


def test_configured_secrets_are_masked_by_value_also_url_encoded() -> None:
    s = Settings(database_url="postgresql://ann:odd%2Fpw%24x@db:5432/risk", pan_token_key="tk-0123456789",
                 alert_smtp_password="smtp-pw-42")
    assert {"odd/pw$x", "tk-0123456789", "smtp-pw-42"} <= set(secrets_of(s))
    register_settings(s)
    assert redact("key tk-0123456789 and smtp-pw-42; libpq said odd/pw$x, quoted odd%2Fpw%24x") == (
        "key *** and ***; libpq said ***, quoted ***")


def test_serving_keys_are_secrets_one_by_one() -> None:
    from serving.config import ServingSettings

    found = secrets_of(ServingSettings(api_keys="score-key-1:scorer,admin-key-2:admin", admin_token="legacy-tok"))
    assert {"score-key-1", "admin-key-2", "legacy-tok"} <= set(found)


def test_values_and_errors() -> None:
    given = {"error": "for url 'https://hooks.slack.com/services/T1/B2/zzzzzz'", "n": [1, "password=abc123"]}
    assert redact_value(given) == {"error": "for url 'https://hooks.slack.com/services/***'", "n": [1, "password=***"]}
    assert given["n"][1] == "password=abc123"  # the caller's value is left alone
    assert describe(ValueError("cannot reach postgresql://u:pw123@h/db")) == "ValueError: cannot reach postgresql://u:***@h/db"
