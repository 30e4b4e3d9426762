"""Event accepted → value visible to ``get_online_features``: latency of the real-time windows.

Against the configured stack (``riskloop up`` first; Feast definitions applied, e.g. by a demo or an
ingest): starts the receiver alone (``serving.webhooks:create_webhook_app``, one uvicorn worker) and
a stream consumer (``riskloop stream``, a consumer name of its own) as separate processes, then
``--senders`` sender processes send ``--n`` signed payment webhooks (both processors, alternating)
at a steady ``--rate`` per second in total, open loop, each for a card of this run. The poller, in
this process, learns each acceptance (the 2xx, stamped with the machine-wide monotonic clock in
the sender) through a queue; an event is visible when ``get_online_features`` (the Feast SDK)
returns that card's 24 h count at or above the number of the card's events accepted so far up to
and including it. The poller asks for every pending card in one call, back to back: the poll
period (printed) bounds how late a visibility can be seen.

Senders and poller are separate processes because one process doing both saturated at ~55
events/s (signing, the HTTP client and the Feast reads shared one interpreter).

    python bench/realtime_latency.py --n 3000 --rate 50
    python bench/realtime_latency.py --n 12000 --rate 200 --senders 2
    python bench/realtime_latency.py --n 30000 --rate 500 --senders 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import multiprocessing as mp
import os
import queue
import random
import socket
import sys
import time
import uuid
from datetime import UTC, datetime

import httpx

from riskloop.core import windows
from riskloop.core.config import get_settings
from riskloop.core.signatures import signed_headers
from riskloop.features import store as features
from riskloop.ops import processes
from riskloop.simulator.webhooks import standard_body, stripe_body

log = logging.getLogger("bench.realtime")
STRIPE = "whsec_bench_" + uuid.uuid4().hex
STANDARD = "whsec_" + base64.b64encode(uuid.uuid4().bytes * 2).decode()


class Poller:
    """Polls the online store for pending cards; records when each event's count shows up."""

    def __init__(self, store: object, feature: str) -> None:
        self.store, self.feature = store, feature
        self.pending: dict[str, list[tuple[int, float, int]]] = {}  # card -> [(k, accepted_at, event)]
        self.visible: dict[int, float] = {}
        self.accepted: dict[str, int] = {}  # card -> its events accepted so far
        self.polls, self.poll_seconds = 0, 0.0

    def add(self, card: str, accepted_at: float, idx: int) -> None:
        """Event ``idx`` of ``card`` was accepted: it is visible once the card's count reaches the number
        of its events accepted so far, counted in the order the acceptances arrive here. (Not the order
        they were prepared in: two senders that fall behind their schedule unevenly accept a card's
        events out of that order, and a later event would then wait for an earlier one not yet sent.)"""
        k = self.accepted[card] = self.accepted.get(card, 0) + 1
        self.pending.setdefault(card, []).append((k, accepted_at, idx))

    def poll(self) -> None:
        """One read of every pending card; the clock is the senders' (``time.monotonic``)."""
        name = self.feature.split(":")[1]
        cards = list(self.pending)
        if not cards:
            time.sleep(0.001)
            return
        t0 = time.monotonic()
        resp = self.store.get_online_features(  # type: ignore[attr-defined]
            features=[self.feature], entity_rows=[{"card_token": c} for c in cards]).to_dict()
        now = time.monotonic()
        self.polls += 1
        self.poll_seconds += now - t0
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


def prepare(n: int, cards: int, run: str) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """Signed bodies, built before the clock starts: (processor, card, body, headers)."""
    rng = random.Random(0)
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
        out.append((processor, card, body, headers))
    return out


async def send(url: str, events: list[tuple[int, str, bytes, dict[str, str]]], rate: float, start: float,
               accepted: "mp.Queue", in_flight: int = 32) -> dict[int, int]:
    """Open loop: event ``i`` (its global index) leaves at ``start + i / rate`` (monotonic clock), at
    most ``in_flight`` outstanding (a receiver that falls behind lowers the achieved rate, reported,
    instead of piling up requests in the client). Each 200 goes to ``accepted`` as (i, time)."""
    codes: dict[int, int] = {}
    slots = asyncio.Semaphore(in_flight)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def one(i: int, processor: str, body: bytes, headers: dict[str, str]) -> None:
            try:
                r = await client.post(f"{url}/webhooks/{processor}", content=body, headers=headers)
            finally:
                slots.release()
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                accepted.put((i, time.monotonic()))

        tasks = []
        for i, processor, body, headers in events:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            tasks.append(asyncio.create_task(one(i, processor, body, headers)))
        await asyncio.gather(*tasks)
    return codes


