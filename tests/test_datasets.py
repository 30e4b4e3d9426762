"""One warehouse holds one dataset: the demo's world, then the handbook, then the demo again.

The handbook's derived feeds reuse the simulator's ids (``C000001``, application ids, ...) for
other people, so before datasets were claimed an import upserted its credit applications over the
demo's, and the next demo failed its contracts. These tests run the real loader, contracts and dbt.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from riskloop.core.config import Settings, plain_values

DAYS, CUSTOMERS = 20, 60


def _fingerprint(settings: Settings, table: str) -> tuple[int, str]:
    """Row count and a digest of every row of ``raw.<table>`` (its business columns, in key order)."""
    with psycopg.connect(settings.pg.url(settings.warehouse_db, driver="")) as conn:
        rows = conn.execute(f"select to_jsonb(t) - 'batch_id' - 'loaded_at' from raw.{table} t").fetchall()
    rows = sorted(str(r[0]) for r in rows)
    return len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()


@pytest.fixture(scope="module")
def worlds(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, Path]:
    """A warehouse holding a simulated world, its landing, and a handbook-schema file of another world."""
    from fixtures_marts import isolated_settings

    from riskloop import simulator
    from riskloop.data.ingest import load_landing

    settings = isolated_settings("riskloop_t_datasets").model_copy(
        update={"pan_token_key": SecretStr("datasets-test-token-key")})
    demo = tmp_path_factory.mktemp("demo")
    simulator.write(simulator.simulate(days=DAYS, customers=CUSTOMERS, seed=3), demo)
    load_landing(settings, demo)
    other = tmp_path_factory.mktemp("other")
    # The simulator's transactions.parquet is in the handbook's schema: another seed, the same ids.
    simulator.write(simulator.simulate(days=DAYS, customers=CUSTOMERS, seed=4), other)
    return settings, demo, other / simulator.TRANSACTIONS_FILE


def test_a_second_dataset_is_refused_before_it_writes(worlds: tuple[Settings, Path, Path]) -> None:
    from riskloop.core import db
    from riskloop.data.dataset_claim import DatasetCollision
    from riskloop.ops.handbook import import_handbook

    settings, _, handbook_file = worlds
    before = {t: _fingerprint(settings, t) for t in ("credit_applications", "credit_outcomes", "kyc_records")}
    with db.connect(settings) as conn:
        batches = conn.execute("select count(*) from raw.load_batches").fetchone()[0]
    with pytest.raises(DatasetCollision, match="holds dataset 'simulated'.*RISKLOOP_NAMESPACE=handbook"):
        import_handbook(settings, handbook_file, landing_dir=handbook_file.parent / "handbook-landing",
                        materialize=False)
    assert {t: _fingerprint(settings, t) for t in before} == before
    with db.connect(settings) as conn:
        assert conn.execute("select count(*) from raw.load_batches").fetchone()[0] == batches
        assert conn.execute("select name from raw.dataset").fetchone()[0] == "simulated"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_then_handbook_in_its_namespace_then_demo_again(worlds: tuple[Settings, Path, Path]) -> None:
    """The benchmark's road: the handbook goes into namespace ``handbook`` (its own warehouse and Feast
    databases, migrated on demand), all green, and the first dataset's rows are unchanged; the demo's
    landing then loads again into its own warehouse."""
    from riskloop.core import db
    from riskloop.data.ingest import load_landing
    from riskloop.ops.handbook import import_handbook, is_imported
    from riskloop.ops.stack import ensure_namespace

    settings, demo, handbook_file = worlds
    before = {t: _fingerprint(settings, t) for t in ("credit_applications", "credit_outcomes", "kyc_records")}
    spaced = Settings(**{**plain_values(settings), "namespace": "handbook"})
    assert spaced.warehouse_db == f"{settings.warehouse_db}_handbook" and spaced.feast_db == "riskloop_feast_handbook"
    try:
        ensure_namespace(spaced)
        result = import_handbook(spaced, handbook_file, landing_dir=handbook_file.parent / "handbook-landing",
                                 materialize=False)
        assert result.raw_rows["credit_applications"] > 0
        assert is_imported(spaced, handbook_file) and not is_imported(settings, handbook_file)
        with db.connect(spaced) as conn:
            assert conn.execute("select name from raw.dataset").fetchone()[0] == "handbook"
        assert {t: _fingerprint(settings, t) for t in before} == before

        loads = load_landing(settings, demo)  # the demo's second run: the same dataset, nothing changes
        assert sum(r.rows_updated for r in loads) == 0
        assert {t: _fingerprint(settings, t) for t in before} == before
    finally:
        with psycopg.connect(settings.pg.url("postgres", driver=""), autocommit=True) as conn:
            for name in (spaced.warehouse_db, spaced.feast_db):
                conn.execute(f'drop database if exists "{name}" with (force)')


def test_a_warehouse_loaded_before_claims_is_judged_by_its_load_batches(worlds: tuple[Settings, Path, Path]) -> None:
    from riskloop.core import db
    from riskloop.data import dataset_claim

    settings, demo, _ = worlds
    with db.connect(settings) as conn:
        conn.execute("delete from raw.dataset")
        assert dataset_claim.held(conn) == "simulated"
        with pytest.raises(dataset_claim.DatasetCollision):
            dataset_claim.claim(conn, "handbook", demo, settings.warehouse_db)
        conn.rollback()


def test_a_namespace_must_be_a_plain_name() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="namespace"):
        Settings(namespace="Hand-Book")
    assert Settings(namespace="handbook").warehouse_db == "riskloop_handbook"
