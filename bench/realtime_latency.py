"""Signed webhook accepted → value visible to the online read: latency of the real-time windows.

Against the configured stack (``riskloop up`` first; Feast definitions applied, e.g. by a demo or an
ingest): starts the receiver alone (``serving.webhooks:create_webhook_app``, one uvicorn worker) and
``--partitions`` stream consumers (``riskloop stream --partitions N --partition i``, a consumer name
of its own) as separate processes, then ``--senders`` sender processes send ``--n`` (or ``--seconds``
× ``--rate``) signed payment webhooks (both processors, alternating) at a steady ``--rate`` per
second in total, open loop, each for a card of this run, over bench/loadclient.py (requests encoded
up front: the client must not take the 2 cores from what it measures). The poller, in this process,
learns each acceptance (the 200, stamped with the machine-wide monotonic clock in the sender)
through a queue; an event is visible when the online store returns that card's 24 h count at or
above the number of the card's events accepted so far up to and including it. The poller reads
every pending card at most every ``--poll-ms`` (25): with ``--read sql`` (default) straight from Feast's
online table, as ``serving/online_sql.py`` does (one query, Feast's key and value encoding), with
``--read sdk`` through ``get_online_features``. The poll period (printed) bounds how late a
visibility can be seen.

After the run it checks that nothing was lost or doubled: every accepted event is in
``realtime.payment_events`` exactly once, and every card's online 24 h count equals its events.

    python bench/realtime_latency.py --seconds 60 --rate 100
    python bench/realtime_latency.py --seconds 60 --rate 1000 --senders 2
    python bench/realtime_latency.py --seconds 60 --rate 2000 --senders 2 --partitions 2
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
from typing import Any

import httpx
import psutil
import psycopg
import uvloop
from loadclient import Client, HttpError  # bench/ is on sys.path when run as a script
from proc_cpu import tree_cpu_seconds

from riskloop.core import windows
from riskloop.core.config import get_settings
from riskloop.core.db import dsn
from riskloop.core.signatures import signed_headers
from riskloop.features import store as features
from riskloop.features.stream import OFFSETS_TABLE, partition_name
from riskloop.ops import processes
from riskloop.simulator.webhooks import standard_body, stripe_body

log = logging.getLogger("bench.realtime")
STRIPE = "whsec_bench_" + uuid.uuid4().hex
STANDARD = "whsec_" + base64.b64encode(uuid.uuid4().bytes * 2).decode()


class SqlCounts:
    """The card view's 24 h counts read straight from Feast's online table: the table, the key
    encoding and the value decoding are Feast's own (``serving/online_sql.py`` reads the same way)."""

    def __init__(self, store: Any, view: str, feature: str) -> None:
        from feast.infra.online_stores.helpers import compute_table_id
        from feast.infra.utils.postgres.connection_utils import _get_conn

        config = store.config
        fv = store.get_feature_view(view)
        versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        self.table = compute_table_id(config.project, fv, versioning)
        self.feature, self.version = feature, int(config.entity_key_serialization_version)
        self.conn = _get_conn(config.online_store)
        self.conn.autocommit = True
        self._keys: dict[str, bytes] = {}

    def key(self, card: str) -> bytes:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        k = self._keys.get(card)
        if k is None:
            k = self._keys[card] = serialize_entity_key(
                EntityKey(join_keys=["card_token"], entity_values=[Value(string_val=card)]),
                entity_key_serialization_version=self.version)
        return k

    def __call__(self, cards: list[str]) -> list[int | None]:
        from feast.protos.feast.types.Value_pb2 import Value

        keys = [self.key(c) for c in cards]
        rows = self.conn.execute(f'select entity_key, value from "{self.table}" where entity_key = any(%s) '
                                 f"and feature_name = %s", (keys, self.feature)).fetchall()
        found = {bytes(k): Value.FromString(v).int64_val for k, v in rows}
        return [found.get(k) for k in keys]


