"""Principals the tests act as: named keys (``name:role:key``) and the environment that makes the CLI
act as one of them (``RISKLOOP_API_KEY``)."""

from __future__ import annotations

from riskloop.core.identity import Principal, fingerprint

KEYS: dict[str, tuple[str, str]] = {  # name -> (role, key)
    "alice": ("reviewer", "alice-reviewer-key-0123456789"),
    "bob": ("reviewer", "bob-reviewer-key-0123456789ab"),
    "carol": ("reviewer", "carol-reviewer-key-012345678"),  # trains and reviews: never her own models
    "trainer": ("admin", "trainer-admin-key-0123456789a"),
    "svc-airflow": ("admin", "svc-airflow-admin-key-012345"),
}
API_KEYS = ",".join(f"{name}:{role}:{key}" for name, (role, key) in KEYS.items())


def principal(name: str) -> Principal:
    role, key = KEYS[name]
    return Principal(name=name, role=role, key_id=fingerprint(key))


def key(name: str) -> str:
    return KEYS[name][1]


def cli_env(name: str) -> dict[str, str]:
    """The environment of a CLI run as ``name``."""
    return {"RISKLOOP_API_KEYS": API_KEYS, "RISKLOOP_API_KEY": key(name)}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key(name)}"}


TRAINER = principal("trainer")
