"""Group splits: every group (repository, documentation page) goes wholly into one split.

Assignment is computed on the driver from the distinct group list (small) and applied to rows
in a map stage. Deterministic by seed: groups are ordered by sha256(seed:group).

Groups (``module_group``, ``doc_group``): a module's repository; a documentation chunk's page
(``<source>:<page>``), not its whole source: a documentation source is often the only one of
its phase (OpenSTA for timing), and as one group it lands in a single split and leaves the
phase's other splits empty. Pages of one manual are distinct material, so test pages stay
unseen in training.

``assign_by_phase`` (the dataset job) keeps groups disjoint across *all* phases (a group has one
split, so a module's triage example shares its rtl_design example's split, and synthetic
examples inherit their seed group's split from one map) while filling each phase's splits:

1. minimums first: for each split in order (train, then validation, then test) and each phase
   (fewest groups first), unassigned groups of the phase are taken until the phase's count in
   that split reaches ``min_examples[split]`` (train takes the largest groups, preferring among
   equals one that holding out would overfill other phases' held-out splits with, then the
   purest; the held-out splits take the smallest groups that reach the minimum, so they do not
   drain the phase);
2. the other groups, largest first, go where their phases are furthest below the split ratios
   (a share-weighted deficit over the phases the group holds);
3. a phase left below a minimum is reported in ``SplitPlan.warnings`` (too few groups), unless
   all its groups are ``pinned`` (their split is decided elsewhere, e.g. router questions).

``assign_groups`` is the phase-blind form (one size per group) kept for callers that have no
phases; tiny inputs there fill train first, then validation, then test.
"""

from __future__ import annotations

import math
import posixpath
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chipforge.vocab import sha256_hex

DEFAULT_RATIOS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}
DEFAULT_MIN_EXAMPLES: dict[str, int] = {"train": 1, "validation": 1, "test": 1}


def _key(seed: int, group: str) -> str:
    return sha256_hex(f"{seed}:{group}")


def module_group(row: Mapping[str, Any]) -> str:
    """Split group of a module row (or a module example's provenance): its repository."""
    return str(row.get("repo") or "unknown")


def doc_group(row: Mapping[str, Any]) -> str:
    """Split group of a documentation chunk: ``<source>:<page>``.

    The page is the URL without its fragment for web pages, else the page title (local files
    have machine-specific ``file://`` URLs, and a title keeps reports portable), else the
    URL's file name. Synthesis seeds use this too, so their examples inherit the page's split.
    """
    source = str(row.get("source") or "unknown")
    url = str(row.get("url") or "").split("#", 1)[0]
    if url.startswith(("http://", "https://")):
        page = url
    else:
        page = str(row.get("title") or "") or posixpath.basename(url) or "unknown"
    return f"{source}:{page}"


def _split_names(ratios: Mapping[str, float]) -> list[str]:
    splits = [s for s, r in ratios.items() if r > 0]
    if not splits:
        raise ValueError(f"split ratios need at least one positive value: {dict(ratios)}")
    return splits


def assign_groups(sizes: Mapping[str, int], ratios: Mapping[str, float] = DEFAULT_RATIOS,
                  seed: int = 0) -> dict[str, str]:
    """group → split, phase-blind. ``sizes``: rows (or examples) per group; ``ratios`` in split order.

    One group per split (in split order) while groups last, then largest groups first where the
    deficit against the target share of rows is largest.
    """
    splits = _split_names(ratios)
    total_ratio = sum(ratios[s] for s in splits)
    groups = sorted(sizes, key=lambda g: _key(seed, g))
    out: dict[str, str] = {}
    for split, group in zip(splits, groups):
        out[group] = split
    rest = sorted(groups[len(out):], key=lambda g: (-sizes[g], _key(seed, g)))
    filled = {s: 0 for s in splits}
    for g, s in out.items():
        filled[s] += sizes[g]
    total = sum(sizes.values()) or 1
    for g in rest:
        split = max(splits, key=lambda s: (ratios[s] / total_ratio) * total - filled[s])
        out[g] = split
        filled[split] += sizes[g]
    return out


@dataclass
class SplitPlan:
    """Result of :func:`assign_by_phase`: the group → split map, examples per phase and split, warnings."""

    split_of: dict[str, str]
    counts: dict[str, dict[str, int]]  # phase → split → examples
    groups: dict[str, dict[str, int]]  # phase → split → groups holding examples of the phase
    warnings: list[str] = field(default_factory=list)


