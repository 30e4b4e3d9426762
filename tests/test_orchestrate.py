"""What a failed DAG run reports: the failing task's traceback down to the exception line."""

from __future__ import annotations

from pathlib import Path

from riskloop.ops.orchestrate import _failure_excerpt


def test_the_failure_excerpt_keeps_the_exception_of_a_long_traceback(tmp_path: Path) -> None:
    frames = [f'  File "/x/mod{i}.py", line {i}, in f{i}\n    call_{i}()' for i in range(80)]
    log = tmp_path / "run.log"
    log.write_text("\n".join([
        "2026-11-24T18:44:01.516133Z [info     ] Updating RenderedTaskInstanceFields",
        "2026-11-24T18:44:14.826268Z [info     ] gate riskloop-fraud: scoring champion v1",
        "2026-11-24T18:44:14.950440Z [error    ] Task failed with exception     [task]",
        "Traceback (most recent call last):", *frames,
        "mlflow.exceptions.MlflowException: the artifact download failed: connection reset",
        "2026-11-24T18:44:15.000000Z [info     ] Task instance in failure state",
        *[f"2026-11-24T18:44:16.{i:06d}Z [info     ] unrelated line {i}" for i in range(200)],
    ]))
    text = _failure_excerpt(log)
    assert "Task failed with exception" in text and "gate riskloop-fraud" in text
    assert "MlflowException: the artifact download failed: connection reset" in text
    assert "unrelated line" not in text and "call_0()" in text and "call_79()" in text
    assert str(log) in text and len(text) < 4500


def test_without_an_error_line_the_excerpt_is_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    text = _failure_excerpt(log)
    assert "line 99" in text and "line 59" not in text and str(log) in text
