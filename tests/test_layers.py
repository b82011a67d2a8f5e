"""The import graph: jobs are leaves on top, packages below know nothing of jobs, corpus knows nothing of Ray.

Checked statically (ast), so a violation fails here however deep the import hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("chipforge", "corpus", "synthesis", "training", "pipelines", "serving", "evaluation")


def _modules(*roots: str) -> list[Path]:
    return sorted(p for r in roots if (REPO / r).exists() for p in (REPO / r).rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def test_no_job_imports_another_job_and_no_package_imports_jobs() -> None:
    bad = [f"{_rel(p)} imports {m}" for p in _modules("jobs", *PACKAGES, "bench")
           for m, _ in _imports(p) if m == "jobs" or m.startswith("jobs.")]
    assert not bad, "jobs are leaves:\n" + "\n".join(bad)


def test_corpus_and_synthesis_do_not_import_ray() -> None:
    bad = [f"{_rel(p)} imports {m}" for p in _modules("corpus", "synthesis")
           for m, _ in _imports(p) if m == "ray" or m.startswith("ray.")]
    assert not bad, "Ray composition belongs in pipelines/:\n" + "\n".join(bad)


def test_bench_uses_only_public_names() -> None:
    bad = [f"{_rel(p)}: from {m} import {n}" for p in _modules("bench") for m, names in _imports(p)
           if m.split(".")[0] in PACKAGES for n in names if n.startswith("_")]
    assert not bad, "\n".join(bad)


def test_map_batches_is_called_only_by_the_stage_adapter() -> None:
    bad = []
    for p in _modules(*PACKAGES, "jobs", "bench"):
        if _rel(p) == "chipforge/stage.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Attribute) and node.attr == "map_batches":
                bad.append(f"{_rel(p)}:{node.lineno}")
    assert not bad, "use chipforge.stage.map_stage:\n" + "\n".join(bad)


def test_job_modules_are_short_leaves() -> None:
    long = [f"{_rel(p)}: {n} lines" for p in _modules("jobs")
            if (n := len(p.read_text().splitlines())) > 60]
    assert not long, "\n".join(long)
