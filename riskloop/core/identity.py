"""Who acts: principals (people and services), their keys, their roles, and what each role may do.

The one place identities are defined. The scoring service's FastAPI dependency (``serving.auth``),
the CLI (:func:`cli_principal`) and the governance records (approvals, promotions, canaries, model
authors) all resolve a caller to a :class:`Principal` here.

Why this shape:

* **People, not strings.** A key is issued to a named person or service: ``name:role:key`` in
  ``RISKLOOP_API_KEYS`` (comma-separated) or one entry per line in ``RISKLOOP_API_KEYS_FILE``. The
  name is what audit rows record (``Principal.actor``) and what "approver is not the author" compares,
  case-insensitively. A legacy ``key:role`` entry still scores (services that predate names), but it
  has no name and may take no governance action (:data:`GOVERNANCE_ACTIONS`): an identity that is
  only a key fingerprint can never be compared with an author.
* **Keys file entries may hold only the key's digest** (``name:role:sha256:<64 hex>``), so the file
  the CLI and the service read does not hand every key to whoever can read it.
* **OIDC as a second option.** A bearer token that is a JWT signed by the configured issuer (JWKS
  URL or PEM public key, with the audience checked) is a principal too: its name and role come from
  configured claims.
* **Constant time, no key in logs.** A presented key is hashed and compared (``hmac.compare_digest``)
  with *every* configured digest, without an early exit. Only a 12-hex fingerprint of a key
  (``key_id``) is ever recorded or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from riskloop.core.config import Settings

log = logging.getLogger(__name__)

ROLES = frozenset({"scorer", "reviewer", "analyst", "admin", "policy"})

# action -> roles allowed to perform it
PERMISSIONS: dict[str, frozenset[str]] = {
    "score": frozenset({"scorer", "admin"}),
    "read_decision": frozenset({"reviewer", "analyst", "admin"}),
    "record_outcome": frozenset({"scorer", "admin"}),  # the channel reports a step-up challenge's outcome
    "read_cases": frozenset({"analyst", "admin"}),
    "work_cases": frozenset({"analyst"}),  # claim, release, note, close
    "override": frozenset({"reviewer"}),
    "admin": frozenset({"admin"}),
    "read_model": frozenset({"scorer", "reviewer", "admin"}),
    "read_review": frozenset({"reviewer", "admin"}),
    "review_model": frozenset({"reviewer"}),  # approve / reject a challenger
    # run the promotion gate (it moves @champion only if every gate, approval included, passes)
    "promote_model": frozenset({"reviewer", "admin"}),
    # register a model version: its author, who then cannot approve it
    "train_model": frozenset({"reviewer", "admin"}),
    "run_canary": frozenset({"reviewer", "admin"}),  # start / stop a canary
    # The policy store: a policy author drafts and edits lists, a reviewer approves, rejects or rolls
    # back (never their own draft), an admin pulls the emergency stop.
    "read_policy": frozenset({"policy", "reviewer", "analyst", "admin"}),
    "draft_policy": frozenset({"policy"}),
    "edit_lists": frozenset({"policy"}),
    "review_policy": frozenset({"reviewer"}),
    "emergency_stop": frozenset({"admin"}),
    # crypto-shred a customer's personal data (riskloop erase customer)
    "erase_subject": frozenset({"admin"}),
}

# Actions whose record must name a person or a service: an unnamed (legacy ``key:role``) key is refused.
GOVERNANCE_ACTIONS = frozenset({"review_model", "promote_model", "train_model", "run_canary", "draft_policy",
                                "edit_lists", "review_policy", "emergency_stop", "erase_subject"})

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_HEX_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")
MIN_KEY_LENGTH = 16


class IdentityError(ValueError):
    """Keys or identity configuration are malformed or missing (refuse rather than guess)."""


ApiKeyError = IdentityError  # the name serving has always raised


class Forbidden(PermissionError):
    """An authenticated principal may not do this (a 403 in the service, an error in the CLI)."""


@dataclass(frozen=True)
class Principal:
    """Who acts: a named person or service (``name``; None for a legacy unnamed key), their role, and
    a non-secret fingerprint of their credential (``key_id``)."""

    name: str | None
    role: str
    key_id: str

    @property
    def actor(self) -> str:
        """What audit rows record: the name, else (unnamed key) ``role:<fingerprint>``."""
        return self.name if self.name is not None else f"{self.role}:{self.key_id}"

    @property
    def named(self) -> bool:
        return self.name is not None

    def same_as(self, other: str | None) -> bool:
        """Whether ``other`` (a recorded actor) is this principal, case-insensitively."""
        return same_actor(self.actor, other)


def same_actor(a: str | None, b: str | None) -> bool:
    """Two recorded actors are the same person or service (names compare case-insensitively)."""
    return a is not None and b is not None and a.strip().casefold() == b.strip().casefold()


def fingerprint(key: str) -> str:
    """The 12-hex fingerprint a key is known by in logs and audit rows."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def authorize(principal: Principal, action: str) -> Principal:
    """``principal`` if its role may do ``action`` (and, for a governance action, it has a name); else
    :class:`Forbidden` with the reason."""
    if principal.role not in PERMISSIONS[action]:
        raise Forbidden(f"role {principal.role!r} may not {action.replace('_', ' ')}")
    if action in GOVERNANCE_ACTIONS and not principal.named:
        raise Forbidden(f"the key {principal.actor} has no name, and a governance action ({action.replace('_', ' ')}) "
                        "must record a person or a service: issue it as name:role:key (RISKLOOP_API_KEYS or "
                        "RISKLOOP_API_KEYS_FILE)")
    return principal


