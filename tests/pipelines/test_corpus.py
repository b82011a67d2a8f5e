"""The corpus job's manifest staging: validated into an Arrow IPC file, handed to Ray Data in blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pipelines.corpus as corpus

pytestmark = pytest.mark.integration


def _manifest(tmp_path: Path, n: int) -> Path:
    lines = ["repositories:"] + [f"  - {{name: r{i:03d}, url: https://example.invalid/r{i:03d}.git}}" for i in range(n)]
    path = tmp_path / "manifest.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("max_rows", [1000, 4], ids=["driver-puts", "pinned-read-tasks"])
def test_manifest_blocks_hold_every_entry_in_order(tmp_path: Path, ray_session: object,
                                                   monkeypatch: pytest.MonkeyPatch, max_rows: int) -> None:
    """Both ways of making the input blocks (put by the driver; past MAX_BLOCK_ROWS repositories,
    read by tasks on the driver's node) give every manifest entry once, in order, in the
    planned number of blocks; the staging file may be deleted once the dataset exists."""
    monkeypatch.setattr(corpus, "MAX_BLOCK_ROWS", max_rows)
    staged = tmp_path / "manifest.arrow"
    assert corpus.stage_manifest(str(_manifest(tmp_path, 11)), str(staged)) == 11
    ds = corpus.manifest_dataset(str(staged), 11, n_blocks=2)
    staged.unlink()
    assert ds.num_blocks() == (2 if max_rows == 1000 else 3)  # ceil(11 / 4) = 3 blocks of at most 4 rows
    rows = ds.take_all()
    assert [r["manifest_index"] for r in rows] == list(range(11))
    assert [json.loads(r["repository"])["name"] for r in rows] == [f"r{i:03d}" for i in range(11)]


def test_empty_manifest_gives_one_empty_block(tmp_path: Path, ray_session: object) -> None:
    (tmp_path / "manifest.yaml").write_text("repositories: []\n")
    staged = tmp_path / "manifest.arrow"
    assert corpus.stage_manifest(str(tmp_path / "manifest.yaml"), str(staged)) == 0
    ds = corpus.manifest_dataset(str(staged), 0, n_blocks=4)
    assert ds.count() == 0
