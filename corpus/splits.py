"""Group splits: every repository / documentation source goes wholly into one split.

Assignment is computed on the driver from the distinct group list (small) and applied to rows
in a map stage. Deterministic by seed: groups are ordered by sha256(seed:group), then filled
greedily so each split's share of *rows* approaches its ratio (largest groups first, so a big
repository cannot silently swallow the test split).

Tiny inputs: with fewer groups than non-zero splits, the first split in config order (train)
is filled first, then the next: 1 group → train; 2 groups → train + the next split with
non-zero ratio (validation); 3+ groups → every split with a non-zero ratio gets at least one.
"""

from __future__ import annotations

from collections.abc import Mapping

from chipforge.vocab import sha256_hex

DEFAULT_RATIOS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _key(seed: int, group: str) -> str:
    return sha256_hex(f"{seed}:{group}")


def assign_groups(sizes: Mapping[str, int], ratios: Mapping[str, float] = DEFAULT_RATIOS,
                  seed: int = 0) -> dict[str, str]:
    """group → split. ``sizes``: rows (or examples) per group; ``ratios`` in split order."""
    splits = [s for s, r in ratios.items() if r > 0]
    if not splits:
        raise ValueError(f"split ratios need at least one positive value: {dict(ratios)}")
    total_ratio = sum(ratios[s] for s in splits)
    groups = sorted(sizes, key=lambda g: _key(seed, g))
    out: dict[str, str] = {}
    # Guarantee one group per split (in split order) while groups last.
    for split, group in zip(splits, groups):
        out[group] = split
    rest = sorted(groups[len(out):], key=lambda g: (-sizes[g], _key(seed, g)))
    filled = {s: 0 for s in splits}
    for g, s in out.items():
        filled[s] += sizes[g]
    total = sum(sizes.values()) or 1
    for g in rest:
        # put the group where the deficit against the target share is largest
        split = max(splits, key=lambda s: (ratios[s] / total_ratio) * total - filled[s])
        out[g] = split
        filled[split] += sizes[g]
    return out