def _split(item: str) -> tuple[str | None, str, str]:
    """An entry's (name, role, key) without validating them: ``name:role:key`` when the second field is
    a role (the key may contain colons), else the legacy ``key:role`` (role after the last colon)."""
    parts = item.split(":")
    if len(parts) >= 3 and parts[1].strip().lower() in ROLES:
        return parts[0].strip(), parts[1].strip().lower(), ":".join(parts[2:]).strip()
    key, _, role = item.rpartition(":")
    return None, role.strip().lower(), key.strip()


def secret_keys(raw: str | None) -> list[str]:
    """The keys in a ``RISKLOOP_API_KEYS`` value, for log redaction (:mod:`riskloop.core.redact`)."""
    return [k for k in (_split(item)[2] for item in (raw or "").split(",") if item.strip()) if k]


def _parse_entry(item: str, where: str) -> tuple[str | None, str, bytes, str]:
    """One entry -> (name, role, sha256 digest, key_id). ``name:role:key`` (the key may contain colons;
    ``sha256:<hex>`` in its place is the key's digest) or the legacy ``key:role``."""
    name, role, key = _split(item)
    if name is not None and not _NAME.fullmatch(name):
        raise IdentityError(f"{where}: {name!r} is not a valid principal name (letters, digits, . _ @ + -)")
    if ":" not in item or not key:
        raise IdentityError(f"{where} entries must be name:role:key (or the legacy key:role)")
    if role not in ROLES:  # echoed only if short: a forgotten role would put the key in its place
        shown = repr(role) if len(role) <= 12 else "(not shown)"
        raise IdentityError(f"{where}: unknown role {shown} (roles: {sorted(ROLES)})")
    digest_hex = _HEX_DIGEST.fullmatch(key)
    if digest_hex:
        raw = bytes.fromhex(digest_hex.group(1))
        return name, role, raw, digest_hex.group(1).lower()[:12]
    if len(key) < MIN_KEY_LENGTH:
        log.warning("%s: the key of %s (role %s) is shorter than %d characters", where, name or "an unnamed entry",
                    role, MIN_KEY_LENGTH)
    return name, role, _digest(key), fingerprint(key)


def parse_keys(raw: str | None, where: str = "RISKLOOP_API_KEYS") -> list[tuple[str | None, str, bytes, str]]:
    """Comma-separated entries (whitespace ignored)."""
    return [_parse_entry(item.strip(), where) for item in (raw or "").split(",") if item.strip()]


