"""Event accepted → value visible to ``get_online_features``: latency of the real-time windows.

Against the configured stack (``riskloop up`` first): applies the Feast definitions, starts the
receiver alone (``serving.webhooks:create_webhook_app``, one uvicorn worker) and a stream consumer
(``riskloop stream``, a consumer name of its own) as separate processes, then sends ``--n``
signed payment webhooks (both processors, alternating) at a steady ``--rate`` per second, open
loop, each for a card of this run. An event counts as accepted when its 2xx arrives; it is
visible when ``get_online_features`` (the Feast SDK, this process) returns that card's 24 h count
at or above the number of the card's events accepted so far up to and including it. A poller
thread asks for every pending card in one call, back to back: the poll period (printed) bounds
how late a visibility can be seen.

    python bench/realtime_latency.py --n 3000 --rate 50
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import random
import socket
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx

from riskloop import features, stack, windows
from riskloop.config import get_settings
from riskloop.webhooks import signed_headers, standard_body, stripe_body

log = logging.getLogger("bench.realtime")
STRIPE = "whsec_bench_" + uuid.uuid4().hex
STANDARD = "whsec_" + base64.b64encode(uuid.uuid4().bytes * 2).decode()


class Poller(threading.Thread):
    """Polls the online store for pending cards; records when each event's count shows up."""

    def __init__(self, store: object, feature: str) -> None:
        super().__init__(daemon=True)
        self.store, self.feature = store, feature
        self.lock = threading.Lock()
        self.pending: dict[str, list[tuple[int, float, int]]] = {}  # card -> [(k, accepted_at, event)]
        self.visible: dict[int, float] = {}
        self.polls, self.poll_seconds = 0, 0.0
        self.done = threading.Event()

    def add(self, card: str, k: int, accepted_at: float, idx: int) -> None:
        with self.lock:
            self.pending.setdefault(card, []).append((k, accepted_at, idx))

    def run(self) -> None:
        name = self.feature.split(":")[1]
        while not self.done.is_set():
            with self.lock:
                cards = list(self.pending)
            if not cards:
                time.sleep(0.001)
                continue
            t0 = time.perf_counter()
            resp = self.store.get_online_features(  # type: ignore[attr-defined]
                features=[self.feature], entity_rows=[{"card_token": c} for c in cards]).to_dict()
            now = time.perf_counter()
            self.polls += 1
            self.poll_seconds += now - t0
            with self.lock:
                for card, count in zip(resp["card_token"], resp[name], strict=True):
                    left = []
                    for k, accepted, idx in self.pending.get(card, []):
                        if count is not None and count >= k:
                            self.visible[idx] = now - accepted
                        else:
                            left.append((k, accepted, idx))
                    if left:
                        self.pending[card] = left
                    else:
                        self.pending.pop(card, None)


def prepare(n: int, cards: int, run: str) -> list[tuple[str, str, int, bytes, dict[str, str]]]:
    """Signed bodies, built before the clock starts: (processor, card, k, body, headers), where k is
    the card's 24 h count once this event and the card's earlier ones are in."""
    rng = random.Random(0)
    counts: dict[str, int] = {}
    out = []
    now = datetime.now(UTC)
    for i in range(n):
        processor = "stripe" if i % 2 else "standard"
        card = f"{run}_card{rng.randrange(cards)}"
        ev = {"event_id": f"evt_{run}_{i}", "event_type": "payment.authorized", "occurred_at": now,
              "payment_id": f"pay_{run}_{i}", "card_token": card, "customer_id": f"{run}_cust{i % 500}",
              "terminal_id": "T1", "amount_minor": 1000 + i, "currency": "EUR", "dispute_id": None}
        body = stripe_body(ev) if processor == "stripe" else standard_body(ev)
        headers = signed_headers(processor, body, STRIPE if processor == "stripe" else STANDARD, int(time.time()))
        counts[card] = counts.get(card, 0) + 1
        out.append((processor, card, counts[card], body, headers))
    return out


async def send(url: str, events: list[tuple[str, str, int, bytes, dict[str, str]]], rate: float,
               poller: Poller, in_flight: int = 32) -> dict[int, int]:
    """Open loop at ``rate``, at most ``in_flight`` requests outstanding (a receiver that falls
    behind lowers the achieved rate, reported, instead of piling up requests in the client)."""
    codes: dict[int, int] = {}
    slots = asyncio.Semaphore(in_flight)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def one(i: int) -> None:
            processor, card, k, body, headers = events[i]
            try:
                r = await client.post(f"{url}/webhooks/{processor}", content=body, headers=headers)
            finally:
                slots.release()
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                poller.add(card, k, time.perf_counter(), i)

        start = time.perf_counter()
        tasks = []
        for i in range(len(events)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return codes


def pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=50.0, help="events per second, steady (open loop)")
    ap.add_argument("--cards", type=int, default=1000, help="distinct cards the events are spread over")
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args()
    if args.n / args.rate > 240:
        ap.error("--n / --rate must stay under 240 s: the bodies are signed up front (300 s tolerance)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = get_settings()
    features.apply(settings)
    store = features.feature_store(settings)
    card_view = windows.view_name(windows.entity("card"))
    feature = f"{card_view}:{windows.feature_name(windows.entity('card'), windows.AGGREGATES[0], windows.WINDOWS[-1])}"
    run = uuid.uuid4().hex[:10]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RISKLOOP_WEBHOOK_SECRETS_STRIPE": STRIPE, "RISKLOOP_WEBHOOK_SECRETS_STANDARD": STANDARD}
    receiver = stack.spawn_detached(settings, "bench-receiver", [
        sys.executable, "-m", "uvicorn", "serving.webhooks:create_webhook_app", "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--no-access-log"], env)
    consumer = stack.spawn_detached(settings, "bench-stream", [
        sys.executable, "-m", "riskloop", "stream", "--name", f"bench-{run}"], env)
    url = f"http://127.0.0.1:{port}"
    poller = Poller(store, feature)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/metrics", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        stack.wait_until(settings, {"bench-receiver": receiver, "bench-stream": consumer}, up, 120)
        poller.start()
        # warm-up (also waits for the new consumer to catch up with the inbox's history)
        asyncio.run(send(url, prepare(args.warmup, args.warmup, f"{run}w"), 10, poller))
        stack.wait_until(settings, {"bench-stream": consumer}, lambda: not poller.pending, 600)
        poller.visible.clear()
        load_before = os.getloadavg()
        events = prepare(args.n, args.cards, run)
        t0 = time.perf_counter()
        codes = asyncio.run(send(url, events, args.rate, poller))
        sent_s = time.perf_counter() - t0
        deadline = time.monotonic() + 60
        while poller.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        poller.done.set()
        poller.join(10)
        lat = sorted(poller.visible.values())
        result = {
            "n": args.n, "rate_per_s": args.rate, "achieved_rate_per_s": round(args.n / sent_s, 1),
            "cards": args.cards, "status_counts": codes, "visible": len(lat),
            "never_visible_within_60s": sum(len(v) for v in poller.pending.values()),
            "p50_ms": pct(lat, 0.50), "p90_ms": pct(lat, 0.90), "p99_ms": pct(lat, 0.99), "max_ms": pct(lat, 1.0),
            "poll_mean_ms": round(poller.poll_seconds / max(poller.polls, 1) * 1000, 1),
            "goal_p99_le_1s": bool(lat) and pct(lat, 0.99) <= 1000.0,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        }
        print(json.dumps(result))
    finally:
        poller.done.set()
        for name in ("bench-stream", "bench-receiver"):
            stack.stop_process(settings, name)


if __name__ == "__main__":
    main()
