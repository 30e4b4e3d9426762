"""Object storage behind one small interface: S3 (any S3-compatible endpoint, through boto3) or
a local directory, the embedded default.

Processors deliver batch files to a bucket; riskloop lists, reads and moves them (incoming →
archive or rejected). The local adapter has the same semantics (keys are ``/``-separated paths
under a root, ``last_modified`` is the file's mtime) so the embedded stack needs no S3 server and
the code path above it is the same.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from riskloop.core.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime


class ObjectStore(Protocol):
    """What the batch-file loader needs from a bucket."""

    url: str

    def list(self, prefix: str) -> list[ObjectInfo]: ...

    def get(self, key: str) -> bytes: ...

    def put(self, key: str, data: bytes) -> None: ...

    def move(self, src: str, dst: str) -> None: ...


class S3Store:
    """A bucket (and key prefix) through boto3; ``endpoint_url`` for S3-compatible servers."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 client: Any | None = None) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._full(prefix)):
            for obj in page.get("Contents", []):
                out.append(ObjectInfo(self._rel(obj["Key"]), int(obj["Size"]),
                                      obj["LastModified"].astimezone(timezone.utc)))
        return sorted(out, key=lambda o: o.key)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)

    def move(self, src: str, dst: str) -> None:
        """Copy then delete (S3 has no rename): a crash in between leaves a copy, never a loss."""
        self.client.copy_object(Bucket=self.bucket, Key=self._full(dst),
                                CopySource={"Bucket": self.bucket, "Key": self._full(src)})
        self.client.delete_object(Bucket=self.bucket, Key=self._full(src))


class LocalStore:
    """A directory as a bucket: keys are relative paths, moves are atomic renames."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = self.root.as_uri() if self.root.is_absolute() else str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key {key!r} escapes the store's root {self.root}")
        return path

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.root / prefix
        if not base.exists():
            return []
        out = []
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            st = path.stat()
            out.append(ObjectInfo(path.relative_to(self.root).as_posix(), st.st_size,
                                  datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)))
        return out

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see half a file

    def move(self, src: str, dst: str) -> None:
        target = self._path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._path(src).replace(target)


def open_store(settings: Settings) -> ObjectStore:
    """The batch-file store of the settings: ``s3://bucket/prefix``, ``file://`` or a directory."""
    url = settings.batch_store
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"RISKLOOP_BATCH_URL {url!r} names no bucket")
        return S3Store(parts.netloc, parts.path, endpoint_url=settings.s3_endpoint_url)
    if parts.scheme == "file":
        return LocalStore(parts.path)
    if parts.scheme:
        raise ValueError(f"RISKLOOP_BATCH_URL: unsupported scheme {parts.scheme!r} (s3://, file:// or a path)")
    return LocalStore(url)
