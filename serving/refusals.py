"""Models serving refused: kept on the app state for ``/readyz`` and paged to on-call.

A registry alias that points at a version serving will not let decide (no promotion decision for
its bytes, no running canary of it, an artifact that is not plain data: :class:`serving.model.ModelRefused`)
is an incident, not a log line: someone moved it outside the gate, or the record and the registry
disagree. The model served before stays; ``/readyz`` lists the refusal under ``refused_models``
until the alias points at a cleared model again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from serving.model import LoadedModel, ModelRefused

log = logging.getLogger(__name__)

ALERT_KIND = "model_refused"


def refused(st: Any, key: str, exc: ModelRefused, serving: LoadedModel | None) -> None:
    """Record a refused model under ``key`` (``fraud:champion``, ``fraud:challenger``, ``credit:champion``;
    ``/readyz`` lists them in ``refused_models``) and page on-call, once per version and content hash
    (the poller meets the same refusal again every poll until someone acts). Blocking (the alert
    sinks): call it off the event loop."""
    from riskloop.core.alerts import notify

    before = st.refused.get(key)
    entry = {"key": key, "model_name": exc.name, "alias": exc.alias, "version": exc.version,
             "content_hash": exc.content_hash, "reason": exc.reason,
             "serving_version": serving.version if serving is not None else None,
             "since": before["since"] if before and before["version"] == exc.version
             else datetime.now(UTC).isoformat()}
    st.refused[key] = entry
    log.error("%s; %s", exc, f"still serving v{serving.version}" if serving is not None else "no model serves it")
    if before is not None and (before["version"], before["content_hash"]) == (exc.version, exc.content_hash):
        return
    keeps = (f"v{serving.version} keeps serving" if serving is not None
             else "nothing serves in its place (rules only)")
    notify(st.settings, ALERT_KIND, f"{exc.name}@{exc.alias}",
           f"{exc.name}@{exc.alias} points at v{exc.version}, which serving refused: {exc.reason}; {keeps}",
           details=entry)


def cleared(st: Any, key: str) -> None:
    """``key`` serves a cleared model again: its refusal is over."""
    if st.refused.pop(key, None) is not None:
        log.warning("%s: the refused model is no longer asked for; the refusal is over", key)
