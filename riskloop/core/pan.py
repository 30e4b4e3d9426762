"""Card numbers (PANs): the one place riskloop turns a PAN into something it may keep.

Every edge where card data can arrive — signed webhook bodies (``serving.webhooks``), score
requests (``serving.app``) and landed processor files (``riskloop.data.ingest``) — calls this module,
so "no PAN stored in clear" has one implementation to review:

- a PAN becomes a keyed **HMAC-SHA256 token** (``pant_<64 hex>``; the same card always gives the
  same token under one key, so features can still group by card), plus its **BIN** (first six
  digits) and **last four** for display and routing;
- **CVV/CVC, track data and PIN** fields are dropped on receipt, whatever their value;
- a number that fails the **Luhn** check (or is not 12–19 digits) is refused with
  :class:`InvalidPan` *before* anything is written: the caller answers 4xx or fails the load;
- a card number **anywhere else** — in a field or column whose name says nothing about cards, inside
  free text — is found by the one detector (:func:`find_pans`: Luhn-valid, in a scheme's IIN range
  and length) and replaced, where it stands, by its token (:func:`tokenize_text`). Names are a
  hint, not the rule: a sender's ``card_no`` or ``metadata.note`` is scrubbed like ``card.number``.

The first key comes from :class:`riskloop.core.config.Settings` (``RISKLOOP_PAN_TOKEN_KEY``). It must
never live in the warehouse database (a token table beside its key is a PAN table). In local mode only
(embedded Postgres, no ``RISKLOOP_DATABASE_URL``) a random key is generated once into
``<home>/secrets/pan_token_key`` (mode 0600), outside the database's data directory.

**Key rotation** (``riskloop pan rotate``, :mod:`riskloop.ops.pan_rotation`) adds keys to a **key ring**,
a JSON file beside it (``RISKLOOP_PAN_KEY_RING``, default ``<home>/secrets/pan_key_ring.json``, mode
0600); the last key is the current one. A token names its key: ``pant_<64 hex>`` is the first key's
(every token issued before any rotation keeps its meaning), ``pant_<kid>_<64 hex>`` a rotated key's.
A rotated key's token is the HMAC of the *previous key's token*, not of the PAN: riskloop keeps no
PAN, so a stored token can only be re-keyed from itself (:meth:`PanTokenizer.rekey`), and a PAN seen
after the rotation must give exactly the re-keyed token for joins across the rotation to hold. What
rotation buys: a leaked older key, alone, no longer lets anyone test PAN guesses against the tokens
riskloop stores (they need the newer key too). Every process re-reads the ring within
:data:`RING_RELOAD_SECONDS` of a change (one ``stat`` per interval), so a rotation needs no restart.

The detector used by ``riskloop audit pan`` (:func:`find_pans`) is the one the edges tokenise with, so
what the edges scrub and what the audit looks for agree on what a card number is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from riskloop.core.config import Settings

log = logging.getLogger(__name__)

TOKEN_PREFIX = "pant_"
KEY_FILE = "pan_token_key"
RING_FILE = "pan_key_ring.json"
MIN_KEY_CHARS = 16
FIRST_KID = "k0"  # the key of RISKLOOP_PAN_TOKEN_KEY / <home>/secrets/pan_token_key: tokens without a kid
RING_RELOAD_SECONDS = 1.0  # how stale a process's view of the ring may be (rotation waits longer before its last pass)
# A token of any key: pant_<hex> (the first key) or pant_k<n>_<hex>; group 1 is the kid (None for the first key).
TOKEN_PATTERN = re.compile(r"pant_(?:(k[1-9][0-9]*)_)?([0-9a-f]{64})")

# Field names (normalised: lower case, '_' and '-' removed) that carry a PAN anywhere in a JSON body
# or as a column of a landed file. "number" counts only inside a card object (see _is_pan_key).
PAN_KEYS = frozenset({"pan", "cardnumber", "primaryaccountnumber", "cardpan", "accountnumberpan"})
CARD_CONTAINERS = frozenset({"card", "paymentcard", "source", "paymentmethod", "cardholder", "cardpresent"})
# Sensitive authentication data (PCI DSS 3.2): never stored after authorisation, whatever the value.
SENSITIVE_KEYS = frozenset({
    "cvv", "cvv2", "cvc", "cvc2", "cid", "cav2", "securitycode", "cardsecuritycode", "cardverificationvalue",
    "track", "track1", "track2", "trackdata", "track1data", "track2data", "magstripe", "magneticstripe",
    "pin", "pinblock", "encryptedpinblock",
})


class InvalidPan(ValueError):
    """A field named as a card number holds something that is not a valid PAN (nothing is written)."""


class PanKeyMissing(RuntimeError):
    """No tokenisation key is configured (required outside local mode)."""


@lru_cache(maxsize=4096)  # the same few keys, over and over (every body of a processor)
def _norm(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


# --- what a card number is -------------------------------------------------------------------

def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# (brand, IIN prefix ranges as inclusive (low, high) on the first n digits, allowed lengths).
_BRANDS: tuple[tuple[str, tuple[tuple[int, int, int], ...], frozenset[int]], ...] = (
    ("amex", ((2, 34, 34), (2, 37, 37)), frozenset({15})),
    ("visa", ((1, 4, 4),), frozenset({13, 16, 19})),
    ("mastercard", ((2, 51, 55), (4, 2221, 2720)), frozenset({16})),
    ("discover", ((4, 6011, 6011), (3, 644, 649), (2, 65, 65), (6, 622126, 622925)), frozenset(range(16, 20))),
    ("jcb", ((4, 3528, 3589),), frozenset(range(16, 20))),
    ("diners", ((3, 300, 305), (4, 3095, 3095), (2, 36, 36), (2, 38, 39)), frozenset(range(14, 20))),
    ("unionpay", ((2, 62, 62), (2, 81, 81)), frozenset(range(16, 20))),
    ("maestro", ((2, 50, 50), (2, 56, 69)), frozenset(range(12, 20))),
    ("mir", ((4, 2200, 2204),), frozenset(range(16, 20))),
)


def brand(digits: str) -> str | None:
    """The card scheme whose IIN range and length ``digits`` fits, else None (not a card number)."""
    n = len(digits)
    for name, ranges, lengths in _BRANDS:
        if n in lengths and any(low <= int(digits[:k]) <= high for k, low, high in ranges):
            return name
    return None


def normalise(value: Any) -> str:
    """The PAN's digits: spaces and dashes removed; raises :class:`InvalidPan` if it cannot be one."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidPan(f"card number must be a string of digits, got {type(value).__name__}")
    digits = str(value).replace(" ", "").replace("-", "")
    if not digits.isascii() or not digits.isdigit() or not 12 <= len(digits) <= 19:
        raise InvalidPan("card number must be 12-19 digits (spaces and dashes allowed)")
    if not luhn_ok(digits):
        raise InvalidPan(f"card number ending {digits[-4:]} fails the Luhn check")
    return digits


