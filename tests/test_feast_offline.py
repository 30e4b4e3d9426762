"""riskloop's LATERAL offline store returns what Feast's stock Postgres offline store returns.

Both stores read the same small tables on the session's Postgres through two Feast repos that
differ only in ``offline_store.type``. The data plants every case the point-in-time join has
rules for: feature rows after the entity time, TTL expiry (and its inclusive edge), a tie on
the event timestamp broken by ``created_timestamp``, rows created after the entity time
(``filter_by_created_timestamp``), a view without TTL, unknown entities, a field mapping,
``full_feature_names`` and an on-demand view; plus a few hundred random rows.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from fixtures_marts import isolated_settings

pytestmark = pytest.mark.timeout(300)

T0 = pd.Timestamp("2024-03-01 00:00:00", tz="UTC")
H = pd.Timedelta(hours=1)


def _driver_rows(rng: np.random.Generator) -> pd.DataFrame:
    """Planted cases for driver d1/d2, then random rows for d3..d5 (unique timestamps per driver)."""
    planted = [
        # driver, ts, created, conv, trips
        ("d1", T0, T0, 0.10, 1),
        ("d1", T0 + H, T0 + H, 0.20, 2),                 # tie on ts with the next row:
        ("d1", T0 + H, T0 + 3 * H, 0.30, 3),             # created later → wins (unless filtered)
        ("d2", T0 + 2 * H, T0 + 2 * H, 0.40, 4),
    ]
    rows = list(planted)
    for d in ("d3", "d4", "d5"):
        seconds = rng.choice(3 * 24 * 3600, size=60, replace=False)
        for s in seconds:
            ts = T0 + pd.Timedelta(seconds=int(s))
            rows.append((d, ts, ts + pd.Timedelta(minutes=int(rng.integers(0, 90))),
                         float(rng.random()), int(rng.integers(0, 50))))
    return pd.DataFrame(rows, columns=["driver_id", "event_ts", "created_ts", "conv_rate", "trips_src"])


def _rider_rows(rng: np.random.Generator) -> pd.DataFrame:
    seconds = rng.choice(3 * 24 * 3600, size=80, replace=False)
    return pd.DataFrame({
        "rider_id": rng.choice(["r1", "r2", "r3"], size=80),
        "event_ts": [T0 + pd.Timedelta(seconds=int(s)) for s in seconds],
        "rating": rng.random(80),
    })


def _entities(rng: np.random.Generator) -> pd.DataFrame:
    planted = [
        ("d1", "r1", T0 - H),                            # before any feature row → nulls
        ("d1", "r1", T0),                                # exactly at a feature row's ts (<=)
        ("d1", "r2", T0 + H),                            # the tie: created wins
        ("d1", "r2", T0 + 2 * H),                        # tie, and the winner was created after → filtered
        ("d1", "r3", T0 + 3 * H),                        # ttl edge: ts + ttl (2 h) == entity ts → kept
        ("d1", "r3", T0 + 3 * H + pd.Timedelta(seconds=1)),  # just past the ttl → nulls
        ("d2", "r9", T0 + 2 * H),                        # unknown rider → nulls
        ("d9", "r1", T0 + 10 * H),                       # unknown driver → nulls
        ("d2", "r1", T0 + 30 * 24 * H),                  # far later: rider view has no ttl
    ]
    rows = list(planted)
    for _ in range(300):
        rows.append((str(rng.choice(["d3", "d4", "d5", "d1"])), str(rng.choice(["r1", "r2", "r3"])),
                     T0 + pd.Timedelta(seconds=int(rng.integers(-3600, 4 * 24 * 3600)))))
    frame = pd.DataFrame(rows, columns=["driver_id", "rider_id", "event_timestamp"])
    return frame.assign(row_id=np.arange(len(frame)), label=rng.integers(0, 2, len(frame)))


@pytest.fixture(scope="module")
def pit_stores(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """(stock store, riskloop store, entity frame, settings) over the same tables."""
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, RequestSource
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.on_demand_feature_view import on_demand_feature_view
    from feast.repo_config import RepoConfig
    from feast.types import Float64, Int64, String

    settings = isolated_settings("riskloop_t_feast_offline")
    rng = np.random.default_rng(7)
    drivers, riders, entities = _driver_rows(rng), _rider_rows(rng), _entities(rng)
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        conn.execute("create schema pit")
        conn.execute("create table pit.driver_stats (driver_id text, event_ts timestamptz, created_ts timestamptz, "
                     "conv_rate double precision, trips_src bigint)")
        conn.execute("create index on pit.driver_stats (driver_id, event_ts)")
        conn.execute("create table pit.rider_stats (rider_id text, event_ts timestamptz, rating double precision)")
        conn.execute("create table pit.entities (driver_id text, rider_id text, event_timestamp timestamptz, "
                     "row_id bigint, label bigint)")
        for table, frame in (("driver_stats", drivers), ("rider_stats", riders), ("entities", entities)):
            with conn.cursor().copy(f"copy pit.{table} ({', '.join(frame.columns)}) from stdin") as copy:
                for row in frame.itertuples(index=False, name=None):
                    copy.write_row([v.to_pydatetime() if isinstance(v, pd.Timestamp) else
                                    v.item() if isinstance(v, np.generic) else v for v in row])

    driver = Entity(name="driver", join_keys=["driver_id"])
    rider = Entity(name="rider", join_keys=["rider_id"])
    driver_stats = FeatureView(
        name="driver_stats", entities=[driver], ttl=timedelta(hours=2),
        schema=[Field(name="driver_id", dtype=String), Field(name="conv_rate", dtype=Float64),
                Field(name="trips", dtype=Int64)],
        source=PostgreSQLSource(name="driver_stats", table="pit.driver_stats", timestamp_field="event_ts",
                                created_timestamp_column="created_ts", field_mapping={"trips_src": "trips"}))
    rider_stats = FeatureView(
        name="rider_stats", entities=[rider], ttl=timedelta(0),
        schema=[Field(name="rider_id", dtype=String), Field(name="rating", dtype=Float64)],
        source=PostgreSQLSource(name="rider_stats", table="pit.rider_stats", timestamp_field="event_ts"))
    request = RequestSource(name="req", schema=[Field(name="label", dtype=Int64)])

    @on_demand_feature_view(sources=[driver_stats, request], schema=[Field(name="conv_x_label", dtype=Float64)],
                            mode="pandas")
    def conv_x_label(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"conv_x_label": inputs["conv_rate"] * inputs["label"]})

    service = FeatureService(name="pit_service", features=[driver_stats, rider_stats, conv_x_label])
    pg = settings.pg
    stores = []
    for kind in ("postgres", "riskloop.features.feast_offline.RiskloopPostgreSQLOfflineStore"):
        repo = Path(tmp_path_factory.mktemp("feast_repo"))
        config = RepoConfig(
            project="pit", provider="local", repo_path=repo, entity_key_serialization_version=3,
            registry={"registry_type": "file", "path": str(repo / "registry.db")},
            online_store={"type": "sqlite", "path": str(repo / "online.db")},
            offline_store={"type": kind, "host": pg.host, "port": pg.port, "database": settings.warehouse_db,
                           "db_schema": "public", "user": pg.user, "password": pg.password, "sslmode": "disable"})
        store = FeatureStore(config=config)
        store.apply([driver, rider, driver_stats, rider_stats, conv_x_label, service])
        stores.append(store)
    return stores[0], stores[1], entities, settings


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.sort_values("row_id", kind="mergesort").reset_index(drop=True)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame[sorted(frame.columns)]


def _compare(stock_job, ours_job) -> pd.DataFrame:
    stock, ours = _normalise(stock_job.to_df()), _normalise(ours_job.to_df())
    # The stock store returns an entity row once per feature row tied on every timestamp; the
    # planted data has no such full tie, so the row counts must agree exactly.
    assert len(stock) == len(ours)
    assert list(stock.columns) == list(ours.columns)
    pd.testing.assert_frame_equal(ours, stock, check_dtype=False)
    return ours


FEATURES = ["driver_stats:conv_rate", "driver_stats:trips", "rider_stats:rating", "conv_x_label:conv_x_label"]


@pytest.mark.parametrize("full_feature_names", [False, True])
@pytest.mark.parametrize("entity_kind", ["dataframe", "sql"])
def test_lateral_store_matches_stock_feast(pit_stores, full_feature_names: bool, entity_kind: str) -> None:
    stock, ours, entities, _ = pit_stores
    entity_df = entities if entity_kind == "dataframe" else "select * from pit.entities"
    got = _compare(stock.get_historical_features(entity_df=entity_df, features=FEATURES,
                                                 full_feature_names=full_feature_names),
                   ours.get_historical_features(entity_df=entity_df, features=FEATURES,
                                                full_feature_names=full_feature_names))
    conv = "driver_stats__conv_rate" if full_feature_names else "conv_rate"
    rating = "rider_stats__rating" if full_feature_names else "rating"
    planted = got.set_index("row_id")
    # The planted rows, by hand (so agreement with the stock store is not agreement on nonsense):
    assert pd.isna(planted.loc[0, conv]) and planted.loc[1, conv] == 0.10
    assert planted.loc[2, conv] == 0.30 and planted.loc[3, conv] == 0.30  # created later wins the tie
    assert planted.loc[4, conv] == 0.30 and pd.isna(planted.loc[5, conv])  # ttl edge inclusive, then expired
    assert pd.isna(planted.loc[6, rating]) and pd.isna(planted.loc[7, conv])
    assert pd.isna(planted.loc[8, conv])  # d2's row is 30 days old: ttl
    assert not pd.isna(planted.loc[8, rating])  # no ttl on rider_stats
    odfv = "conv_x_label__conv_x_label" if full_feature_names else "conv_x_label"
    assert planted[odfv].fillna(-1).equals((planted[conv] * planted["label"]).fillna(-1))
    assert planted[conv].notna().sum() > 100 and planted[rating].notna().sum() > 200


def test_lateral_store_matches_stock_with_created_timestamp_filter(pit_stores) -> None:
    stock, ours, entities, _ = pit_stores
    got = _compare(
        stock.get_historical_features(entity_df=entities, features=FEATURES, filter_by_created_timestamp=True),
        ours.get_historical_features(entity_df=entities, features=FEATURES, filter_by_created_timestamp=True))
    planted = got.set_index("row_id")
    assert planted.loc[2, "conv_rate"] == 0.20  # the later-created tie row did not exist yet at T0+1h
    assert planted.loc[3, "conv_rate"] == 0.20  # at T0+2h neither: it was created at T0+3h


def test_lateral_store_uses_the_index(pit_stores) -> None:
    """The generated SQL is one LATERAL lookup per view, which Postgres answers from the index."""
    _, ours, entities, settings = pit_stores
    sql = ours.get_historical_features(entity_df="select * from pit.entities", features=FEATURES).to_sql()
    assert sql.count("left join lateral") == 2
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        conn.execute("set enable_seqscan = off")  # a tiny table: make the planner show it can use the index
        on_entities = re.sub(r'"feast_entity_df_[0-9a-f]+"', "pit.entities", sql)
        plan = "\n".join(r[0] for r in conn.execute("explain " + on_entities))
    assert "driver_stats_driver_id_event_ts_idx" in plan


def test_bad_entity_frame_is_refused(pit_stores) -> None:
    from feast.errors import FeastEntityDFMissingColumnsError

    _, ours, entities, _ = pit_stores
    with pytest.raises(FeastEntityDFMissingColumnsError):
        ours.get_historical_features(entity_df=entities.drop(columns=["rider_id"]), features=FEATURES).to_df()