def read_keys_file(path: Path) -> list[tuple[str | None, str, bytes, str]]:
    """One entry per line; blank lines and ``#`` comments ignored. A file others can read is refused:
    it holds keys (or at least who holds which role)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise IdentityError(f"RISKLOOP_API_KEYS_FILE {path}: {exc.strerror}") from exc
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(f"RISKLOOP_API_KEYS_FILE {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}): "
                            "chmod 600 it")
    from riskloop.core.redact import register  # (redact imports this module)

    entries, keys = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(_parse_entry(line, f"{path}:{n}"))
            keys.append(_split(line)[2])
    register(k for k in keys if not _HEX_DIGEST.fullmatch(k))  # plain keys in the file: never in a log line
    return entries


# --- local mode: keys issued once, so a fresh `make demo` has a service and a reviewer ---------------

LOCAL_SERVICE = "svc-riskloop"
LOCAL_KEYS_FILE = "api_keys"  # under <home>/secrets: name:role:sha256:<digest> lines, no secret in it
SERVICE_KEY_FILE = "service.key"
REVIEWER_KEY_FILE = "reviewer.key"


def _local_mode(settings: "Settings") -> bool:
    """Local keys apply only to the embedded stack when nothing else configures principals."""
    return (settings.embedded and settings.api_keys is None and settings.api_keys_file is None
            and settings.oidc_issuer is None)


def local_keys(settings: "Settings") -> Path | None:
    """In local mode, the keys file of the two principals issued once under ``<home>/secrets`` (each key
    in its own 0600 file): ``svc-riskloop`` (admin: what the DAGs, the demo and the CLI run as by default,
    so it is the author of what they train) and the operating-system user as a reviewer (who may then
    approve what the service trained: ``RISKLOOP_API_KEY=$(cat <home>/secrets/reviewer.key)``). None
    outside local mode: a deployment issues its own keys."""
    if not _local_mode(settings):
        return None
    import getpass
    import secrets as _secrets

    directory = settings.home / "secrets"
    path = directory / LOCAL_KEYS_FILE
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    person = re.sub(r"[^A-Za-z0-9_.@-]", "-", getpass.getuser()) or "reviewer"
    lines = []
    for file, name, role in ((SERVICE_KEY_FILE, LOCAL_SERVICE, "admin"), (REVIEWER_KEY_FILE, person, "reviewer")):
        key_path = directory / file
        try:  # O_EXCL: two processes starting at once agree on one key
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(_secrets.token_urlsafe(32) + "\n")
        except FileExistsError:
            pass
        key = key_path.read_text().strip()
        lines.append(f"{name}:{role}:sha256:{hashlib.sha256(key.encode()).hexdigest()}")
    tmp = directory / f".{LOCAL_KEYS_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# issued by riskloop in local mode; set RISKLOOP_API_KEYS or RISKLOOP_API_KEYS_FILE to issue your own\n")
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    log.info("issued local keys under %s: %s (admin) and %s (reviewer)", directory, LOCAL_SERVICE, person)
    return path


def cli_key(settings: "Settings") -> str | None:
    """The key the CLI and the DAG tasks act with: ``RISKLOOP_API_KEY``, else in local mode the local
    service's key."""
    if settings.api_key is not None and settings.api_key.get_secret_value().strip():
        return settings.api_key.get_secret_value().strip()
    if local_keys(settings) is not None:
        return (settings.home / "secrets" / SERVICE_KEY_FILE).read_text().strip()
    return None


class KeyRing:
    """The configured principals by key digest; :meth:`authenticate` is constant-time over all of them,
    and hands a JWT to the configured OIDC verifier."""

    def __init__(self, entries: Iterable[tuple[str | None, str, bytes, str]] = (),
                 oidc: "OidcVerifier | None" = None, names: dict[str, str] | None = None) -> None:
        names = names or {}
        self._entries: list[tuple[bytes, Principal]] = []
        seen: dict[str, str] = {}
        for name, role, digest, key_id in entries:
            name = name if name is not None else names.get(key_id)  # legacy fingerprint -> name map
            if name is not None:
                if name.casefold() in seen and seen[name.casefold()] != role:
                    log.info("principal %s holds keys for roles %s and %s", name, seen[name.casefold()], role)
                seen[name.casefold()] = role
            self._entries.append((digest, Principal(name=name, role=role, key_id=key_id)))
        self.oidc = oidc

    @classmethod
    def parse(cls, raw: str | None, extra_admin: str | None = None) -> "KeyRing":
        """``RISKLOOP_API_KEYS`` alone (plus the legacy single admin token)."""
        entries = parse_keys(raw)
        if extra_admin:
            entries.append((None, "admin", _digest(extra_admin), fingerprint(extra_admin)))
        return cls(entries)

    @classmethod
    def from_settings(cls, settings: "Settings", api_keys: str | None = None,
                      extra_admin: str | None = None) -> "KeyRing":
        """Every principal the deployment configures: ``api_keys`` (default ``settings.api_keys``), the
        keys file, the OIDC issuer, and the legacy fingerprint names of ``RISKLOOP_REVIEW_IDENTITIES``."""
        raw = api_keys if api_keys is not None else settings.api_keys
        entries = parse_keys(raw)
        if settings.api_keys_file is not None:
            entries += read_keys_file(Path(settings.api_keys_file))
        elif api_keys is None and (local := local_keys(settings)) is not None:
            entries += read_keys_file(local)
        if extra_admin:
            entries.append((None, "admin", _digest(extra_admin), fingerprint(extra_admin)))
        return cls(entries, oidc=OidcVerifier.from_settings(settings), names=dict(settings.review_identities))

    def __len__(self) -> int:
        return len(self._entries) + (1 if self.oidc is not None else 0)

    def principals(self) -> list[Principal]:
        return [p for _, p in self._entries]

    def authenticate(self, token: str) -> Principal | None:
        """The principal a bearer token identifies, or None."""
        presented = _digest(token)
        found: Principal | None = None
        for digest, principal in self._entries:  # no early exit: same work whichever key matches
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        if found is None and self.oidc is not None and token.count(".") == 2:
            found = self.oidc.verify(token)
        return found