def mask(digits: str) -> str:
    """``BIN…last4`` with the middle starred: what logs and reports may show."""
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


# --- tokenising ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CardRef:
    """What riskloop keeps of a card: the keyed token, the BIN and the last four digits."""

    token: str
    bin: str
    last4: str
    brand: str | None


@dataclass(frozen=True)
class PanKey:
    """One key of the ring; ``created_at`` is ISO 8601 (empty for the first key)."""

    kid: str
    key: bytes = field(repr=False)
    created_at: str = ""


def kid_of(token: str) -> str | None:
    """The kid a token was made with (``k0`` for a token without one); None if ``token`` is no riskloop token."""
    m = TOKEN_PATTERN.fullmatch(token)
    if m is None:
        return None
    return m.group(1) or FIRST_KID


def read_ring(path: Path) -> list[PanKey]:
    """The rotated keys of the ring file, oldest first (empty when there is no file)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return [PanKey(k["kid"], bytes.fromhex(k["key"]), k.get("created_at", "")) for k in doc["keys"]]


def add_ring_key(path: Path, kid: str) -> PanKey:
    """Append a new random key ``kid`` to the ring file and make it current (atomic replace, mode 0600).
    Idempotent: a kid already in the ring is returned as it is."""
    keys = read_ring(path)
    for k in keys:
        if k.kid == kid:
            return k
    new = PanKey(kid, secrets.token_hex(32).encode(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    doc = {"keys": [{"kid": k.kid, "key": k.key.hex(), "created_at": k.created_at} for k in (*keys, new)]}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(doc, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    log.info("PAN key ring %s: %s added and current", path, kid)
    return new


class PanTokenizer:
    """Keyed HMAC-SHA256 tokenisation under the current key of the ring; one instance per process
    component. With a ring file it re-reads the ring when the file changes (checked at most every
    :data:`RING_RELOAD_SECONDS`), so a long-running process follows a rotation without a restart."""

    def __init__(self, key: bytes, ring_file: Path | None = None) -> None:
        if len(key) < MIN_KEY_CHARS:
            raise PanKeyMissing(f"the PAN token key must be at least {MIN_KEY_CHARS} bytes")
        self._first = PanKey(FIRST_KID, key)
        self._ring_file = ring_file
        self._keys: tuple[PanKey, ...] = (self._first,)
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._started = False
        self._refresh(force=True)
        self._started = True

    def __repr__(self) -> str:  # never the key
        return f"PanTokenizer(<key>, current={self.current_kid})"

    def _refresh(self, force: bool = False) -> None:
        if self._ring_file is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < RING_RELOAD_SECONDS:
            return
        with self._lock:
            self._checked = now
            try:
                st = self._ring_file.stat()
                stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp == self._stamp and not force:
                return
            try:
                ring = read_ring(self._ring_file)
            except (ValueError, KeyError, TypeError, OSError) as exc:
                if not self._started:  # at start: no current key to go on with
                    raise PanKeyMissing(f"the PAN key ring {self._ring_file} cannot be read: {exc}") from None
                log.error("the PAN key ring %s cannot be read (%s): still using %s", self._ring_file, exc,
                          self._keys[-1].kid)
                return
            self._keys = (self._first, *ring)
            self._stamp = stamp

    @property
    def keys(self) -> tuple[PanKey, ...]:
        self._refresh()
        return self._keys

    @property
    def current_kid(self) -> str:
        return self.keys[-1].kid

    def reload(self) -> None:
        """Re-read the ring now (a reader that met a token of a kid it does not know yet)."""
        self._refresh(force=True)

    def token(self, digits: str) -> str:
        keys = self.keys
        tok = TOKEN_PREFIX + hmac.new(keys[0].key, digits.encode("ascii"), hashlib.sha256).hexdigest()
        for k in keys[1:]:
            tok = _wrap(k, tok)
        return tok

    def rekey(self, token: str) -> str:
        """``token`` (of any key of the ring) as the current key makes it for the same card; a string
        that is no riskloop token is returned as it is. Raises KeyError for a kid the ring lacks."""
        kid = kid_of(token)
        if kid is None:
            return token
        keys = self.keys
        kids = [k.kid for k in keys]
        if kid not in kids:
            self.reload()
            keys = self._keys
            kids = [k.kid for k in keys]
        for k in keys[kids.index(kid) + 1:]:
            token = _wrap(k, token)
        return token

    def rekey_text(self, text: str) -> tuple[str, int]:
        """``text`` with every token in it re-keyed (:meth:`rekey`); returns ``(text, tokens changed)``."""
        if TOKEN_PREFIX not in text:
            return text, 0
        changed = 0

        def sub(m: re.Match[str]) -> str:
            nonlocal changed
            new = self.rekey(m.group(0))
            changed += new != m.group(0)
            return new

        return TOKEN_PATTERN.sub(sub, text), changed

    def tokenize(self, value: Any) -> CardRef:
        """Validate (Luhn) and tokenise one PAN; raises :class:`InvalidPan`."""
        digits = normalise(value)
        return CardRef(token=self.token(digits), bin=digits[:6], last4=digits[-4:], brand=brand(digits))


def _wrap(key: PanKey, token: str) -> str:
    """The token one rotation later: ``pant_<kid>_`` + HMAC(key, previous token)."""
    return f"{TOKEN_PREFIX}{key.kid}_" + hmac.new(key.key, token.encode("ascii"), hashlib.sha256).hexdigest()


def scrub(obj: Any, pan: PanTokenizer | None, *, free_text: bool = True) -> tuple[Any, int]:
    """A copy of a parsed JSON document with every card number tokenised and every CVV/track/PIN
    field dropped; returns ``(document, numbers and fields changed)``.

    A field *named* as a card number is replaced, in the same object, by ``pan_token``, ``bin`` and
    ``last4``. Any other string (or key, or integer of 12+ digits) holding a card number has it
    replaced where it stands by the token (:func:`tokenize_text`), whatever the name.
    ``free_text=False`` skips that scan: for a caller that knows the document's text holds no run of
    12 digits (:func:`may_hold_pan` on the raw text). Raises :class:`InvalidPan` (a field named as
    a card number that is not one) or, when ``pan`` is None and a card number is present,
    :class:`PanKeyMissing`."""
    changed = 0

    def text(value: str) -> str:
        nonlocal changed
        if not free_text or len(value) < 12 or not may_hold_pan(value):
            return value
        new, n = tokenize_text(value, pan)
        changed += n
        return new

    def walk(node: Any, parent: str) -> Any:
        nonlocal changed
        if isinstance(node, str):
            return text(node)
        if isinstance(node, int) and not isinstance(node, bool) and 10**11 <= node < 10**19:
            new = text(str(node))  # a card number sent as a JSON number
            return node if new.isdigit() else new
        if isinstance(node, list):
            return [walk(v, parent) for v in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        refs: list[CardRef] = []
        for key, value in node.items():
            k = _norm(key)
            if k in SENSITIVE_KEYS:
                changed += 1
                continue
            if (k in PAN_KEYS or (k == "number" and parent in CARD_CONTAINERS)) and value is not None:
                if pan is None:
                    normalise(value)  # an invalid number is still the sender's error
                    raise PanKeyMissing("a card number arrived but no PAN token key is configured")
                refs.append(pan.tokenize(value))
                changed += 1
                continue
            out[text(key)] = walk(value, k)
        for ref in refs:
            out["pan_token"], out["bin"], out["last4"] = ref.token, ref.bin, ref.last4
        return out

    return walk(obj, ""), changed


def key_file(settings: Settings) -> Path:
    return settings.home / "secrets" / KEY_FILE


def ring_file(settings: Settings) -> Path:
    """The key ring of rotated keys: ``RISKLOOP_PAN_KEY_RING``, else ``<home>/secrets/pan_key_ring.json``."""
    return settings.pan_key_ring or settings.home / "secrets" / RING_FILE


def tokenizer(settings: Settings) -> PanTokenizer:
    """The tokenizer for these settings: the first key from ``RISKLOOP_PAN_TOKEN_KEY``, else (local mode
    only) the key generated once under ``<home>/secrets``, plus the rotated keys of :func:`ring_file`.
    Raises :class:`PanKeyMissing` when there is no first key."""
    if settings.pan_token_key is not None:
        return PanTokenizer(settings.pan_token_key.get_secret_value().encode(), ring_file(settings))
    if not settings.embedded:
        raise PanKeyMissing("RISKLOOP_PAN_TOKEN_KEY must be set when riskloop runs on a configured Postgres "
                            "(RISKLOOP_DATABASE_URL); a local key is generated only in local mode")
    from riskloop.core.secretfiles import read_or_create

    return PanTokenizer(read_or_create(key_file(settings)).encode(), ring_file(settings))


# --- finding card numbers (riskloop audit pan) -------------------------------------------------

# 12-19 ASCII digits, optionally in groups separated by one space or dash, not touching another word
# character (so hex digests, uuids and longer digit runs are not read as card numbers).
PAN_PATTERN = re.compile(r"(?<![\w.-])[0-9](?:[ -]?[0-9]){11,18}(?![\w-]|\.[0-9])")
# The same, loosely, for a prefilter (POSIX/RE2 regex, no look-around) in SQL and Arrow: a value only
# goes through the detector when some 12+ digit run (spaces/dashes allowed) exists in it.
SQL_PREFILTER = r"[0-9]([ -]?[0-9]){11,18}"
# The cheap test every string of a request passes first: most hold no run of 12 digits at all.
_DIGIT_RUN = re.compile(r"[0-9](?:[ -]?[0-9]){11}")


@dataclass(frozen=True)
class PanHit:
    """A Luhn-valid, IIN-plausible number found somewhere; ``masked`` is all that is ever shown."""

    masked: str
    brand: str


def _pan_matches(text: str) -> Iterator[tuple[re.Match[str], str, str]]:
    """(match, digits, brand) of every card number in ``text``."""
    for m in PAN_PATTERN.finditer(text):
        raw = m.group(0)
        seps = {c for c in raw if not c.isdigit()}
        if len(seps) > 1:
            continue
        digits = raw.replace(" ", "").replace("-", "")
        kind = brand(digits)
        if kind is not None and luhn_ok(digits):
            yield m, digits, kind


def may_hold_pan(text: str) -> bool:
    """False when ``text`` has no run of 12 digits (spaces/dashes allowed): then it holds no card number."""
    return _DIGIT_RUN.search(text) is not None


def pan_spans(text: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of every card number in ``text`` (one regex pass over the whole text)."""
    for m, _, _ in _pan_matches(text):
        yield m.span()


