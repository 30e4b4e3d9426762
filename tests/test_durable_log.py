"""A decision answered is a decision stored: every ``decision_id`` answered 200 is in
``serving.decision_log`` even when the serving process is killed (``kill -9``) under load, and while
the log's database is unreachable a scoring request gets a 503 with ``Retry-After``, never a 200
for a decision that is not logged (real Postgres, ``python -m serving`` as a process of its own)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from riskloop.core.config import Settings
from riskloop.core.db import dsn
from tests.conftest import free_port

SCORER = "durable-scorer-key-0000000"
DATABASE = "riskloop_t_durable"


@pytest.fixture(scope="module")
def durable_settings(stack_env: dict[str, str]) -> Settings:
    from fixtures_marts import isolated_settings

    return isolated_settings(DATABASE).model_copy(update={"fraud_model_name": f"no-model-{uuid.uuid4().hex[:6]}"})


def _body(i: int) -> dict[str, Any]:
    return {"card_token": f"tok_d{i % 50}", "customer_id": f"C-d{i % 200}", "terminal_id": "T1", "amount_minor": 1_000 + i,
            "currency": "EUR", "timestamp": "2024-03-30T02:15:00+00:00", "device_id": f"dev-{i % 7}"}


def _logged(settings: Settings, ids: list[str]) -> set[str]:
    with psycopg.connect(dsn(settings)) as conn:
        rows = conn.execute("select decision_id::text from serving.decision_log where decision_id = any(%s::uuid[])",
                            (ids,)).fetchall()
    return {r[0] for r in rows}


async def _load_then_kill(url: str, pid: int, answered: list[str], kill_after: int) -> None:
    """8 clients scoring back to back until the server is gone; ``kill -9`` of the server once
    ``kill_after`` decisions were answered, with the other clients' requests in flight."""
    killed = False

    async def client(n: int) -> None:
        nonlocal killed
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {SCORER}"}, timeout=10) as c:
            i = n
            while True:
                try:
                    r = await c.post("/v1/score/fraud", json=_body(i))
                except httpx.HTTPError:
                    return  # the server is gone
                i += 8
                if r.status_code == 200:
                    answered.append(r.json()["decision_id"])
                    if len(answered) >= kill_after and not killed:
                        os.killpg(pid, signal.SIGKILL)  # the server and its workers
                        killed = True
                else:
                    assert r.status_code == 503, r.text  # a refusal is allowed under load, a 200 must be logged

    await asyncio.gather(*(client(n) for n in range(8)))


def test_every_decision_answered_200_survives_kill_9_of_serving(durable_settings: Settings, tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "RISKLOOP_DATABASE_URL": durable_settings.database_url,
           "RISKLOOP_FRAUD_MODEL_NAME": durable_settings.fraud_model_name, "RISKLOOP_API_KEYS": f"{SCORER}:scorer",
           "RISKLOOP_SERVING_MODEL_POLL_S": "0", "RISKLOOP_SERVING_CANARY_POLL_S": "0"}
    logf = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # one worker per core, each loading everything, on a busy machine
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serving did not start"
            time.sleep(0.3)
        answered: list[str] = []
        asyncio.run(_load_then_kill(url, proc.pid, answered, kill_after=400))
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        logf.close()
    assert len(answered) >= 400
    missing = set(answered) - _logged(durable_settings, answered)
    assert not missing, f"{len(missing)} of {len(answered)} decisions answered 200 are not in the log"


def _allow_connections(settings: Settings, allowed: bool) -> None:
    with psycopg.connect(settings.pg.url("postgres", driver=""), autocommit=True) as conn:
        conn.execute(f'alter database "{DATABASE}" allow_connections {str(allowed).lower()}')
        if not allowed:
            conn.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (DATABASE,))


@pytest.fixture()
def client(durable_settings: Settings) -> Iterator[TestClient]:
    from serving.app import create_app
    from serving.config import ServingSettings

    cfg = ServingSettings(api_keys=f"{SCORER}:scorer", model_poll_s=0, canary_poll_s=0, known_device_poll_s=0,
                          card_location_poll_s=0)
    with TestClient(create_app(durable_settings, cfg)) as c:
        yield c


def test_database_down_is_503_never_an_unlogged_200(client: TestClient, durable_settings: Settings) -> None:
    headers = {"Authorization": f"Bearer {SCORER}"}
    r = client.post("/v1/score/fraud", json=_body(1), headers=headers)
    assert r.status_code == 200, r.text
    assert _logged(durable_settings, [r.json()["decision_id"]])
    _allow_connections(durable_settings, False)
    try:
        for i in range(5):
            r = client.post("/v1/score/fraud", json=_body(i), headers=headers)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1" and r.json()["detail"] == "decision log unavailable, retry"
            assert "decision_id" not in r.text
        r = client.post("/v1/score/credit", json={"application_id": "app-durable-1"}, headers=headers)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["decision_log_error"]
    finally:
        _allow_connections(durable_settings, True)
    deadline = time.monotonic() + 30  # the writer tries the database again after a short backoff
    while (r := client.post("/v1/score/fraud", json=_body(9), headers=headers)).status_code != 200:
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        time.sleep(0.2)
    credit = client.post("/v1/score/credit", json={"application_id": "app-durable-2"}, headers=headers)
    assert credit.status_code == 200, credit.text
    ids = [r.json()["decision_id"], credit.json()["decision_id"]]
    assert _logged(durable_settings, ids) == set(ids)
    assert client.get("/readyz").json()["checks"]["decision_log_error"] is None