@dataclass(frozen=True)
class OidcVerifier:
    """Verifies RS/ES-signed JWTs from one issuer for one audience; name and role from configured claims."""

    issuer: str
    audience: str
    name_claim: str
    role_claim: str
    algorithms: tuple[str, ...]
    public_key: str | None = None
    jwks_url: str | None = None

    @classmethod
    def from_settings(cls, settings: "Settings") -> "OidcVerifier | None":
        if not settings.oidc_issuer:
            return None
        if not settings.oidc_audience:
            raise IdentityError("RISKLOOP_OIDC_ISSUER is set without RISKLOOP_OIDC_AUDIENCE: tokens for any audience "
                                "of that issuer would be accepted")
        pem = settings.oidc_public_key
        if pem and not pem.lstrip().startswith("-----BEGIN"):
            pem = Path(pem).read_text(encoding="utf-8")  # a path to the PEM file
        if not pem and not settings.oidc_jwks_url:
            raise IdentityError("RISKLOOP_OIDC_ISSUER needs RISKLOOP_OIDC_JWKS_URL or RISKLOOP_OIDC_PUBLIC_KEY")
        return cls(issuer=settings.oidc_issuer, audience=settings.oidc_audience, name_claim=settings.oidc_name_claim,
                   role_claim=settings.oidc_role_claim, algorithms=tuple(settings.oidc_algorithms),
                   public_key=pem or None, jwks_url=settings.oidc_jwks_url)

    def _key(self, token: str) -> Any:
        if self.public_key is not None:
            return self.public_key
        return _jwks_client(self.jwks_url).get_signing_key_from_jwt(token).key

    def verify(self, token: str) -> Principal | None:
        import jwt

        try:
            claims = jwt.decode(token, self._key(token), algorithms=list(self.algorithms), audience=self.audience,
                                issuer=self.issuer, options={"require": ["exp", "iss", "aud"]})
        except (jwt.PyJWTError, ValueError) as exc:
            log.info("bearer JWT refused: %s", type(exc).__name__)
            return None
        name, role = _claim(claims, self.name_claim), _claim(claims, self.role_claim)
        if isinstance(role, list):  # an IdP group list: the first that is a riskloop role
            role = next((r for r in role if isinstance(r, str) and r.lower() in ROLES), None)
        if not isinstance(name, str) or not _NAME.fullmatch(name) or not isinstance(role, str) or role.lower() not in ROLES:
            log.info("bearer JWT from %s lacks a usable %s / %s claim", self.issuer, self.name_claim, self.role_claim)
            return None
        key_id = "jwt-" + hashlib.sha256(f"{claims['iss']}\0{claims.get('sub', name)}".encode()).hexdigest()[:8]
        return Principal(name=name, role=role.lower(), key_id=key_id)


def _claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by dotted path (``realm_access.roles``)."""
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


_JWKS: dict[str, Any] = {}


def _jwks_client(url: str | None) -> Any:
    import jwt

    if url not in _JWKS:  # PyJWKClient caches the fetched keys itself
        _JWKS[url] = jwt.PyJWKClient(url, cache_keys=True)
    return _JWKS[url]


def cli_principal(settings: "Settings", action: str | None = None) -> Principal:
    """The principal the CLI acts as: its configured key (``RISKLOOP_API_KEY``) resolved against the
    configured principals. With ``action``, also checked to be allowed to do it (:func:`authorize`)."""
    key = cli_key(settings) or ""
    if not key.strip():
        raise IdentityError("RISKLOOP_API_KEY is not set: the CLI acts as the principal of its key "
                            "(issued as name:role:key in RISKLOOP_API_KEYS or RISKLOOP_API_KEYS_FILE)")
    ring = KeyRing.from_settings(settings)
    if len(ring) == 0:
        raise IdentityError("RISKLOOP_API_KEY is set but no principals are configured "
                            "(RISKLOOP_API_KEYS, RISKLOOP_API_KEYS_FILE or RISKLOOP_OIDC_ISSUER)")
    principal = ring.authenticate(key.strip())
    if principal is None:
        raise IdentityError(f"RISKLOOP_API_KEY (fingerprint {fingerprint(key.strip())}) is not a configured key")
    return authorize(principal, action) if action is not None else principal