def has_pan(text: str) -> bool:
    """True when ``text`` holds a card number (:func:`find_pans` finds one)."""
    return may_hold_pan(text) and next(_pan_matches(text), None) is not None


def find_pans(text: str) -> Iterator[PanHit]:
    """Card numbers in free text: Luhn-valid and inside a scheme's IIN range and length.

    The IIN check is what keeps ids and epoch milliseconds (13 digits starting with 1) out.
    Grouping must be consistent (all separators the same character) to count.
    """
    for _, digits, kind in _pan_matches(text):
        yield PanHit(masked=mask(digits), brand=kind)


def tokenize_text(text: str, pan: PanTokenizer | Callable[[], PanTokenizer] | None) -> tuple[str, int]:
    """``text`` with every card number in it (what :func:`find_pans` finds) replaced, where it stands,
    by its keyed token; returns ``(text, numbers replaced)``. ``pan`` may be a factory, called only
    when a number is found; None then raises :class:`PanKeyMissing`."""
    if not may_hold_pan(text):
        return text, 0
    parts: list[str] = []
    end = 0
    tok: PanTokenizer | None = None
    for m, digits, _ in _pan_matches(text):
        if tok is None:
            if pan is None:
                raise PanKeyMissing("a card number arrived but no PAN token key is configured")
            tok = pan if isinstance(pan, PanTokenizer) else pan()
        parts += [text[end:m.start()], tok.token(digits)]
        end = m.end()
    if tok is None:
        return text, 0
    parts.append(text[end:])
    return "".join(parts), len(parts) // 2


