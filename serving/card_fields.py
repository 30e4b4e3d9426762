"""Card numbers sent under another name in a score request (``device_id``, an id, an applicant field).

The ``pan`` field is the place for a card number; a client that puts one elsewhere must not get it
stored in clear. Every string of the parsed request goes through the one detector
(``riskloop.core.pan``); a number found is replaced where it stands by its keyed token, before anything
reads or logs the request. The usual request holds no 12-digit run: one regex search per string.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel

from riskloop.core.pan import PanKeyMissing, PanTokenizer, tokenize_fields

log = logging.getLogger(__name__)

BodyT = TypeVar("BodyT", bound=BaseModel)


def card_numbers_elsewhere(pan: PanTokenizer | None, body: BodyT, req: dict[str, Any],
                           request_id: str) -> tuple[BodyT, dict[str, Any]]:
    """``(body, req)`` with card numbers outside ``pan`` tokenised; ``req`` is ``body``'s JSON dump
    (what is logged). 503 when a number is found but no token key is configured."""
    try:
        changed = tokenize_fields(req, pan)
    except PanKeyMissing:
        raise HTTPException(503, detail={"error": "pan_tokenization_unavailable",
                                         "detail": "a card number arrived but no PAN token key is configured"}) from None
    if not changed:
        return body, req
    log.warning("score request %s: card number in field(s) %s tokenised", request_id, sorted(changed))
    # validated again from the scrubbed values, so a nested model (a credit applicant) stays a model
    return type(body).model_validate({**dict(body), **changed}), {**req, **changed}
