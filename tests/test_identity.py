"""Principals: named keys, the legacy unnamed keys, the keys file, OIDC tokens and the CLI's own key."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from riskloop.core.config import Settings
from riskloop.core.identity import (
    Forbidden,
    IdentityError,
    KeyRing,
    Principal,
    authorize,
    cli_principal,
    fingerprint,
    parse_keys,
    same_actor,
    secret_keys,
)

ALICE, BOB = "alice-key-0123456789ab", "bob:key:with:colons-0123"
AIRFLOW, LEGACY = "svc-airflow-key-0123456", "legacy-k-0123456789ab"
KEYS = f"alice:reviewer:{ALICE}, Bob:admin:{BOB},svc-airflow:admin:{AIRFLOW},{LEGACY}:reviewer"


def _settings(**kw) -> Settings:
    return Settings.model_construct(**{**Settings.model_construct().__dict__, **kw})


def test_named_and_legacy_entries() -> None:
    ring = KeyRing.parse(KEYS)
    assert ring.authenticate(ALICE) == Principal("alice", "reviewer", fingerprint(ALICE))
    bob = ring.authenticate(BOB)
    assert (bob.name, bob.role, bob.actor) == ("Bob", "admin", "Bob")  # the key keeps its colons
    legacy = ring.authenticate(LEGACY)
    assert legacy.name is None and legacy.actor == f"reviewer:{fingerprint(LEGACY)}" and LEGACY not in legacy.actor
    assert ring.authenticate("nope-0123456789abcdef") is None
    assert secret_keys(KEYS) == [ALICE, BOB, AIRFLOW, LEGACY]
    with pytest.raises(IdentityError, match="unknown role"):
        parse_keys("al:superuser:k0123456789abcdef")
    with pytest.raises(IdentityError, match="not a valid principal name"):
        parse_keys("al ice:reviewer:k0123456789abcdef")


def test_unnamed_key_can_take_no_governance_action() -> None:
    ring = KeyRing.parse(KEYS)
    legacy = ring.authenticate(LEGACY)
    assert authorize(legacy, "read_review") is legacy  # reading and scoring stay open to legacy keys
    for action in ("review_model", "promote_model"):
        with pytest.raises(Forbidden, match="has no name"):
            authorize(legacy, action)
    with pytest.raises(Forbidden, match="may not review model"):
        authorize(ring.authenticate(BOB), "review_model")
    assert authorize(ring.authenticate(ALICE), "review_model").actor == "alice"


def test_actors_compare_case_insensitively() -> None:
    assert same_actor("Alice", " alice") and not same_actor("alice", None) and not same_actor(None, None)
    assert Principal("ALICE", "reviewer", "x").same_as("alice")


def test_keys_file_holds_names_and_digests(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    digest = hashlib.sha256(ALICE.encode()).hexdigest()
    path.write_text(f"# riskloop principals\nalice:reviewer:sha256:{digest}\n\nsvc-airflow:admin:{AIRFLOW}\n")
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        KeyRing.from_settings(_settings(api_keys_file=path))
    path.chmod(0o600)
    ring = KeyRing.from_settings(_settings(api_keys_file=path))
    assert ring.authenticate(ALICE) == Principal("alice", "reviewer", fingerprint(ALICE))  # same fingerprint
    assert ring.authenticate(AIRFLOW).name == "svc-airflow"
    assert ring.authenticate(f"sha256:{digest}") is None  # the digest is not a key
    from riskloop.core.redact import redact

    assert AIRFLOW not in redact(f"connecting with {AIRFLOW}")  # a plain key in the file is masked in logs


def test_a_malformed_entry_does_not_echo_its_key() -> None:
    with pytest.raises(IdentityError) as refused:
        parse_keys("alice:alice-forgot-the-role-0123456789")  # read as key "alice", role "<the key>"
    assert "forgot-the-role" not in str(refused.value) and "unknown role" in str(refused.value)


def test_cli_acts_as_its_key() -> None:
    from pydantic import SecretStr

    with pytest.raises(IdentityError, match="RISKLOOP_API_KEY is not set"):
        cli_principal(_settings(api_keys=KEYS))
    with pytest.raises(IdentityError, match="not a configured key"):
        cli_principal(_settings(api_keys=KEYS, api_key=SecretStr("some-other-key-0123456")))

    s = _settings(api_keys=KEYS, api_key=SecretStr(ALICE))
    assert cli_principal(s).actor == "alice"
    assert cli_principal(s, "review_model").name == "alice"
    with pytest.raises(Forbidden, match="has no name"):
        cli_principal(_settings(api_keys=KEYS, api_key=SecretStr(LEGACY)), "review_model")


def test_legacy_fingerprint_names_still_name_a_key() -> None:
    ring = KeyRing.from_settings(_settings(api_keys=KEYS, review_identities={fingerprint(LEGACY): "carol"}))
    assert ring.authenticate(LEGACY).actor == "carol"


@pytest.fixture(scope="module")
def idp() -> tuple[bytes, str]:
    """A local identity provider's RSA key pair (private PEM, public PEM): no network."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def _token(private: bytes, **claims) -> str:
    base = {"iss": "https://idp.example", "aud": "riskloop", "sub": "u-1", "preferred_username": "dana",
            "riskloop_role": "reviewer", "exp": int(time.time()) + 300}
    return jwt.encode({k: v for k, v in {**base, **claims}.items() if v is not None}, private, algorithm="RS256")


