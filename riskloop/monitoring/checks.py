"""What a monitor run checks: a model's input drift and realised performance, the decision
stream's tripwires and the case queue, as :class:`~riskloop.core.alerts.Check` s through the incident state machine."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

from riskloop.core.alerts import Alert, Check, process, report_url
from riskloop.core.config import Settings
from riskloop.monitoring import case_checks
from riskloop.monitoring.drift import ColumnDrift, DriftResult, performance_text
from riskloop.monitoring.tripwires import evaluate
from riskloop.monitoring.watch import watcher_alive

log = logging.getLogger(__name__)


def check_and_alert(settings: Settings, drifts: Sequence[DriftResult] = ()) -> list[Alert]:
    """The monitor job's alerting step: the drift and realised-performance checks of each model whose
    drift was assessed (fraud, credit: one incident key per model), the decision-stream tripwires
    (unless a watcher evaluates them, :mod:`riskloop.monitoring.watch`) and the case queue's checks,
    once, through the state machine and the sinks. Shared by ``riskloop monitor`` and the DAG."""
    checks = [c for d in drifts for c in (drift_check(settings, d), performance_check(settings, d))]
    if watcher_alive(settings):  # the watcher judges the tripwires every minute: one window feeds their state
        log.info("tripwires: left to the running watcher (riskloop watch)")
    else:
        checks += evaluate(settings)
    return process(settings, checks + case_checks.evaluate(settings))


# --- drift → check -----------------------------------------------------------------------------

def _breaches(col: "ColumnDrift", threshold: float | None) -> bool:
    """Evidently's own verdict, or the operator's threshold for this input in the method's sense."""
    if threshold is None or col.score is None:
        return col.drifted
    return col.score < threshold if "p_value" in col.method else col.score >= threshold


def drift_check(settings: Settings, result: "DriftResult") -> Check:
    """One check per model (all its inputs grouped: one shift of many features is one incident)."""
    key = result.model_name
    link = report_url(settings, result.report_path)
    if result.verdict == "insufficient_data" or result.n_current < settings.alert_min_samples:
        return Check("input_drift", key, None, f"{result.model_name} v{result.model_version}: {result.n_current} "
                     f"scored rows (< {settings.alert_min_samples}): drift not judged", report_url=link)
    thresholds = settings.alert_feature_thresholds
    tripped = {f: c for f, c in result.per_feature.items() if _breaches(c, thresholds.get(f))}
    score_tripped = result.score_drift is not None and _breaches(result.score_drift, thresholds.get("score"))
    # Each input is a separate test: among a few dozen, one or two cross Evidently's own threshold on
    # an unchanged world by chance. Those page only together (the share the drift verdict warns from);
    # an input the operator gave a threshold of its own pages alone, and so does the model's score.
    own = [f for f in tripped if f in thresholds]
    pages = bool(own) or score_tripped or (
        bool(result.features) and len(tripped) / len(result.features) >= result.warning_share)
    parts = [f"{f} {c.method}={_fmt(c.score)} (threshold {_fmt(thresholds.get(f, c.threshold))})"
             for f, c in tripped.items()]
    if score_tripped:
        c = result.score_drift
        parts.append(f"score {c.method}={_fmt(c.score)} (threshold {_fmt(thresholds.get('score', c.threshold))})")
    head = f"{result.model_name} v{result.model_version}: "
    if parts:
        summary = (head + f"{len(tripped)}/{len(result.features)} inputs drifted" +
                   (" and the score" if score_tripped else "") + f" (verdict {result.verdict}): " + "; ".join(parts))
        if not pages:
            summary += (f" — fewer than {result.warning_share:.0%} of the inputs and none with its own threshold: "
                        "within chance, not a breach")
    else:
        summary = head + f"no input beyond its threshold ({result.n_current} rows, verdict {result.verdict})"
    details = {"model_name": result.model_name, "model_version": result.model_version, "verdict": result.verdict,
               "drift_report_id": result.report_id, "mlflow_run_id": result.mlflow_run_id,
               "n_current": result.n_current, "share_drifted": result.share_drifted,
               "drifted": {f: {"method": c.method, "score": c.score,
                               "threshold": thresholds.get(f, c.threshold)} for f, c in tripped.items()},
               "score_drifted": score_tripped, "warning_share": result.warning_share}
    return Check("input_drift", key, pages, summary, details, link)


def performance_check(settings: Settings, result: "DriftResult") -> Check:
    """Realised performance on matured labels: breached when realised average precision is more than
    ``RISKLOOP_MONITOR_AP_MARGIN`` below the version's own test AP, and so is the top of its
    bootstrap 95 % interval (a few dozen matured frauds move AP by more than the margin from sampling
    alone: a drop within the noise pages no one), or when the matured fraud rate drifted from the
    test window's (the model's prior no longer holds). No matured labels: None."""
    key, perf, target = result.model_name, result.performance, result.target_drift
    head = f"{result.model_name} v{result.model_version}: "
    link = report_url(settings, result.report_path)
    if perf is None:
        return Check("performance_drop", key, None, head + "realised performance not assessed (too few matured "
                     "labels)", report_url=link)
    margin = settings.monitor_ap_margin
    dropped = perf.ap_drop is not None and perf.ap_drop > margin and perf.ap_drop_low > margin
    within_noise = perf.ap_drop is not None and perf.ap_drop > margin and not dropped
    shifted = target is not None and target.drifted
    causes = ([f"AP {_fmt(perf.average_precision)} is {_fmt(perf.ap_drop)} below test AP "
               f"{_fmt(perf.test_average_precision)} (margin {_fmt(margin)}" +
               ("" if perf.ap_ci95_high is None else f"; at least {_fmt(perf.ap_drop_low)} at 95 %") + ")"]
              if dropped else []) + (["fraud rate drifted"] if shifted else [])
    if within_noise:
        causes.append(f"AP {_fmt(perf.ap_drop)} below test AP but within its sampling noise "
                      f"(interval top {_fmt(perf.ap_ci95_high)}): not a breach")
    summary = head + ("; ".join(causes) + " — " if causes else "") + performance_text(perf, target)
    details = {"model_name": result.model_name, "model_version": result.model_version,
               "drift_report_id": result.report_id, "performance": asdict(perf),
               "target_drift": asdict(target) if target else None, "ap_margin": margin,
               "ap_dropped": dropped, "ap_drop_within_noise": within_noise, "target_drifted": shifted}
    return Check("performance_drop", key, dropped or shifted, summary, details, link)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"
