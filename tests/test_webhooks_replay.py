"""Simulated webhook archives (`riskloop simulate`) replayed by `riskloop replay webhooks` into the
real receiver: every event lands once, a second replay writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from riskloop.core.db import dsn
from riskloop.core.signatures import WebhookSettings
from riskloop.data.webhook_replay import read_bodies
from riskloop.simulator.webhooks import STRIPE_TYPES
from tests.conftest import free_port
from tests.test_webhooks import STANDARD_SECRET, STRIPE_SECRET, serve_in_thread


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from riskloop.simulator import simulate, write

    sim = simulate(days=4, customers=40, seed=11)
    out = tmp_path_factory.mktemp("landing")
    write(sim, out)
    return out, sim.tables["webhook_events"]


def test_simulate_writes_one_exact_body_per_event(landing) -> None:
    out, events = landing
    for scheme in ("stripe", "standard"):
        want = events[events["processor"] == scheme]
        bodies = list(read_bodies(out / "webhooks" / f"{scheme}.jsonl"))
        assert len(bodies) == len(want) > 0
        docs = [json.loads(b) for b in bodies]
        assert sorted(d["id"] for d in docs) == sorted(want["event_id"])
        if scheme == "stripe":
            assert {d["type"] for d in docs} <= set(STRIPE_TYPES.values())
            assert all(d["object"] == "event" and d["data"]["object"]["amount"] >= 0 for d in docs)
        else:
            assert {d["type"] for d in docs} <= set(STRIPE_TYPES)
            assert all(set(d) == {"id", "type", "timestamp", "data"} for d in docs)
    # the card-present processor sends the card number on authorisations (the receiver tokenises it)
    from riskloop.core.pan import find_pans

    standard = (out / "webhooks" / "standard.jsonl").read_text()
    assert list(find_pans(standard)) and not list(find_pans((out / "webhooks" / "stripe.jsonl").read_text()))
    assert not list(out.glob("webhooks/*.tmp"))


def test_replay_cli_lands_every_event_once(landing, settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from riskloop.cli import app
    from riskloop.core.pan import find_pans
    from serving.webhooks import create_webhook_app

    out, events = landing
    monkeypatch.setenv("RISKLOOP_WEBHOOK_SECRETS_STRIPE", STRIPE_SECRET)
    monkeypatch.setenv("RISKLOOP_WEBHOOK_SECRETS_STANDARD", STANDARD_SECRET)
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        conn.execute("truncate raw.webhook_inbox")  # the table is the migrations'; its rows are the test's
    port = free_port()
    runner = CliRunner()
    for _ in serve_in_thread(create_webhook_app(settings, WebhookSettings()), port):
        for attempt in range(2):
            for scheme in ("stripe", "standard"):
                res = runner.invoke(app, ["replay", "webhooks", str(out / "webhooks" / f"{scheme}.jsonl"),
                                          "--url", f"http://127.0.0.1:{port}/webhooks/{scheme}",
                                          "--concurrency", "8"])
                assert res.exit_code == 0, res.output
                summary = json.loads(res.stdout.strip().splitlines()[-1])
                assert summary["status_counts"] == {"200": int((events["processor"] == scheme).sum())}
            with psycopg.connect(dsn(settings)) as conn:
                got = conn.execute("select processor, event_id from raw.webhook_inbox").fetchall()
                stored = [r[0] for r in conn.execute("select body from raw.webhook_inbox")]
            # stored tokenised: no card number anywhere in the inbox, tokens where the numbers were
            assert not [b for b in stored if list(find_pans(b))] and any('"pan_token"' in b for b in stored)
            assert sorted(got) == sorted(zip(events["processor"], events["event_id"], strict=True)), attempt
        # a wrong secret: every send is refused, the CLI says so with its exit code
        monkeypatch.setenv("RISKLOOP_WEBHOOK_SECRETS_STRIPE", "whsec_wrong")
        res = runner.invoke(app, ["replay", "webhooks", str(out / "webhooks" / "stripe.jsonl"),
                                  "--url", f"http://127.0.0.1:{port}/webhooks/stripe"])
        assert res.exit_code == 1 and '"401"' in res.stdout
