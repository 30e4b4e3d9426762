"""Text Postgres cannot store, found before it is accepted.

``text`` refuses the NUL character and ``jsonb`` refuses the ``\\u0000`` escape; neither (nor
UTF-8 itself) can hold a lone UTF-16 surrogate, which Python's ``json`` happily decodes from
``"\\ud800"``. A value carrying either is accepted by a schema that only checks lengths and then
fails every write it is batched with, so each edge (scoring, webhooks, cases, landed files)
refuses it with this one check, and names where it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, model_validator

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class UnstorableText(ValueError):
    """A value holds text Postgres cannot store; the message says where and why."""


def text_problem(text: str) -> str | None:
    """Why Postgres cannot store ``text`` (None when it can)."""
    m = _UNSTORABLE.search(text)
    if m is None:
        return None
    if m.group() == "\x00":
        return "contains a NUL character (\\u0000), which Postgres cannot store"
    return f"contains a lone surrogate (\\u{ord(m.group()):04x}), which is not valid Unicode text"


def escape_unstorable(text: str) -> str:
    """``text`` with what Postgres cannot store written as ``\\uXXXX`` escapes (for error messages
    and set-aside rows, which must be storable whatever they describe)."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def find_unstorable(value: Any, path: str = "") -> str | None:
    """The first string (key or value) in a JSON-like ``value`` Postgres cannot store, as
    ``"<path>: <why>"`` (e.g. ``"metadata.note: contains a NUL character …"``); None if there is none.
    Walks mappings, lists, tuples and pydantic models."""
    if isinstance(value, str):
        problem = text_problem(value)
        return f"{path or 'value'}: {problem}" if problem else None
    if isinstance(value, BaseModel):
        value = value.__dict__
    if isinstance(value, Mapping):
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and (problem := text_problem(k)):
                return f"{path or 'key'} key {k!r}: {problem}"
            if (found := find_unstorable(v, where)) is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if (found := find_unstorable(v, f"{path}[{i}]")) is not None:
                return found
    return None


def check_storable(value: Any, path: str = "") -> None:
    """Raise :class:`UnstorableText` if ``value`` holds text Postgres cannot store."""
    if (found := find_unstorable(value, path)) is not None:
        raise UnstorableText(found)


class StorableModel(BaseModel):
    """A request model whose every string (nested models, dicts and lists included) Postgres can
    store: anything else fails validation, so the API answers 422 before anything is stored."""

    @model_validator(mode="after")
    def _storable(self) -> StorableModel:
        # On the scoring path: flat strings are checked inline, only containers are walked.
        search = _UNSTORABLE.search
        for value in self.__dict__.values():
            if value.__class__ is str:
                if search(value):
                    check_storable(self)
            elif isinstance(value, BaseModel | Mapping | list | tuple):
                check_storable(self)
        return self