def test_oidc_bearer_tokens(idp: tuple[bytes, str], tmp_path: Path) -> None:
    private, public = idp
    pem_file = tmp_path / "idp.pem"
    pem_file.write_text(public)
    for configured in (public, str(pem_file)):
        ring = KeyRing.from_settings(_settings(oidc_issuer="https://idp.example", oidc_audience="riskloop",
                                               oidc_public_key=configured))
        dana = ring.authenticate(_token(private))
        assert (dana.name, dana.role, dana.actor) == ("dana", "reviewer", "dana") and dana.key_id.startswith("jwt-")
    assert ring.authenticate(_token(private, aud="another-app")) is None
    assert ring.authenticate(_token(private, iss="https://evil.example")) is None
    assert ring.authenticate(_token(private, exp=int(time.time()) - 10)) is None
    assert ring.authenticate(_token(private, riskloop_role="root")) is None
    assert ring.authenticate(_token(private, riskloop_role=None)) is None
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert ring.authenticate(_token(other)) is None  # signed by someone else
    nested = KeyRing.from_settings(_settings(oidc_issuer="https://idp.example", oidc_audience="riskloop",
                                             oidc_public_key=public, oidc_role_claim="realm_access.roles"))
    assert nested.authenticate(_token(private, realm_access={"roles": ["offline", "Admin"]})).role == "admin"
    with pytest.raises(IdentityError, match="AUDIENCE"):
        KeyRing.from_settings(_settings(oidc_issuer="https://idp.example", oidc_public_key=public))


def test_local_mode_issues_a_service_and_a_reviewer_once(tmp_path: Path) -> None:
    """A fresh embedded stack with no principals configured gets two, so `make demo`'s DAG runs have an
    author and the person at the keyboard may approve what they trained; anything configured wins."""
    import getpass
    import stat

    from pydantic import SecretStr

    from riskloop.core.identity import LOCAL_SERVICE, cli_key, local_keys

    local = _settings(home=tmp_path, database_url=None)
    service = cli_principal(local)
    assert (service.name, service.role) == (LOCAL_SERVICE, "admin")
    secrets_dir = tmp_path / "secrets"
    for name in ("api_keys", "service.key", "reviewer.key"):
        assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600
    assert "sha256:" in (secrets_dir / "api_keys").read_text()
    assert (secrets_dir / "service.key").read_text().strip() not in (secrets_dir / "api_keys").read_text()
    reviewer_key = (secrets_dir / "reviewer.key").read_text().strip()
    reviewer = cli_principal(_settings(home=tmp_path, database_url=None, api_key=SecretStr(reviewer_key)), "review_model")
    assert reviewer.role == "reviewer" and reviewer.same_as(getpass.getuser())
    assert not reviewer.same_as(service.actor)
    again = cli_key(local)  # issued once: the same keys on every call
    assert local_keys(local) == secrets_dir / "api_keys" and again == (secrets_dir / "service.key").read_text().strip()
    assert KeyRing.from_settings(local).authenticate(reviewer_key) == reviewer

    # anything configured, or a configured Postgres, and local keys are not used
    with pytest.raises(IdentityError, match="RISKLOOP_API_KEY is not set"):
        cli_principal(_settings(home=tmp_path, database_url=None, api_keys=KEYS))
    with pytest.raises(IdentityError, match="RISKLOOP_API_KEY is not set"):
        cli_principal(_settings(home=tmp_path, database_url="postgresql://u:p@db:5432/riskloop"))
    assert KeyRing.from_settings(_settings(home=tmp_path, database_url=None, api_keys=KEYS)).authenticate(reviewer_key) is None
