"""Parse-stage speed against the plain tree-sitter loop, on real repositories, and where the time goes.

    python bench/parse_speed.py [REPO_DIR ...] [--repeat 3] [--grammar systemverilog] [--slang]

Each REPO_DIR (a checked-out repository) is read as the corpus job reads it (``corpus.files.read_repo``:
default size cap, files skipped by content and counted by reason) and is one batch of ``ParseStage``,
as in the job (``include``s resolve within a repository). Without REPO_DIR, repositories are generated
from the bundled sample (``sample/repos``), each unit renamed per copy (``--copies``).

In the same run, alternating file by file (so that load from other processes hits both sides alike):
  - ``plain``: ``Parser.parse`` of each file's raw text, one call per file (the floor);
  - ``stage``: ``ParseStage`` on the batch (preprocess, grammar rewrites, tree-sitter, extraction,
    recovery, output rows), less the plain parses run inside it.
Times are CPU seconds of this process (one core); each side's time is the sum over batches of the
best of ``--repeat`` rounds. Printed: MB/s per core of each side and the ratio stage/plain (target
>= 0.8), then where the time goes:
  - measured file by file, back to back: ``VerilogParser.parse`` (the stage less row building), its
    preprocessing and tree-sitter on the preprocessed text; the rest is extraction, the recovery
    scan and records; each as a share of ``VerilogParser.parse``;
  - a cProfile of one batch (the largest): share in tree-sitter's ``parse``, in ``preprocess``, in
    extraction (``_Extractor``) and in row building, and the top functions by own time. cProfile
    adds a cost per Python call, so its Python shares are upper bounds.
Also reported: units, ``parse_ok`` share, files skipped by reason, grammar rewrites by kind, and with
``--slang`` (needs ``pip install pyslang``; bench-only) the share of slang's module/interface/package/
program declarations found (same name; same first and last line). Results go to
``bench/results/parse_speed.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402

from corpus.files import read_repo  # noqa: E402
from corpus.preprocess import preprocess  # noqa: E402
from corpus.schema import FILES_SCHEMA  # noqa: E402
from corpus.verilog import ParseStage, VerilogParser, include_basenames, include_resolver  # noqa: E402

EXTS = (".v", ".sv", ".vh", ".svh")
UNIT = re.compile(r"^\s*(?:module|interface|package|primitive|program)\s+(\w+)", re.M)


def real_batches(paths: list[str]) -> tuple[list[list[dict[str, Any]]], Counter[str]]:
    """One batch of FILES_SCHEMA rows per repository directory, and files skipped by reason."""
    batches, skipped = [], Counter()
    for i, path in enumerate(paths):
        name = os.path.basename(os.path.normpath(path))
        res = read_repo(path, repo=name, url=f"file://{os.path.abspath(path)}", commit="HEAD", manifest_index=i)
        skipped.update(res.skipped)
        if res.rows:
            batches.append(res.rows)
    return batches, skipped


def generated_batches(copies: int) -> list[list[dict[str, Any]]]:
    """``copies`` repositories made from the sample corpus, each unit renamed per copy."""
    base = ROOT / "sample" / "repos"
    files = [(str(p.relative_to(base)), p.read_text()) for p in sorted(base.rglob("*")) if p.suffix in EXTS]
    names = sorted({n for _, t in files for n in UNIT.findall(t)}, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    batches = []
    for i in range(copies):
        rows = []
        for rel, text in files:
            t = pattern.sub(lambda m, i=i: f"{m.group(1)}_{i}", text)
            rows.append({"repo": f"gen{i}", "url": f"file:///gen{i}", "commit": "0", "path": rel, "license": None,
                         "text": t, "encoding": "utf-8", "n_bytes": len(t.encode()), "manifest_index": i})
        batches.append(rows)
    return batches


def timed_rounds(batches: list[list[dict[str, Any]]], tables: list[pa.Table], stage: ParseStage,
                 repeat: int) -> tuple[float, float, list[pa.Table], dict[str, Any]]:
    """(plain seconds, stage seconds, stage outputs, summed stage stats).

    The two sides alternate per file: each file's plain parse runs right after the stage has
    parsed it (inside the stage's batch, its time subtracted from the stage's), so load from other
    processes, which drifts over seconds, hits both sides alike. Per batch, the best of ``repeat``.
    """
    ts_parser = stage.parser._parser
    real_parse = stage.parser.parse
    plain_in_batch = [0.0]

    def parse_then_plain(text: str, path: str = "", **kw: Any) -> list[dict[str, Any]]:
        records = real_parse(text, path, **kw)
        t = time.process_time()
        ts_parser.parse(text.encode())
        plain_in_batch[0] += time.process_time() - t
        return records

    plain = [float("inf")] * len(batches)
    staged = [float("inf")] * len(batches)
    outputs: list[pa.Table] = []
    stats: list[dict[str, Any]] = []
    stage.parser.parse = parse_then_plain  # type: ignore[method-assign]
    try:
        for r in range(repeat):
            for b, table in enumerate(tables):
                plain_in_batch[0] = 0.0
                t = time.process_time()
                out = stage(table)
                total = time.process_time() - t
                plain[b] = min(plain[b], plain_in_batch[0])
                staged[b] = min(staged[b], total - plain_in_batch[0])
                if r == 0:
                    outputs.append(out)
                    stats.append(stage.last_stats)
    finally:
        del stage.parser.parse  # the bound method again
    failed: Counter[str] = Counter()
    for st in stats:
        failed.update(st.get("failed_by_reason") or {})
    return sum(plain), sum(staged), outputs, {"files_failed_by_reason": dict(failed)}


def direct_breakdown(batches: list[list[dict[str, Any]]], parser: VerilogParser) -> dict[str, Any]:
    """CPU seconds, file by file and back to back, of ``VerilogParser.parse`` (the stage less its
    row building), of preprocessing (with the grammar rewrites) and of tree-sitter on its output;
    what is left of the parse is extraction, the recovery scan and records."""
    parse_s = pp_s = ts_s = 0.0
    rewrites: Counter[str] = Counter()
    for rows in batches:
        headers = {f["path"]: f["text"] for f in rows if "`define" in f["text"]}
        bases = include_basenames(headers)
        scope = ("bench", id(rows))
        for f in rows:
            resolve = include_resolver(headers, bases, f["path"], scope=scope)
            t = time.process_time()
            parser.parse(f["text"], f["path"], resolve=resolve)
            parse_s += time.process_time() - t
            t = time.process_time()
            res = preprocess(f["text"], {}, resolve)
            pp_s += time.process_time() - t
            rewrites.update(res.rewrites)
            src = res.text.encode()
            t = time.process_time()
            parser._parser.parse(src)
            ts_s += time.process_time() - t
    return {"parse_s": parse_s, "preprocess_s": pp_s, "tree_sitter_on_preprocessed_s": ts_s,
            "rewrites": dict(sorted(rewrites.items()))}


def profile_batch(table: pa.Table, stage: ParseStage, top: int = 12) -> dict[str, Any]:
    """cProfile of ``stage(table)``: shares by part and the top functions by own time."""
    prof = cProfile.Profile()
    prof.enable()
    stage(table)
    prof.disable()
    st = pstats.Stats(prof)
    total = st.total_tt  # type: ignore[attr-defined]
    stats = st.stats  # type: ignore[attr-defined]

    def cum(pred: Any) -> float:
        return sum(v[3] for k, v in stats.items() if pred(k))

    def own(pred: Any) -> float:
        return sum(v[2] for k, v in stats.items() if pred(k))

    ts = own(lambda k: k[2] == "<method 'parse' of 'tree_sitter.Parser' objects>")
    pp = cum(lambda k: k[0].endswith("preprocess.py") and k[2] == "preprocess")
    ext = cum(lambda k: k[0].endswith("verilog.py") and k[2] in ("unit", "unit_name"))
    rows = cum(lambda k: k[0].endswith("schema.py") and k[2] in ("from_rows", "conform"))
    rows += own(lambda k: "sha256" in k[2] or k[2] == "sha256_hex")
    rest = max(total - ts - pp - ext - rows, 0.0)
    funcs = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return {
        "files": table.num_rows,
        "profiled_s": round(total, 3),
        "share": {"tree_sitter_parse": round(ts / total, 3), "preprocess": round(pp / total, 3),
                  "extraction": round(ext / total, 3), "rows": round(rows / total, 3),
                  "other (error scan, recovery scan, records)": round(rest / total, 3)},
        "top_own_time": [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "calls": v[1],
                          "own_s": round(v[2], 3), "cum_s": round(v[3], 3)} for k, v in funcs],
    }


def slang_recall(paths: list[str], outputs: list[pa.Table]) -> dict[str, Any]:
    """Share of slang's declarations (module/interface/package/program) found by the stage."""
    from pyslang import SourceManager  # bench-only, optional
    from pyslang.syntax import SyntaxKind, SyntaxTree

    kinds = {SyntaxKind.ModuleDeclaration, SyntaxKind.InterfaceDeclaration, SyntaxKind.PackageDeclaration,
             SyntaxKind.ProgramDeclaration}
    ours: dict[tuple[str, str], list[tuple[str, int, int]]] = {}
    for out in outputs:
        for r in out.select(["repo", "path", "name", "start_line", "end_line"]).to_pylist():
            ours.setdefault((r["repo"], r["path"]), []).append((r["name"], r["start_line"], r["end_line"]))
    total = found = same = big_total = big_found = 0
    missing: list[str] = []
    for i, path in enumerate(paths):
        repo = os.path.basename(os.path.normpath(path))
        res = read_repo(path, repo=repo)
        dirs = sorted({os.path.dirname(os.path.join(path, f["path"])) for f in res.rows})
        for f in res.rows:
            sm = SourceManager()
            for d in dirs:
                sm.addUserDirectories(d)
            tree = SyntaxTree.fromFile(os.path.join(path, f["path"]), sm)
            decls: list[tuple[str, int, int]] = []

            def visit(node: Any) -> None:
                if node.kind in kinds:
                    loc_a = sm.getFullyOriginalLoc(node.sourceRange.start)
                    if not sm.isIncludedFileLoc(loc_a):
                        loc_b = sm.getFullyOriginalLoc(node.sourceRange.end)
                        decls.append((node.header.name.valueText, sm.getLineNumber(loc_a), sm.getLineNumber(loc_b)))

            tree.root.visit(visit)
            mine = ours.get((repo, f["path"]), [])
            names = {n for n, _, _ in mine}
            big = f["n_bytes"] > 1_000_000
            for name, a, b in decls:
                total += 1
                big_total += big
                # slang names a declaration whose identifier it rejects ""; match those by line.
                hit = name in names if name else any(s == a for _, s, _ in mine)
                found += hit
                big_found += big and hit
                same += any((n == name or not name) and s == a and e == b for n, s, e in mine)
                if not hit and len(missing) < 20:
                    missing.append(f"{repo}:{f['path']}:{a} {name or '<unnamed>'}")
    return {"slang_declarations": total, "found": found, "recall": round(found / total, 5) if total else None,
            "same_first_and_last_line": same, "in_files_over_1mb": {"slang": big_total, "found": big_found},
            "missing": missing}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", help="checked-out repositories (default: generated from the sample)")
    ap.add_argument("--copies", type=int, default=40, help="generated repositories when no path is given")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--grammar", default="systemverilog", choices=["systemverilog", "verilog"])
    ap.add_argument("--slang", action="store_true", help="declaration recall against pyslang (real paths only)")
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "parse_speed.json"))
    args = ap.parse_args()

    if args.paths:
        batches, skipped = real_batches(args.paths)
        source = "real"
    else:
        batches, skipped = generated_batches(args.copies), Counter()
        source = "generated"
    tables = [pa.Table.from_pylist(rows, schema=FILES_SCHEMA) for rows in batches]
    mb = sum(r["n_bytes"] for rows in batches for r in rows) / 1e6
    n_files = sum(len(rows) for rows in batches)
    stage = ParseStage(args.grammar)
    print(f"{source}: {len(batches)} repositories, {n_files} files, {mb:.2f} MB; skipped {dict(skipped) or 0}")

    plain_s, stage_s, outputs, stats = timed_rounds(batches, tables, stage, args.repeat)
    ok = [v for out in outputs for v in out.column("parse_ok").to_pylist()]
    ratio = plain_s / stage_s
    print(f"plain tree-sitter {mb / plain_s:.2f} MB/s per core, ParseStage {mb / stage_s:.2f} MB/s per core: "
          f"ratio {ratio:.3f} (target >= 0.8)")
    print(f"units {len(ok)}, parse_ok {sum(ok)} ({sum(ok) / max(len(ok), 1):.2%}); "
          f"files failed {stats['files_failed_by_reason'] or 0}")

    direct = direct_breakdown(batches, stage.parser)
    whole = direct["parse_s"]
    rest = max(whole - direct["preprocess_s"] - direct["tree_sitter_on_preprocessed_s"], 0.0)
    where = {"preprocess": direct["preprocess_s"] / whole,
             "tree_sitter_on_preprocessed": direct["tree_sitter_on_preprocessed_s"] / whole,
             "extraction_recovery_records": rest / whole}
    print("where the time goes (file by file, share of VerilogParser.parse): "
          + ", ".join(f"{k} {v:.1%}" for k, v in where.items()))
    print(f"grammar rewrites: {direct['rewrites'] or 0}")

    largest = max(range(len(tables)), key=lambda i: tables[i].num_rows)
    prof = profile_batch(tables[largest], stage)
    print(f"cProfile of one batch ({batches[largest][0]['repo']}, {prof['files']} files, "
          f"{prof['profiled_s']} s profiled): " + ", ".join(f"{k} {v:.1%}" for k, v in prof["share"].items()))
    for f in prof["top_own_time"][:8]:
        print(f"  {f['own_s']:8.3f} s own {f['cum_s']:8.3f} s cum {f['calls']:8d} calls  {f['function']}")

    result: dict[str, Any] = {
        "source": source, "paths": args.paths, "grammar": args.grammar, "repeat": args.repeat,
        "repositories": len(batches), "files": n_files, "mb": round(mb, 3), "skipped": dict(skipped),
        "plain_mb_s_per_core": round(mb / plain_s, 3), "stage_mb_s_per_core": round(mb / stage_s, 3),
        "ratio_stage_to_plain": round(ratio, 3), "units": len(ok), "parse_ok": sum(ok),
        "parse_ok_share": round(sum(ok) / max(len(ok), 1), 5), **stats,
        "direct_breakdown": {"stage_s": round(stage_s, 3), "plain_s": round(plain_s, 3),
                             **{k: round(v, 3) for k, v in direct.items() if k != "rewrites"},
                             "share_of_parse": {k: round(v, 3) for k, v in where.items()}},
        "grammar_rewrites": direct["rewrites"],
        "profile_one_batch": prof,
    }
    if args.slang and args.paths:
        try:
            recall = slang_recall(args.paths, outputs)
        except ImportError:
            print("--slang: pyslang is not installed (pip install pyslang)")
        else:
            result["slang"] = recall
            print(f"slang: {recall['found']}/{recall['slang_declarations']} declarations found "
                  f"({recall['recall']}), same lines {recall['same_first_and_last_line']}, "
                  f"files > 1 MB {recall['in_files_over_1mb']}; missing {recall['missing'][:5]}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
