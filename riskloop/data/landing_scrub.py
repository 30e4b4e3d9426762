"""Landed files keep no card number in clear: they are tokenised in place when riskloop takes them in.

A processor's files may carry card numbers *to* riskloop (Parquet exports, processor webhook
archives, score-request replays, settlement CSVs). The warehouse only ever gets tokens
(``riskloop.core.pan``); this module makes the files themselves hold tokens too, so the landing and
batch directories are no PAN store either (``riskloop audit pan`` checks them by default):

- **Parquet**: the card edge of ingest (:func:`riskloop.core.pan.scrub_arrow`) — a card-number column
  becomes ``card_token``/``card_bin``/``card_last4``, CVV/track/PIN columns are dropped, a number in
  any other string column becomes its token — and the file is rewritten with the result;
- **JSON lines / JSON**: each document through :func:`riskloop.core.pan.scrub`, the receiver's rule
  (``card.number`` → ``pan_token``/``bin``/``last4``, a number in any other string → its token), so
  a replay of the archive is still accepted by the receiver and the scoring API;
- **any other text** (CSV, logs): each number replaced by its token where it stands.

Rewrites are atomic (a temporary file beside it, then ``os.replace``) and idempotent: tokens are
keyed and deterministic, so a file tokenised twice, or loaded before and after, gives the same rows.
A line that holds no run of 12 digits is copied as it is, so a clean file costs one regex pass.
Binary files other than Parquet are left alone (and reported by the audit if they hold a number).

:func:`scrub_landing` remembers the files it found clean (size, modification time, inode: any
rewrite or replacement changes one of them) in ``<home>/run``, and reads only new or changed files
the next time: a landing of archives that were tokenised once is not scanned again on every run
(``riskloop audit pan`` still reads everything).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from riskloop.core import pan
from riskloop.core.config import Settings

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
Tokenizer = pan.PanTokenizer | Callable[[], pan.PanTokenizer]


@dataclass
class ScrubReport:
    """What :func:`scrub_landing` rewrote: file → card numbers (or fields) tokenised."""

    rewritten: dict[str, int] = field(default_factory=dict)
    files_scanned: int = 0
    skipped: list[str] = field(default_factory=list)  # binary files that are not Parquet
    files_unchanged: int = 0  # found clean before and not changed since: not read again

    def to_dict(self) -> dict[str, Any]:
        return {"files_scanned": self.files_scanned, "rewritten": self.rewritten, "skipped": self.skipped,
                "files_unchanged": self.files_unchanged}


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write a new version of ``path`` through ``write(tmp)`` and move it over the old one (same mode)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(path: Path, arrow: Any) -> None:
    """Rewrite a landed Parquet file with ``arrow`` (its scrubbed version)."""
    import pyarrow.parquet as pq

    replace_atomically(path, lambda tmp: pq.write_table(arrow, tmp))


def scrub_line(line: str, tok: Tokenizer, *, as_json: bool) -> tuple[str, int]:
    """One line of a landed text file, card numbers tokenised (JSON-aware when ``as_json``)."""
    escaped = as_json and "\\u" in line  # a JSON escape may spell a digit: parse to be sure
    if not escaped and not pan.has_pan(line):
        return line, 0
    if as_json:
        body = line.rstrip("\r\n")
        try:
            doc = json.loads(body)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, (dict, list)):
            tokenizer = tok if isinstance(tok, pan.PanTokenizer) else tok()
            scrubbed, n = pan.scrub(doc, tokenizer)
            if not n:
                return line, 0
            return json.dumps(scrubbed, separators=(",", ":"), ensure_ascii=False) + line[len(body):], n
    return pan.tokenize_text(line, tok)


def scrub_text(data: bytes, tok: Tokenizer, *, as_json: bool = False) -> tuple[bytes, int]:
    """A landed text file's bytes with card numbers tokenised, and how many were; ``data`` itself when
    none. One regex pass over the whole text finds the lines to rewrite; the others are copied as they
    are. Raises :class:`UnicodeDecodeError` for a file that is not UTF-8 text."""
    text = data.decode("utf-8")
    starts = [start for start, _ in pan.pan_spans(text)]
    if as_json and "\\u" in text:  # a JSON escape may spell a digit: every line that has one is parsed too
        starts = sorted({*starts, *(m.start() for m in re.finditer(r"\\u", text))})
    if not starts:
        return data, 0
    out: list[str] = []
    done, total = 0, 0
    for pos in starts:
        if pos < done:  # on a line already rewritten
            continue
        begin = text.rfind("\n", 0, pos) + 1
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        new, n = scrub_line(text[begin:end], tok, as_json=as_json)
        out += [text[done:begin], new]
        done, total = end, total + n
    out.append(text[done:])
    return ("".join(out).encode("utf-8"), total) if total else (data, 0)


def scrub_file(path: Path, tok: Tokenizer) -> int:
    """Tokenise the card numbers of one landed file in place; returns how many (0: file untouched).
    Raises :class:`UnicodeDecodeError` for a binary file that is not Parquet, and
    :class:`riskloop.core.pan.InvalidPan` for a card-number column holding something else."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        arrow = pq.read_table(path)
        scrubbed = pan.scrub_arrow(arrow, tok)
        if scrubbed is arrow:
            return 0
        write_parquet(path, scrubbed)
        return max(1, arrow.num_rows)
    data = path.read_bytes()
    new, n = scrub_text(data, tok, as_json=path.suffix in JSON_SUFFIXES)
    if n:
        replace_atomically(path, lambda tmp: tmp.write_bytes(new))
    return n


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
    elif root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink() and not p.name.endswith(".tmp"):
                yield p