def tokenize_fields(values: dict[str, Any], pan: PanTokenizer | None) -> dict[str, Any]:
    """The entries of a parsed request whose value holds a card number under any name, scrubbed
    (:func:`scrub`); empty (the usual case, cheaply) when there is none. The caller applies them."""
    changed: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, str):
            if len(value) >= 12 and may_hold_pan(value):
                new, n = tokenize_text(value, pan)
                if n:
                    changed[name] = new
        elif isinstance(value, (dict, list)):
            new, n = scrub(value, pan)
            if n:
                changed[name] = new
    return changed


# --- landed files ----------------------------------------------------------------------------

def _string_columns(arrow: Any) -> Iterator[tuple[int, str]]:
    import pyarrow as pa

    for i, field_ in enumerate(arrow.schema):
        if pa.types.is_string(field_.type) or pa.types.is_large_string(field_.type):
            yield i, field_.name


def arrow_pan_rows(arrow: Any) -> Iterator[tuple[str, int, PanHit]]:
    """``(column, row, hit)`` for every card number in a string column of an Arrow table; a vectorised
    prefilter keeps the Python detector off every value without a 12+ digit run."""
    import pyarrow.compute as pc

    for i, name in _string_columns(arrow):
        col = arrow.column(i)
        candidates = pc.match_substring_regex(col, SQL_PREFILTER)
        if not pc.any(candidates).as_py():
            continue
        rows = pc.indices_nonzero(pc.fill_null(candidates, False)).to_pylist()
        values = col.take(rows).to_pylist()
        for row, value in zip(rows, values, strict=True):
            for hit in find_pans(value):
                yield name, row, hit


