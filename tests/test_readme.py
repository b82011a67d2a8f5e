"""The README's recipes do what it says, on the bundled sample."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_load_dataset_recipe_keeps_splits_apart(monkeypatch) -> None:
    """The recipe used to put train, validation and test rows into one "train" split."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    recipe = next(b for b in blocks if "load_dataset" in b)
    monkeypatch.chdir(REPO)
    scope: dict = {}
    exec(recipe.replace("DIR", "sample/dataset"), scope)  # noqa: S102 - our own README
    ds = scope["ds"]
    assert len(ds) >= 2
    for name, split in ds.items():
        assert split.num_rows > 0 and set(split["split"]) == {name}
