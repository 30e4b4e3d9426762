"""Nothing is ingested for nothing: every raw table of riskloop/core/schema.py is read, through dbt's own
lineage (the manifest of `dbt parse`), by at least one mart, the models Feast's views, training, the labels
and the alert checks read. A raw table that only reaches staging or intermediate models fails here."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

from riskloop.core import schema
from riskloop.core.config import Settings
from riskloop.core.schema import RawTable


def raw_tables() -> dict[str, RawTable]:
    """Every RawTable schema.py declares, however it groups them (a constant, a tuple, a dict)."""
    found: dict[str, RawTable] = {}
    for value in vars(schema).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple | list) else [value]
        for item in items:
            if isinstance(item, RawTable):
                found[item.name] = item
    return found


def test_schema_declares_the_inbox_and_the_batch_files() -> None:
    assert {"webhook_inbox", "settlement_file_rows", "dispute_file_rows", *schema.RAW_TABLES_BY_NAME} <= set(raw_tables())


def test_every_raw_table_reaches_a_mart(tmp_path: Path) -> None:
    from riskloop.data.transform import dbt_artifacts_dir, run_dbt

    settings = Settings(home=tmp_path)
    run_dbt(settings, ["parse"])  # no connection: parse only
    manifest = json.loads((dbt_artifacts_dir(settings) / "target" / "manifest.json").read_text())
    nodes, children = manifest["nodes"], manifest["child_map"]
    sources = {(s["schema"], s["name"]): uid for uid, s in manifest["sources"].items()}

    def marts_reading(uid: str) -> set[str]:
        """The mart models downstream of a node (models only: tests are not readers)."""
        seen, queue, marts = {uid}, deque([uid]), set()
        while queue:
            for child in children.get(queue.popleft(), []):
                node = nodes.get(child)
                if child in seen or node is None or node["resource_type"] != "model":
                    continue
                seen.add(child)
                queue.append(child)
                if node["original_file_path"].startswith("models/marts/"):
                    marts.add(node["name"])
        return marts

    unread = {}
    for name in raw_tables():
        uid = sources.get((schema.RAW_SCHEMA, name))
        reached = marts_reading(uid) if uid else set()
        if not reached:
            unread[name] = "not a dbt source" if uid is None else "no mart reads it"
    assert unread == {}, unread
