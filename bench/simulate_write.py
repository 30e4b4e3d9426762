"""How long `riskloop simulate` spends writing webhooks/*.jsonl and score_requests.jsonl:
the row-by-row renderers (json.dumps per event, the former implementation, kept as the
reference the tests compare against) vs the column-wise writers now used. Same bytes out.

    .venv/bin/python bench/simulate_write.py --days 30 --customers 5000

Prints one JSON line: rows, seconds per path (process CPU and wall), speed-up, load average.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    from riskloop import simulator
    from riskloop.simulator.score_requests import reference_lines, write_score_requests
    from riskloop.simulator.webhooks import standard_body, stripe_body, with_pans, write_webhook_files

    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    events = simulator.simulate(days=args.days, customers=args.customers, seed=args.seed).tables["webhook_events"]
    out = Path(tempfile.mkdtemp(prefix="simwrite-"))

    def rowwise() -> None:
        frame = with_pans(events.sort_values(["received_at", "event_id"], kind="stable"))
        for scheme, render in (("stripe", stripe_body), ("standard", standard_body)):
            with (out / f"ref-{scheme}.jsonl").open("wb") as fh:
                for rec in frame[frame["processor"] == scheme].to_dict("records"):
                    fh.write(render(rec) + b"\n")
        (out / "ref-score.jsonl").write_text("".join(line + "\n" for line in reference_lines(events)))

    def columnwise() -> None:
        write_webhook_files(events, out)
        write_score_requests(events, out)

    old_wall, old_cpu = _timed(rowwise)
    new_wall, new_cpu = _timed(columnwise)
    same = all((out / f"ref-{s}.jsonl").read_bytes() == (out / "webhooks" / f"{s}.jsonl").read_bytes()
               for s in ("stripe", "standard")) and \
        (out / "ref-score.jsonl").read_bytes() == (out / "score_requests.jsonl").read_bytes()
    print(json.dumps({"events": len(events), "rowwise_s": round(old_wall, 2), "rowwise_cpu_s": round(old_cpu, 2),
                      "columnwise_s": round(new_wall, 2), "columnwise_cpu_s": round(new_cpu, 2),
                      "speedup_cpu": round(old_cpu / new_cpu, 1), "same_bytes": same,
                      "loadavg": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