class SdkCounts:
    """The same counts through the Feast SDK's ``get_online_features``."""

    def __init__(self, store: Any, view: str, feature: str) -> None:
        self.store, self.ref, self.feature = store, f"{view}:{feature}", feature

    def __call__(self, cards: list[str]) -> list[int | None]:
        resp = self.store.get_online_features(features=[self.ref], entity_rows=[{"card_token": c} for c in cards])
        return resp.to_dict()[self.feature]


class Poller:
    """Polls the online store for pending cards; records when each event's count shows up."""

    def __init__(self, counts: Any, period_s: float) -> None:
        self.counts, self.period_s = counts, period_s
        self.pending: dict[str, list[tuple[int, float, int]]] = {}  # card -> [(k, accepted_at, event)]
        self.visible: dict[int, float] = {}
        self.accepted: dict[str, int] = {}  # card -> its events accepted so far
        self.polls, self.poll_seconds, self._last = 0, 0.0, 0.0

    def add(self, card: str, accepted_at: float, idx: int) -> None:
        """Event ``idx`` of ``card`` was accepted: it is visible once the card's count reaches the number
        of its events accepted so far, counted in the order the acceptances arrive here. (Not the order
        they were prepared in: two senders that fall behind their schedule unevenly accept a card's
        events out of that order, and a later event would then wait for an earlier one not yet sent.)"""
        k = self.accepted[card] = self.accepted.get(card, 0) + 1
        self.pending.setdefault(card, []).append((k, accepted_at, idx))

    def poll(self) -> None:
        """One read of every pending card, at most every ``period_s``; the clock is the senders'
        (``time.monotonic``)."""
        wait = self._last + self.period_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        cards = list(self.pending)
        if not cards:
            return
        t0 = self._last = time.monotonic()
        counts = self.counts(cards)
        now = time.monotonic()
        self.polls += 1
        self.poll_seconds += now - t0
        for card, count in zip(cards, counts, strict=True):
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


def prepare(n: int, cards: int, run: str) -> list[tuple[str, str, bytes, list[tuple[str, str]]]]:
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
        out.append((processor, card, body, list(headers.items())))
    return out


async def send(url: str, events: list[tuple[int, str, bytes, list[tuple[str, str]]]], rate: float, start: float,
               accepted: "mp.Queue", in_flight: int = 64) -> dict[int, int]:
    """Open loop: event ``i`` (its global index) leaves at ``start + i / rate`` (monotonic clock), at
    most ``in_flight`` outstanding (a receiver that falls behind lowers the achieved rate, reported,
    instead of piling up requests in the client). Each 200 goes to ``accepted`` as (i, time), in
    batches every few milliseconds (each stamped when its answer came)."""
    codes: dict[int, int] = {}
    slots = asyncio.Semaphore(in_flight)
    clients = {p: Client(url, f"/webhooks/{p}") for p in ("stripe", "standard")}
    raws = [(i, p, clients[p].encode(body, headers)) for i, p, body, headers in events]
    done: list[tuple[int, float]] = []

    async def flush() -> None:
        while True:
            await asyncio.sleep(0.005)
            if done:
                accepted.put(done[:])
                done.clear()

    async def one(i: int, processor: str, raw: bytes) -> None:
        try:
            status, _ = await clients[processor].post(raw, timeout=30)
        except (HttpError, TimeoutError):
            status = 599
        finally:
            slots.release()
        codes[status] = codes.get(status, 0) + 1
        if status == 200:
            done.append((i, time.monotonic()))

    flusher = asyncio.create_task(flush())
    tasks = []
    for i, processor, raw in raws:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        tasks.append(asyncio.create_task(one(i, processor, raw)))
    await asyncio.gather(*tasks)
    flusher.cancel()
    if done:
        accepted.put(done[:])
    for c in clients.values():
        c.close()
    return codes


def sender(url: str, events: list[tuple[int, str, bytes, list[tuple[str, str]]]], rate: float, start: "mp.Value",
           go: "mp.Event", accepted: "mp.Queue", done: "mp.Queue") -> None:
    """A sender process: once every sender is up (``go``), its share of the events on the common
    schedule from ``start``; its status counts to ``done``."""
    done.put("ready")
    go.wait()
    codes = uvloop.run(send(url, events, rate, start.value, accepted))  # the generator's CPU is the pipeline's loss
    done.put(codes)


