"""``riskloop audit pan`` on the real warehouse and the real stack's log and artifact directories:
planted card numbers are found and located (masked), look-alikes are not, a clean stack exits 0."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from riskloop.cli import app
from riskloop.core import db
from riskloop.core.pan import find_pans
from riskloop.ops.audit import default_paths

PLANTED = ("4242 4242 4242 4242", "5555-5555-5555-4444", "378282246310005", "4111111111111111")
# Not card numbers: epoch milliseconds, a Luhn-invalid number in a Visa range, a digit run glued to a
# word (ids, hex digests), a 20-digit id, a phone-like grouping, a decimal.
DECOYS = ("1700000000000", "4111111111111112", "pay_4111111111111111", "a4111111111111111f",
          "41111111111111111111", "+44 20 7946 0958 12", "4111111111111.111")


def test_detector_separates_card_numbers_from_look_alikes() -> None:
    for pan in PLANTED:
        [hit] = list(find_pans(f"x {pan} y"))
        assert hit.masked.endswith(pan.replace(" ", "").replace("-", "")[-4:]) and "*" in hit.masked
    for decoy in DECOYS:
        assert not list(find_pans(f"x {decoy} y")), decoy
    assert not list(find_pans("4242 4242-4242 4242"))  # mixed separators are not one number


def _audit(*args: str) -> tuple[int, dict]:
    res = CliRunner().invoke(app, ["audit", "pan", *args])
    return res.exit_code, json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture()
def planted(settings) -> Iterator[dict[str, Path]]:
    log_file = settings.log_dir / "audit-test.log"
    artifact = default_paths(settings)[-1] / "audit-test" / "notes.txt"
    with db.connect(settings) as conn:
        conn.execute("drop schema if exists audit_plant cascade")
        conn.execute("create schema audit_plant")
        conn.execute("create table audit_plant.t (id text primary key, note varchar(200), doc jsonb, n bigint)")
        conn.execute("insert into audit_plant.t values (%s, %s, %s, %s)",
                     ("r1", f"customer said card {PLANTED[0]} was stolen", json.dumps({"d": list(DECOYS)}), 1))
        conn.execute("insert into audit_plant.t values (%s, %s, %s, %s)",
                     ("r2", " ".join(DECOYS), json.dumps({"card": {"number": PLANTED[1]}}), 2))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("start\nok 1700000000000\n" + f"charge {PLANTED[2]} declined\n")
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_text(f"sample input: {PLANTED[3]}\n")
    try:
        yield {"log": log_file, "artifact": artifact}
    finally:
        with db.connect(settings) as conn:
            conn.execute("drop schema if exists audit_plant cascade")
        log_file.unlink(missing_ok=True)
        shutil.rmtree(artifact.parent, ignore_errors=True)


def test_planted_numbers_are_found_located_and_masked(planted: dict[str, Path]) -> None:
    res = CliRunner().invoke(app, ["audit", "pan"])
    assert res.exit_code == 1, res.output
    for pan in PLANTED:  # nothing printed in clear
        assert pan not in res.output and pan.replace(" ", "").replace("-", "") not in res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    found = {f["location"]: f for f in report["findings"]}
    assert set(found) == {"db:audit_plant.t.note", "db:audit_plant.t.doc", str(planted["log"]),
                          str(planted["artifact"])}
    assert report["hits"] == 4 and all(f["count"] == 1 for f in found.values())
    assert found[str(planted["log"])]["examples"] == ["378282*****0005 (amex) at line 3"]
    assert found["db:audit_plant.t.note"]["examples"][0].startswith("424242******4242 (visa) at ctid ")
    assert report["rows_prefiltered"] >= 2 and report["tables_scanned"] >= 1


def test_clean_stack_exits_zero(settings) -> None:
    with db.connect(settings) as conn:
        conn.execute("drop schema if exists audit_plant cascade")
    code, report = _audit()
    assert code == 0 and report["clean"] and report["hits"] == 0, report["findings"]
    assert report["locations"][0].startswith("db:") and report["files_scanned"] > 0
