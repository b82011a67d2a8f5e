"""Parse-stage speed on one core: MB/s of ``VerilogParser.parse`` against tree-sitter alone.

Builds a large text by repeating the bundled sample corpus (``sample/repos``) with every unit
renamed per copy, so the mix of constructs is realistic (comments, parameters, generate blocks,
ifdefs, includes, macros), then times, per grammar:
  - ``tree_sitter``: ``Parser.parse`` alone on the raw text (the floor),
  - ``stage``: ``VerilogParser.parse`` (preprocess + parse + extraction + recovery),
  - ``stage_files``: ``ParseStage`` over the sample's files one row each (per-file overhead).
Times are CPU seconds of this process (best of --repeat). Prints MB/s and the ratio stage/tree_sitter; writes ``bench/results/parse_speed.json``.
Target (issue 2): about 5 MB/s per core with tree-sitter-systemverilog.

    python bench/parse_speed.py [--copies 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402

from corpus.schema import FILES_SCHEMA  # noqa: E402
from corpus.verilog import ParseStage, VerilogParser  # noqa: E402

EXTS = (".v", ".sv", ".vh", ".svh")


def sample_files() -> list[tuple[str, str, str]]:
    base = ROOT / "sample" / "repos"
    return [
        (p.relative_to(base).parts[0], str(p.relative_to(base)), p.read_text())
        for p in sorted(base.rglob("*"))
        if p.suffix in EXTS
    ]


def big_text(files: list[tuple[str, str, str]], copies: int) -> str:
    body = "\n".join(t for _, _, t in files if not t.lstrip().startswith("`include"))
    unit = r"^\s*(?:module|interface|package|primitive)\s+(\w+)"
    names = sorted(set(re.findall(unit, body, re.M)), key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    return "\n".join(pattern.sub(lambda m, i=i: f"{m.group(1)}_{i}", body) for i in range(copies))


def best(fn, repeat: int) -> float:
    """Least CPU time of ``repeat`` runs (process time: robust to other jobs on the machine)."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    files = sample_files()
    text = big_text(files, args.copies)
    mb = len(text.encode()) / 1e6
    table = pa.Table.from_pylist(
        [
            {"repo": r, "url": f"file:///{r}", "commit": "0", "path": p, "license": None, "text": t,
             "encoding": "utf-8", "n_bytes": len(t.encode()), "manifest_index": 0}
            for r, p, t in files
        ],
        schema=FILES_SCHEMA,
    )
    files_mb = sum(len(t.encode()) for _, _, t in files) / 1e6
    results: dict[str, dict[str, float]] = {}
    for grammar in ("systemverilog", "verilog"):
        parser = VerilogParser(grammar)
        stage = ParseStage(grammar)
        n_units = len(parser.parse(text, "big.sv"))
        t_ts = best(lambda: parser._parser.parse(text.encode()), args.repeat)
        t_stage = best(lambda: parser.parse(text, "big.sv"), args.repeat)
        t_files = best(lambda: stage(table), args.repeat * 3)
        results[grammar] = {
            "mb": round(mb, 3),
            "units": n_units,
            "tree_sitter_mb_s": round(mb / t_ts, 2),
            "stage_mb_s": round(mb / t_stage, 2),
            "ratio_stage_to_tree_sitter": round(t_ts / t_stage, 3),
            "stage_files_mb_s": round(files_mb / t_files, 2),
        }
        r = results[grammar]
        print(
            f"{grammar:14s} {mb:.2f} MB, {n_units} units: tree-sitter alone {r['tree_sitter_mb_s']} MB/s, "
            f"VerilogParser.parse {r['stage_mb_s']} MB/s (ratio {r['ratio_stage_to_tree_sitter']}), "
            f"ParseStage on {len(files)} sample files {r['stage_files_mb_s']} MB/s"
        )
    out = ROOT / "bench" / "results" / "parse_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