def assign_by_phase(counts: Mapping[str, Mapping[str, int]], ratios: Mapping[str, float] = DEFAULT_RATIOS,
                    min_examples: Mapping[str, int] = DEFAULT_MIN_EXAMPLES, seed: int = 0,
                    pinned: Mapping[str, str] | None = None) -> SplitPlan:
    """Assign each group to one split so every phase's splits meet ``min_examples`` where they can.

    ``counts``: group → phase → examples. ``min_examples``: split → minimum examples per phase
    (a split missing from it has minimum 0). ``pinned``: groups whose split is decided elsewhere
    (they count toward the phases' fills first). See the module docstring for the procedure.
    """
    splits = _split_names(ratios)
    total_ratio = sum(ratios[s] for s in splits)
    share = {s: ratios[s] / total_ratio for s in splits}
    by_phase: dict[str, list[str]] = defaultdict(list)
    for g in sorted(counts, key=lambda g: _key(seed, g)):
        for p, n in counts[g].items():
            if n > 0:
                by_phase[p].append(g)
    phase_total = {p: sum(counts[g][p] for g in gs) for p, gs in by_phase.items()}
    filled: dict[str, dict[str, int]] = {p: defaultdict(int, {s: 0 for s in splits}) for p in by_phase}
    out: dict[str, str] = {}

    def place(g: str, s: str) -> None:
        out[g] = s
        for p, n in counts[g].items():
            if n > 0:
                filled[p][s] += n

    for g, s in sorted((pinned or {}).items()):
        if g in counts:
            place(g, s)
    held_share = max((share[s] for s in splits[1:]), default=0.0)

    def overshoot(g: str, p: str) -> float:
        """Examples of other phases by which holding ``g`` out would exceed their held-out share:
        train takes such a group (a repository with most of rtl_design and one power cell) first."""
        return sum(max(0.0, n - held_share * phase_total[q]) for q, n in counts[g].items() if q != p and n > 0)

    phase_order = sorted(by_phase, key=lambda p: (len(by_phase[p]), p))
    for s in splits:
        want = int(min_examples.get(s, 0))
        for p in phase_order:
            while filled[p][s] < want:
                free = [g for g in by_phase[p] if g not in out]
                if not free:
                    break
                need = want - filled[p][s]
                if s == splits[0]:  # train: the largest group of the phase, see overshoot
                    pick = max(free, key=lambda g: (counts[g][p], math.floor(overshoot(g, p)),
                                                    counts[g][p] - sum(counts[g].values())))
                else:  # held out: the smallest group (all phases) that reaches the minimum, else the largest
                    enough = [g for g in free if counts[g][p] >= need]
                    pick = (min(enough, key=lambda g: (sum(counts[g].values()), -counts[g][p]))
                            if enough else max(free, key=lambda g: counts[g][p]))
                place(pick, s)

    def deficit(g: str, s: str) -> float:
        size = sum(counts[g].values()) or 1
        return sum(n / size * (share[s] - filled[p][s] / phase_total[p])
                   for p, n in counts[g].items() if n > 0)

    rest = sorted((g for g in counts if g not in out), key=lambda g: (-sum(counts[g].values()), _key(seed, g)))
    for g in rest:
        place(g, max(splits, key=lambda s: (deficit(g, s), -splits.index(s))))

    groups: dict[str, dict[str, int]] = {p: {s: 0 for s in splits} for p in by_phase}
    for p, gs in by_phase.items():
        for g in gs:
            groups[p][out[g]] = groups[p].get(out[g], 0) + 1
    warnings = [f"phase {p}: {s} has {filled[p][s]} examples < minimum {min_examples[s]} "
                f"({len(by_phase[p])} groups in the phase, {phase_total[p]} examples)"
                for p in sorted(by_phase) for s in splits
                if filled[p][s] < int(min_examples.get(s, 0)) and not all(g in (pinned or {}) for g in by_phase[p])]
    return SplitPlan(split_of=out, counts={p: dict(v) for p, v in sorted(filled.items())},
                     groups={p: dict(v) for p, v in sorted(groups.items())}, warnings=warnings)