def tokenize_arrow_text(arrow: Any, pan: PanTokenizer | Callable[[], PanTokenizer] | None) -> tuple[Any, int]:
    """An Arrow table with every card number in any string column replaced by its token
    (:func:`tokenize_text`), and how many were; the same table object when there was none."""
    import pyarrow as pa
    import pyarrow.compute as pc

    replaced = 0
    tok: list[PanTokenizer] = []

    def tokenizer_once() -> PanTokenizer:
        if not tok:
            if pan is None:
                raise PanKeyMissing("a card number arrived but no PAN token key is configured")
            tok.append(pan if isinstance(pan, PanTokenizer) else pan())
        return tok[0]

    for i, name in list(_string_columns(arrow)):
        col = arrow.column(i)
        candidates = pc.match_substring_regex(col, SQL_PREFILTER)
        if not pc.any(candidates).as_py():
            continue
        values = col.to_pylist()
        n_col = 0
        for row in pc.indices_nonzero(pc.fill_null(candidates, False)).to_pylist():
            values[row], n = tokenize_text(values[row], tokenizer_once)
            n_col += n
        if n_col:
            log.warning("tokenised %d card numbers in column %r (not a card-number column)", n_col, name)
            arrow = arrow.set_column(i, name, pa.array(values, col.type))
            replaced += n_col
    return arrow, replaced


