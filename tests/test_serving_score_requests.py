"""``riskloop simulate`` writes ``score_requests.jsonl``: valid /v1/score/fraud bodies, one per authorisation."""

from __future__ import annotations

import json
from pathlib import Path

from riskloop.simulator import simulate, write
from riskloop.simulator.score_requests import SCORE_REQUESTS_FILE
from serving.schemas import FraudScoreRequest


def test_score_requests_file(tmp_path: Path) -> None:
    sim = simulate(days=5, customers=100, seed=7)
    write(sim, tmp_path)
    lines = (tmp_path / SCORE_REQUESTS_FILE).read_text().splitlines()
    events = sim.tables["webhook_events"]
    authorised = events[(events["event_type"] == "payment.authorized") & (events["amount_minor"] > 0)]
    assert len(lines) == authorised["payment_id"].nunique() > 0
    bodies = [json.loads(line) for line in lines]
    requests = [FraudScoreRequest.model_validate(b) for b in bodies]  # the API's own contract
    assert [r.timestamp for r in requests] == sorted(r.timestamp for r in requests)
    first = authorised.sort_values(["occurred_at", "payment_id"]).iloc[0]
    assert bodies[0]["transaction_id"] == first.payment_id and bodies[0]["amount_minor"] == first.amount_minor
    assert set(bodies[0]) - {"pan"} == {"transaction_id", "card_token", "customer_id", "terminal_id", "amount_minor",
                              "currency", "timestamp"}
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_simulation_writes_an_empty_file(tmp_path: Path) -> None:
    sim = simulate(days=1, customers=2, seed=0)
    sim.tables["webhook_events"] = sim.tables["webhook_events"].iloc[0:0]
    write(sim, tmp_path)
    assert (tmp_path / SCORE_REQUESTS_FILE).read_text() == ""
