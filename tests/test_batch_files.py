"""Processors' batch files through a real S3-compatible server (moto_server on loopback, boto3):
idempotent loads keyed by (file, line), arrival times, archiving, and explicit rejection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from riskloop.core import db
from riskloop.core.config import Settings
from riskloop.core.objectstore import LocalStore, S3Store, open_store
from riskloop.core.schema import BATCH_FILE_TABLES, RAW_SCHEMA
from riskloop.data.batch_files import BatchFilesRejected, load_batch_files
from tests.conftest import free_port, start_moto, stop_process
from tests.fixtures_data import moved_home

BUCKET = "processor-drops"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        try:
            yield endpoint
        finally:
            stop_process(proc)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    """A few days of one small simulation's settlement and dispute files."""
    from riskloop import simulator
    from riskloop.simulator.batch import batch_files

    sim = simulator.simulate(days=12, customers=40, seed=3)
    everything = batch_files(sim.tables)
    settlements = sorted(k for k in everything if k.startswith("settlements/"))[:4]
    disputes = sorted(k for k in everything if k.startswith("disputes/"))[:3]
    assert len(settlements) == 4 and len(disputes) == 3, sorted(everything)
    return {k: everything[k] for k in settlements + disputes}


def _empty_tables(settings: Settings, schemas: tuple[str, ...] = (RAW_SCHEMA,)) -> None:
    """Empty the batch-file tables without dropping them: dbt's staging views over them (built by
    any earlier test in this worker's session) must survive, as they do in production."""
    with db.connect(settings) as conn:
        for schema in schemas:
            for table in BATCH_FILE_TABLES.values():
                if conn.execute("select to_regclass(%s)", (f"{schema}.{table.name}",)).fetchone()[0]:
                    conn.execute(f"delete from {schema}.{table.name}")


@pytest.fixture()
def s3_settings(settings: Settings, s3_endpoint: str, request: pytest.FixtureRequest) -> Settings:
    """Settings on a fresh prefix of the bucket, and empty batch-file tables."""
    _empty_tables(settings)
    return settings.model_copy(update={"batch_url": f"s3://{BUCKET}/{request.node.name}",
                                       "s3_endpoint_url": s3_endpoint})


