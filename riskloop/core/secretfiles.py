"""Secrets riskloop generates for itself in local mode, one file each under ``<home>/secrets``.

The directory is 0700 and each file 0600, outside the database's data directory; a file is written
once (``O_EXCL``), so two processes starting at the same moment agree on one value.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)


def secrets_dir(home: Path) -> Path:
    return home / "secrets"


def read_or_create(path: Path, nbytes: int = 32) -> str:
    """The secret kept in ``path``, generated (``nbytes`` random bytes as hex) if the file is missing."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(nbytes) + "\n")
    log.info("generated %s (mode 0600)", path)
    return path.read_text().strip()