def sender(url: str, events: list[tuple[int, str, bytes, dict[str, str]]], rate: float, start: "mp.Value",
           go: "mp.Event", accepted: "mp.Queue", done: "mp.Queue") -> None:
    """A sender process: once every sender is up (``go``), its share of the events on the common
    schedule from ``start``; its status counts to ``done``."""
    done.put("ready")
    go.wait()
    codes = asyncio.run(send(url, events, rate, start.value, accepted))
    done.put(codes)


def run_load(url: str, events: list[tuple[str, str, bytes, dict[str, str]]], rate: float, senders: int,
             poller: Poller) -> tuple[dict[int, int], float]:
    """Send ``events`` from ``senders`` processes (event i from sender i % senders) while this
    process polls; returns the merged status counts and the sending time."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: no Feast store or threads inherited
    accepted, done, go, shared_start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=sender, daemon=True, args=(
        url, [(i, p, body, headers) for i, (p, _card, body, headers) in enumerate(events) if i % senders == j],
        rate, shared_start, go, accepted, done)) for j in range(senders)]
    for p in procs:
        p.start()
    for _ in procs:  # every interpreter up before the clock starts (spawning takes seconds when busy)
        if done.get(timeout=300) != "ready":
            raise RuntimeError("a sender did not start")
    start = time.monotonic() + 0.2
    shared_start.value = start
    go.set()
    codes: dict[int, int] = {}
    finished = 0
    while finished < senders:
        drained = False
        while True:
            try:
                i, at = accepted.get_nowait()
            except queue.Empty:
                break
            drained = True
            poller.add(events[i][1], at, i)
        try:
            for code, count in done.get_nowait().items():
                codes[code] = codes.get(code, 0) + count
            finished += 1
        except queue.Empty:
            pass
        if not drained and not poller.pending:
            time.sleep(0.001)
        poller.poll()
        if any(p.exitcode not in (None, 0) for p in procs):
            raise RuntimeError(f"a sender died: {[p.exitcode for p in procs]}")
    sent_s = time.monotonic() - start
    while True:  # the last acceptances (put before the status counts, but a queue has no order across them)
        try:
            i, at = accepted.get(timeout=0.2)
        except queue.Empty:
            break
        poller.add(events[i][1], at, i)
    for p in procs:
        p.join(10)
    return codes, sent_s


def pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=50.0, help="events per second in total, steady (open loop)")
    ap.add_argument("--senders", type=int, default=1, help="sender processes sharing the rate")
    ap.add_argument("--cards", type=int, default=1000, help="distinct cards the events are spread over")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--consumer-debug", action="store_true",
                    help="the consumer logs each round (rows, pushed, seconds) to <home>/logs/bench-stream.log")
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
    receiver = processes.spawn_detached(settings, "bench-receiver", [
        sys.executable, "-m", "uvicorn", "serving.webhooks:create_webhook_app", "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--no-access-log"], env)
    consumer = processes.spawn_detached(settings, "bench-stream", [
        sys.executable, "-m", "riskloop", *(["-v"] if args.consumer_debug else []), "stream", "--name", f"bench-{run}"],
        env)
    url = f"http://127.0.0.1:{port}"
    poller = Poller(store, feature)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/metrics", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        processes.wait_until(settings, {"bench-receiver": receiver, "bench-stream": consumer}, up, 120)
        # warm-up (also waits for the new consumer to catch up with the inbox's history)
        run_load(url, prepare(args.warmup, args.warmup, f"{run}w"), 10, 1, poller)
        deadline = time.monotonic() + 600
        while poller.pending and time.monotonic() < deadline:
            poller.poll()
        poller.visible.clear()
        poller.polls, poller.poll_seconds = 0, 0.0
        events = prepare(args.n, args.cards, run)
        load_before = os.getloadavg()
        codes, sent_s = run_load(url, events, args.rate, args.senders, poller)
        deadline = time.monotonic() + 60
        while poller.pending and time.monotonic() < deadline:
            poller.poll()
        lat = sorted(poller.visible.values())
        result = {
            "n": args.n, "rate_per_s": args.rate, "achieved_rate_per_s": round(args.n / sent_s, 1),
            "senders": args.senders, "cards": args.cards, "status_counts": codes, "visible": len(lat),
            "never_visible_within_60s": sum(len(v) for v in poller.pending.values()),
            "p50_ms": pct(lat, 0.50), "p90_ms": pct(lat, 0.90), "p99_ms": pct(lat, 0.99), "max_ms": pct(lat, 1.0),
            "poll_mean_ms": round(poller.poll_seconds / max(poller.polls, 1) * 1000, 1),
            "goal_p99_le_1s": bool(lat) and pct(lat, 0.99) <= 1000.0,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        }
        print(json.dumps(result))
    finally:
        for name in ("bench-stream", "bench-receiver"):
            processes.stop_process(settings, name)


if __name__ == "__main__":
    main()