def run_load(url: str, events: list[tuple[str, str, bytes, list[tuple[str, str]]]], rate: float, senders: int,
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
    start = time.monotonic() + 0.5
    shared_start.value = start
    go.set()
    codes: dict[int, int] = {}
    finished = 0

    def drain(timeout: float | None = None) -> None:
        while True:
            try:
                batch = accepted.get(timeout=timeout) if timeout else accepted.get_nowait()
            except queue.Empty:
                return
            for i, at in batch:
                poller.add(events[i][1], at, i)

    while finished < senders:
        drain()
        try:
            for code, count in done.get_nowait().items():
                codes[code] = codes.get(code, 0) + count
            finished += 1
        except queue.Empty:
            pass
        poller.poll()
        if not poller.pending:
            time.sleep(0.002)
        if any(p.exitcode not in (None, 0) for p in procs):
            raise RuntimeError(f"a sender died: {[p.exitcode for p in procs]}")
    sent_s = time.monotonic() - start
    drain(timeout=0.2)  # the last acceptances (put before the status counts, but a queue has no order across them)
    for p in procs:
        p.join(10)
    return codes, sent_s


def pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 1) if values else float("nan")


def verify(settings: Any, counts: Any, run: str, events: list[tuple[str, str, bytes, Any]]) -> dict[str, int]:
    """Nothing lost or doubled: each event of the run once in ``realtime.payment_events``, and each
    card's online 24 h count equal to its events."""
    with psycopg.connect(dsn(settings)) as conn:
        stored, distinct = conn.execute(
            f"select count(*), count(distinct (processor, event_id)) from {windows.EVENTS_TABLE} "
            f"where event_id like %s", (f"evt_{run}\\_%",)).fetchone()
    per_card: dict[str, int] = {}
    for _p, card, _b, _h in events:
        per_card[card] = per_card.get(card, 0) + 1
    cards = sorted(per_card)
    online = counts(cards)
    return {"events_stored": stored, "events_stored_distinct": distinct, "cards_used": len(cards),
            "cards_online_exact": sum(1 for c, v in zip(cards, online, strict=True) if v == per_card[c]),
            "cards_online_short": sum(1 for c, v in zip(cards, online, strict=True) if (v or 0) < per_card[c]),
            "cards_online_over": sum(1 for c, v in zip(cards, online, strict=True) if (v or 0) > per_card[c])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seconds", type=float, help="send for this long: --n = --rate x --seconds")
    ap.add_argument("--rate", type=float, default=50.0, help="events per second in total, steady (open loop)")
    ap.add_argument("--senders", type=int, default=1, help="sender processes sharing the rate")
    ap.add_argument("--partitions", type=int, default=1, help="stream consumer processes splitting the keys")
    ap.add_argument("--cards", type=int, default=1000, help="distinct cards the events are spread over")
    ap.add_argument("--read", choices=("sql", "sdk"), default="sql", help="how the poller reads the online store")
    ap.add_argument("--poll-ms", type=float, default=25.0,
                    help="shortest time between two polls: bounds how late a visibility is seen (each poll reads "
                         "every pending card: polling faster takes CPU from what is measured)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--consumer-debug", action="store_true",
                    help="the consumers log each round (rows, pushed, seconds) to <home>/logs/bench-stream*.log")
    args = ap.parse_args()
    if args.seconds:
        args.n = int(args.rate * args.seconds)
    if args.n / args.rate > 240:
        ap.error("--n / --rate must stay under 240 s: the bodies are signed up front (300 s tolerance)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = get_settings()
    features.apply(settings)
    store = features.feature_store(settings)
    card = windows.entity("card")
    view = windows.view_name(card)
    feature = windows.feature_name(card, windows.AGGREGATES[0], windows.WINDOWS[-1])
    counts = SqlCounts(store, view, feature) if args.read == "sql" else SdkCounts(store, view, feature)
    run = uuid.uuid4().hex[:10]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RISKLOOP_WEBHOOK_SECRETS_STRIPE": STRIPE, "RISKLOOP_WEBHOOK_SECRETS_STANDARD": STANDARD}
    receiver = processes.spawn_detached(settings, "bench-receiver", [
        sys.executable, "-m", "uvicorn", "serving.webhooks:create_webhook_app", "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--no-access-log"], env)
    # This run's cards are new: its consumers start at the inbox's current horizon instead of
    # replaying its whole history (minutes on a stack that ran earlier benchmarks).
    with psycopg.connect(dsn(settings), autocommit=True) as conn:
        for i in range(args.partitions):
            conn.execute(f"insert into {OFFSETS_TABLE} (consumer, next_xid) "
                         f"values (%s, pg_snapshot_xmin(pg_current_snapshot()))",
                         (partition_name(f"bench-{run}", i, args.partitions),))
    consumers = {f"bench-stream{i}": processes.spawn_detached(settings, f"bench-stream{i}", [
        sys.executable, "-m", "riskloop", *(["-v"] if args.consumer_debug else []), "stream", "--name", f"bench-{run}",
        "--partitions", str(args.partitions), "--partition", str(i)], env) for i in range(args.partitions)}
    url = f"http://127.0.0.1:{port}"
    poller = Poller(counts, args.poll_ms / 1000)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/metrics", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        processes.wait_until(settings, {"bench-receiver": receiver, **consumers}, up, 120)
        # warm-up
        run_load(url, prepare(args.warmup, args.warmup, f"{run}w"), 10, 1, poller)
        deadline = time.monotonic() + 600
        while poller.pending and time.monotonic() < deadline:
            poller.poll()
        poller.visible.clear()
        poller.polls, poller.poll_seconds = 0, 0.0
        events = prepare(args.n, args.cards, run)
        with psycopg.connect(dsn(settings)) as conn:  # the server's process tree, for its CPU
            postmaster = psutil.Process(conn.info.backend_pid).parent()
        trees = {"receiver": [receiver.pid], "consumers": [p.pid for p in consumers.values()],
                 "postgres": [postmaster.pid], "bench": [os.getpid()]}  # bench: the senders and the poller

        def cpu() -> dict[str, float]:
            return {k: sum(tree_cpu_seconds(pid) for pid in pids) for k, pids in trees.items()}

        load_before, cpu_before = os.getloadavg(), cpu()
        codes, sent_s = run_load(url, events, args.rate, args.senders, poller)
        load_end, cpu_after = os.getloadavg(), cpu()
        deadline = time.monotonic() + 60
        while poller.pending and time.monotonic() < deadline:
            poller.poll()
        lat = sorted(poller.visible.values())
        result = {
            "n": args.n, "rate_per_s": args.rate, "achieved_rate_per_s": round(args.n / sent_s, 1),
            "sent_s": round(sent_s, 1), "senders": args.senders, "partitions": args.partitions, "cards": args.cards,
            "read": args.read, "status_counts": codes, "visible": len(lat),
            "never_visible_within_60s": sum(len(v) for v in poller.pending.values()),
            "p50_ms": pct(lat, 0.50), "p90_ms": pct(lat, 0.90), "p99_ms": pct(lat, 0.99), "max_ms": pct(lat, 1.0),
            "poll_mean_ms": round(poller.poll_seconds / max(poller.polls, 1) * 1000, 1),
            "goal_p99_le_1s": bool(lat) and pct(lat, 0.99) <= 1000.0,
            # CPU per event while sending (the figure the neighbours' load does not move much); postgres
            # includes the poller's reads
            "cpu_ms_per_event": {k: round((cpu_after[k] - cpu_before[k]) / args.n * 1000, 3) for k in trees},
            **verify(settings, counts, run, events),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_end_of_sending": [round(x, 2) for x in load_end], "cpus": os.cpu_count(),
        }
        print(json.dumps(result))
    finally:
        for name in (*consumers, "bench-receiver"):
            processes.stop_process(settings, name)


if __name__ == "__main__":
    main()