def once(tok: Tokenizer) -> Callable[[], pan.PanTokenizer]:
    """A factory that builds the tokenizer (reads the key) on first use only."""
    made: list[pan.PanTokenizer] = []

    def get() -> pan.PanTokenizer:
        if not made:
            made.append(tok if isinstance(tok, pan.PanTokenizer) else tok())
        return made[0]

    return get


def scrub_paths(paths: Iterable[Path], tok: Tokenizer, exclude: Iterable[Path] = ()) -> ScrubReport:
    """Tokenise every file under ``paths`` (but those in ``exclude``) in place (see the module docstring).
    A file that cannot be scrubbed (binary, unreadable Parquet, an invalid card-number column) is
    listed in ``skipped`` and logged; ingest reports the invalid column as a contract error."""
    import pyarrow as pa

    report = ScrubReport()
    get = once(tok)
    skip = {Path(p).resolve() for p in exclude}
    for root in paths:
        for path in _files(Path(root)):
            if path.resolve() in skip:
                continue
            report.files_scanned += 1
            try:
                n = scrub_file(path, get)
            except (UnicodeDecodeError, OSError, pa.ArrowException, pan.InvalidPan) as exc:
                log.warning("landed file %s not scrubbed: %s", path, type(exc).__name__)
                report.skipped.append(str(path))
                continue
            if n:
                report.rewritten[str(path)] = n
                log.warning("landed file %s rewritten in place: %d card numbers or card fields tokenised or dropped", path, n)
    return report


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def scrub_landing(settings: Settings, directory: str | Path | None = None, exclude: Iterable[Path] = ()) -> ScrubReport:
    """Tokenise the card numbers of every file in the landing directory (default: the settings');
    files found clean by an earlier call and unchanged since are not read again."""
    root = Path(directory) if directory is not None else settings.landing
    state = settings.run_dir / f"scrubbed-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}.json"
    try:
        seen = json.loads(state.read_text())
    except (OSError, ValueError):
        seen = {}
    skip = {Path(p).resolve() for p in exclude}
    files = [p for p in _files(root) if p.resolve() not in skip]
    # Stamped before reading: a file changed while (or after) it is scanned is read again next time.
    stamps = {p: _stamp(p) for p in files}
    todo = [p for p in files if seen.get(str(p)) != stamps[p]]
    report = scrub_paths(todo, lambda: pan.tokenizer(settings))
    report.files_unchanged = len(files) - len(todo)
    clean = {str(p): stamps[p] for p in files if str(p) not in report.rewritten and str(p) not in report.skipped}
    if clean != seen:
        state.parent.mkdir(parents=True, exist_ok=True)
        _write_state(state, json.dumps(clean))
    log.info("landing %s: %d files scanned (%d unchanged since found clean), %d rewritten with card numbers tokenised",
             root, report.files_scanned, report.files_unchanged, len(report.rewritten))
    return report


def _write_state(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