def rekey_arrow(arrow: Any, pan: PanTokenizer | Callable[[], PanTokenizer]) -> Any:
    """An Arrow table whose token columns (``card_token``, ``pan_token``) hold only the current key's
    tokens: a file landed (or replayed) after a rotation with tokens of an older key joins like the
    rest. The same table object when nothing was older; ``pan`` (a factory) is called only then."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, name in enumerate(arrow.column_names):
        col = arrow.column(i)
        if name not in ("card_token", "pan_token") or not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        older = pc.match_substring_regex(col, r"^pant_([0-9a-f]{64}|k[1-9][0-9]*_[0-9a-f]{64})$")
        if not pc.any(older).as_py():
            continue
        tok = pan if isinstance(pan, PanTokenizer) else pan()
        distinct = pc.unique(col).drop_null().to_pylist()
        new = pa.array([tok.rekey(v) for v in distinct], col.type)
        if new.to_pylist() == distinct:
            continue
        arrow = arrow.set_column(i, name, new.take(pc.index_in(col, value_set=pa.array(distinct, col.type))))
    return arrow


def scrub_arrow(arrow: Any, pan: PanTokenizer | Callable[[], PanTokenizer], token_column: str = "card_token") -> Any:
    """A landed file's Arrow table with CVV/track/PIN columns dropped, a PAN column (e.g.
    ``card_number``) replaced by ``token_column`` (the keyed token), ``card_bin`` and ``card_last4``,
    and a card number in any other string column replaced by its token (:func:`tokenize_arrow_text`).
    The same table object when there was nothing to change.

    ``pan`` may be a factory, called only when a card number is present (most files have none).
    Tokenises each distinct PAN once. Raises :class:`InvalidPan` naming the column and row count.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names = arrow.column_names
    drop = [n for n in names if _norm(n) in SENSITIVE_KEYS]
    pans = [n for n in names if _norm(n) in PAN_KEYS]
    if drop:
        log.info("dropped sensitive card columns on receipt: %s", drop)
        arrow = arrow.drop_columns(drop)
    if not pans:
        return tokenize_arrow_text(arrow, pan)[0]
    if len(pans) > 1 or token_column in names:
        raise InvalidPan(f"a file may carry one card-number column and no {token_column!r} beside it "
                         f"(found {pans + [n for n in names if n == token_column]})")
    tok = pan if isinstance(pan, PanTokenizer) else pan()
    col = pc.cast(arrow.column(pans[0]), pa.string())
    distinct = pc.unique(col).drop_null().to_pylist()
    refs: dict[str, CardRef] = {}
    bad = 0
    for value in distinct:
        try:
            refs[value] = tok.tokenize(value)
        except InvalidPan:
            bad += 1
    if bad:
        raise InvalidPan(f"column {pans[0]!r}: {bad} distinct values are not valid card numbers "
                         "(12-19 digits, Luhn); nothing loaded")
    index = pc.index_in(col, value_set=pa.array(distinct, pa.string()))

    def take(attr: str) -> Any:
        return pa.array([getattr(refs[v], attr) for v in distinct], pa.string()).take(index)

    position = arrow.column_names.index(pans[0])
    arrow = arrow.remove_column(position)
    for offset, (name, attr) in enumerate(((token_column, "token"), ("card_bin", "bin"), ("card_last4", "last4"))):
        arrow = arrow.add_column(position + offset, name, take(attr))
    return tokenize_arrow_text(arrow, tok)[0]
