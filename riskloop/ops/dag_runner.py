"""``python -m riskloop.ops.dag_runner RUNS``: several DAG runs in one Airflow process, one after another.

Each run is what ``airflow dags test DAG DATE --conf CONF`` does (the DAG from the bag, then
``dag.test()``: Airflow's real task runner, XComs and states in the metadata database), but Airflow,
the DAG bag and the tasks' libraries are imported once for all of them. ``RUNS`` is a JSON list of
``{"dag_id", "logical_date", "conf"}``; a run that fails stops the rest and the exit status is 1.
Started by :func:`riskloop.ops.orchestrate.run_dags` with the stack's Airflow environment.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime


def _share_execution_api() -> None:
    """One in-process Execution API for every task of every run of this process.

    ``dag.test()`` talks to Airflow's Execution API in process, and builds a new one per task: a
    Cadwyn app whose versioned routers take seconds of CPU to generate (most of the time between
    two tasks, longer than most of the tasks themselves) and an event-loop thread that is never
    stopped. The API holds no per-task state (the task instance's id is in each request, the
    metadata database is the state), so the first one serves the rest. Without the hook (another
    Airflow version), every task builds its own, as before.
    """
    import functools

    from airflow.sdk.execution_time import supervisor

    if callable(getattr(supervisor, "in_process_api_server", None)):
        supervisor.in_process_api_server = functools.cache(supervisor.in_process_api_server)


def main(argv: list[str]) -> int:
    from airflow.utils.cli import get_bagged_dag
    from airflow.utils.providers_configuration_loader import providers_configuration_loaded
    from airflow.utils.state import DagRunState

    @providers_configuration_loaded
    def run(dag_id: str, logical_date: str, conf: dict | None) -> str:
        dag = get_bagged_dag(bundle_names=None, dag_id=dag_id)
        if dag is None:
            raise SystemExit(f"Dag {dag_id!r} could not be found; either it does not exist or it failed to parse.")
        dr = dag.test(logical_date=datetime.fromisoformat(logical_date), run_conf=conf)
        return str(dr.state) if dr is not None else "missing"

    _share_execution_api()
    for spec in json.loads(argv[0]):
        t0 = time.perf_counter()
        state = run(spec["dag_id"], spec["logical_date"], spec.get("conf"))
        print(json.dumps({"riskloop_dag_run": spec["dag_id"], "state": state,
                          "seconds": round(time.perf_counter() - t0, 2)}), flush=True)
        if state != DagRunState.SUCCESS:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
