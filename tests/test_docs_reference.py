"""The reference pages are generated from the code: the committed ones must equal a fresh run, so a
changed option, endpoint or setting cannot leave them stale. And the README stays a ten-minute read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "reference"


def test_committed_reference_equals_a_fresh_generation(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(REPO / "docs" / "generate_reference.py"), "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    fresh = sorted(p.name for p in tmp_path.glob("*.md"))
    assert fresh == ["api.md", "cli.md", "configuration.md"]
    for name in fresh:
        committed = (REFERENCE / name).read_text(encoding="utf-8")
        assert committed == (tmp_path / name).read_text(encoding="utf-8"), (
            f"docs/reference/{name} is stale: run `make docs` (python docs/generate_reference.py) and commit it")


def test_reference_names_no_machine_paths() -> None:
    for page in REFERENCE.glob("*.md"):
        assert str(REPO) not in page.read_text(encoding="utf-8"), page.name


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 160
    assert "make demo" in readme and "make test" in readme
