"""Where a stream round's push time goes: Feast's ``FeatureStore.push`` (one call per entity, as the
consumer once did) against ``riskloop.features.stream.OnlinePush`` (plan cached per registry version,
both entities in one transaction and one round trip by ``riskloop.features.online_write``), on the
same frames, alternating, against the configured stack (Feast definitions applied: run after
`riskloop demo` or an ingest).

    python bench/stream_push_profile.py --rounds 200 --keys 3 [--profile]

Each round pushes ``--keys`` card rows and as many customer rows (3: a round at 50-200 events/s;
300: a round at 1,000 events/s). Prints p50/p99/mean ms per round of each and, with ``--profile``, the top cumulative
entries of a cProfile of each.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import time
import uuid
from datetime import UTC, datetime

import pandas as pd
from feast.data_source import PushMode

from riskloop.core import windows
from riskloop.core.config import get_settings
from riskloop.features import store as features
from riskloop.features.stream import OnlinePush


def frames(run: str, i: int, keys: int) -> dict[str, pd.DataFrame]:
    out = {}
    now = pd.Timestamp(datetime.now(UTC))
    for e in windows.ENTITIES:
        rows = [{e.key: f"{run}_{e.name}{i}_{k}", windows.TIMESTAMP_FIELD: now,
                 **{n: i + k for n in windows.feature_names(e)}} for k in range(keys)]
        out[windows.push_source_name(e)] = pd.DataFrame(rows)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--keys", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    store = features.feature_store(get_settings())
    pusher = OnlinePush(store)
    run = uuid.uuid4().hex[:8]

    def feast_push(f: dict[str, pd.DataFrame]) -> None:
        for source, df in f.items():
            store.push(source, df, to=PushMode.ONLINE)

    ways = {"feast_push_per_entity": feast_push, "online_push": pusher.push}
    for way in ways.values():  # warm-up: connections, registry cache, plans
        way(frames(run + "w", 0, args.keys))
    timings: dict[str, list[float]] = {k: [] for k in ways}
    profiles = {k: cProfile.Profile() for k in ways}
    load_before = os.getloadavg()
    for i in range(args.rounds):
        for name, way in ways.items():
            f = frames(run, i, args.keys)
            prof = profiles[name] if args.profile else None
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            way(f)
            if prof:
                prof.disable()
            timings[name].append(time.perf_counter() - t0)
    # both wrote the same kind of rows: check the last round's values are what was pushed
    card = windows.entity("card")
    last = f"{run}_card{args.rounds - 1}_0"
    got = store.get_online_features(features=[f"{windows.view_name(card)}:{windows.feature_names(card)[0]}"],
                                    entity_rows=[{card.key: last}]).to_dict()
    assert got[windows.feature_names(card)[0]] == [args.rounds - 1], got
    result = {name: {"p50_ms": pct(t, 0.5), "p99_ms": pct(t, 0.99), "mean_ms": round(sum(t) / len(t) * 1000, 2)}
              for name, t in timings.items()}
    result.update(rounds=args.rounds, keys_per_entity=args.keys, profiled=args.profile,
                  loadavg_before=[round(x, 2) for x in load_before],
                  loadavg_after=[round(x, 2) for x in os.getloadavg()])
    print(json.dumps(result))
    if args.profile:
        for name, prof in profiles.items():
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(18)
            print(f"--- {name} ---\n" + out.getvalue())


if __name__ == "__main__":
    main()