def _deliver(store, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        store.put(f"incoming/{rel}", data)


def _lines(files: dict[str, bytes], kind: str) -> int:
    return sum(data.count(b"\n") - 1 for rel, data in files.items() if rel.startswith(kind + "/"))


def _state(settings: Settings) -> dict[str, tuple[int, str]]:
    with db.connect(settings) as conn:
        return {t.name: db.table_checksum(conn, f"{RAW_SCHEMA}.{t.name}", t.column_names)
                for t in BATCH_FILE_TABLES.values()}


def test_load_twice_gives_identical_rows_and_archives(s3_settings: Settings, files: dict[str, bytes]) -> None:
    store = open_store(s3_settings)
    assert isinstance(store, S3Store) and store.url == f"s3://{BUCKET}/{s3_settings.batch_url.split('/', 3)[3]}"
    _deliver(store, files)
    arrivals = {o.key.removeprefix("incoming/"): o.last_modified for o in store.list("incoming/")}

    first = load_batch_files(s3_settings)
    state = _state(s3_settings)
    assert state["settlement_file_rows"][0] == _lines(files, "settlements") > 0
    assert state["dispute_file_rows"][0] == _lines(files, "disputes") > 0
    assert first.to_dict()["inserted"] == _lines(files, "settlements") + _lines(files, "disputes")
    # Loaded files are moved: incoming is empty, every one is under archive/ with the same bytes.
    assert store.list("incoming/") == []
    assert sorted(first.archived) == sorted(f"archive/{k}" for k in files)
    assert {o.key for o in store.list("archive/")} == {f"archive/{k}" for k in files}
    some = sorted(files)[0]
    assert store.get(f"archive/{some}") == files[some]

    # Arrival time on every row is the object's LastModified (what was known when).
    with db.connect(s3_settings) as conn:
        rows = conn.execute("select source_file, min(arrived_at), max(arrived_at), min(line_no), max(line_no), "
                            "count(*) from raw.settlement_file_rows group by 1").fetchall()
    for source_file, lo, hi, first_line, last_line, n in rows:
        assert lo == hi == arrivals[source_file]
        assert (first_line, last_line) == (1, n)

    # The processor delivers the same files again: nothing changes, not even the arrival times.
    _deliver(store, files)
    second = load_batch_files(s3_settings)
    assert second.to_dict()["inserted"] == 0 and second.to_dict()["updated"] == 0
    assert _state(s3_settings) == state
    assert store.list("incoming/") == []

    # A corrected file (one amount changed) updates that line only, with its new arrival time.
    rel = next(k for k in files if k.startswith("settlements/"))
    header, line1, rest = files[rel].split(b"\n", 2)
    cols = line1.split(b",")
    cols[3] = str(int(cols[3]) + 1).encode()  # amount_minor
    store.put(f"incoming/{rel}", b"\n".join([header, b",".join(cols), rest]))
    third = load_batch_files(s3_settings)
    assert third.to_dict()["updated"] == 1 and third.to_dict()["inserted"] == 0
    with db.connect(s3_settings) as conn:
        changed = conn.execute("select count(*) from raw.settlement_file_rows where source_file = %s "
                               "and arrived_at > %s", (rel, arrivals[rel])).fetchone()[0]
    assert changed == 1


def test_malformed_files_are_rejected_with_nothing_written(s3_settings: Settings, files: dict[str, bytes]) -> None:
    store = open_store(s3_settings)
    good = next(k for k in files if k.startswith("settlements/"))
    header, line1, rest = files[good].split(b"\n", 2)
    bad_value = line1.split(b",")
    bad_value[3] = b"twelve"  # amount_minor
    malformed = {
        "settlements/stripe/bad-header.csv": files[good].replace(b"fee_minor", b"fee", 1),
        "settlements/stripe/bad-value.csv": b"\n".join([header, line1, b",".join(bad_value), rest]),
        "disputes/stripe/truncated.csv": b"processor,dispute_id\nstripe,dsp_1\n",
    }
    _deliver(store, {good: files[good], **malformed})

    with pytest.raises(BatchFilesRejected) as exc:
        load_batch_files(s3_settings)
    assert set(exc.value.rejected) == {f"incoming/{k}" for k in malformed}
    assert "amount_minor" in exc.value.rejected["incoming/settlements/stripe/bad-value.csv"]
    assert "header" in exc.value.rejected["incoming/settlements/stripe/bad-header.csv"]

    # Nothing of a rejected file reached the warehouse (not even its good first line) ...
    with db.connect(s3_settings) as conn:
        by_file = dict(conn.execute("select source_file, count(*) from raw.settlement_file_rows group by 1").fetchall())
        batches = conn.execute("select count(*) from raw.load_batches where source_file = any(%s)",
                               (list(malformed),)).fetchone()[0]
        # The only disputes file was malformed: its table is empty.
        disputes = conn.execute("select count(*) from raw.dispute_file_rows").fetchone()[0]
    assert by_file == {good: files[good].count(b"\n") - 1}
    assert batches == 0 and disputes == 0
    # ... the files are kept intact under rejected/ with the reason beside them; the good one is archived.
    for rel, data in malformed.items():
        assert store.get(f"rejected/{rel}") == data
        assert store.get(f"rejected/{rel}.error.txt").decode().strip()
    assert {o.key for o in store.list("archive/")} == {f"archive/{good}"}
    assert store.list("incoming/") == []


def test_local_directory_is_the_embedded_default(settings: Settings, files: dict[str, bytes], tmp_path: Path) -> None:
    """Unset RISKLOOP_BATCH_URL: <home>/batch, same loader, same layout (no S3 server needed)."""
    local = moved_home(settings, tmp_path, batch_url=None)
    store = open_store(local)
    assert isinstance(store, LocalStore) and store.root == tmp_path / "batch"
    assert isinstance(open_store(local.model_copy(update={"batch_url": (tmp_path / "x").as_uri()})), LocalStore)
    _empty_tables(settings)
    rel = sorted(files)[0]
    store.put(f"incoming/{rel}", files[rel])
    report = load_batch_files(local)
    assert report.to_dict()["inserted"] == files[rel].count(b"\n") - 1
    assert (tmp_path / "batch" / "archive" / rel).read_bytes() == files[rel]
    assert not (tmp_path / "batch" / "incoming" / rel).exists()
    with pytest.raises(ValueError, match="escapes"):
        store.get("../../etc/passwd")


def _replace_field(data: bytes, line: int, column: str, value: str) -> bytes:
    """The CSV with data line ``line`` (1-based) having ``value`` in ``column``."""
    rows = data.split(b"\n")
    header = rows[0].decode().split(",")
    cells = rows[line].split(b",")
    cells[header.index(column)] = value.encode()
    rows[line] = b",".join(cells)
    return b"\n".join(rows)


def test_contract_violation_quarantines_the_rows_and_stops(settings: Settings, files: dict[str, bytes],
                                                           tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Lines that parse but break the contract (a fee above the amount, a lower-case currency, a
    dispute still open with a verdict already) fail the GX check that follows the load: explicitly, logged
    and alerted; exactly those rows move to quarantine, the good ones stay in raw, and the files
    stay byte for byte in archive/. The real simulated files pass."""
    from riskloop.data.contracts import ContractViolation, run_contracts

    local = moved_home(settings, tmp_path, batch_url=None)
    names = [t.name for t in BATCH_FILE_TABLES.values()]
    _empty_tables(settings, (RAW_SCHEMA, "quarantine"))
    store = open_store(local)
    settlement = next(k for k in sorted(files) if k.startswith("settlements/"))
    dispute = next(k for k in sorted(files) if k.startswith("disputes/"))
    _deliver(store, files)
    load_batch_files(local)
    assert run_contracts(local, names).success  # what the simulated processors deliver is in contract

    amount = int(files[settlement].split(b"\n")[2].split(b",")[3])
    bad_settlement = _replace_field(_replace_field(files[settlement], 2, "fee_minor", str(amount + 1)),
                                    3, "currency", "eur")
    assert b",opened,," in files[dispute].split(b"\n")[1]
    bad_dispute = _replace_field(files[dispute], 1, "fraud_confirmed", "true")
    corrected = {settlement: bad_settlement, dispute: bad_dispute}
    _deliver(store, corrected)  # the processor re-delivers two files, with bad lines in them
    assert load_batch_files(local).to_dict()["updated"] == 3  # they parse: only the contract can catch them

    with caplog.at_level("ERROR"), pytest.raises(ContractViolation) as info:
        run_contracts(local, names)
    report = info.value.report
    assert {f.label for f in report.failures} == {
        "expect_column_pair_values_a_to_be_greater_than_b(amount_minor,fee_minor)",
        "expect_column_values_to_match_regex(currency)",
        "unexpected_rows_expectation[fraud_confirmed is set exactly when the dispute is closed (won or lost)]"}
    assert report.quarantined == {"settlement_file_rows": 2, "dispute_file_rows": 1}
    assert "settlement_file_rows" in str(info.value) and "quarantine.dispute_file_rows" in str(info.value)
    assert any(r.name == "riskloop.alerts" and "contract_violation" in r.getMessage() for r in caplog.records)
    with db.connect(settings) as conn:
        quarantined = conn.execute(
            "select source_file, line_no, _expectations from quarantine.settlement_file_rows "
            "union all select source_file, line_no, _expectations from quarantine.dispute_file_rows "
            "order by 1, 2").fetchall()
        counts = {n: conn.execute(f"select count(*) from {RAW_SCHEMA}.{n}").fetchone()[0] for n in names}
    assert [(f, n) for f, n, _ in quarantined] == sorted([(dispute, 1), (settlement, 2), (settlement, 3)])
    assert counts == {"settlement_file_rows": _lines(files, "settlements") - 2,
                      "dispute_file_rows": _lines(files, "disputes") - 1}
    for rel, data in corrected.items():  # the delivered files are kept as they came
        assert store.get(f"archive/{rel}") == data
    # what is left in raw passes
    assert run_contracts(local, names).success
