"""Decontamination benchmark: catch rate per method on real benchmark references, false positives on real repositories.

Inputs are local checkouts (never committed): VerilogEval v2 (NVlabs/verilog-eval, both
``dataset_spec-to-rtl`` and ``dataset_code-complete-iccad2023``) and RTLLM (hkust-zhiyao/RTLLM),
plus ordinary Verilog repositories for the false-positive rate. For every distinct reference
solution it builds three copies and asks each method whether the copy is contaminated:

- ``verbatim``: the reference as shipped;
- ``reformatted``: comments dropped, one token per word, re-indented (layout changed only);
- ``renamed``: comments dropped and *every* identifier (module, ports, signals, parameters,
  macros) consistently renamed to a fresh random name, then reformatted: the issue's aim;
- ``renamed_edited``: the renamed copy with its middle statement deleted (a light edit; not
  part of the aim, shown for robustness).

Methods: ``text_13gram`` (``BenchmarkIndex``, words only, against prompts and references),
``canonical`` (``CanonicalIndex``, identifier-canonical token n-grams against references) and
``either`` (what the corpus job applies). A copy counts as caught when the method names a
problem whose reference is the copied text. Catch rates are given over all distinct
references and over those of 40 tokens or more (comments excluded; the aim: >= 95% for
``renamed`` with ``canonical``/``either``).

False positives: every module (design unit) of each real repository, split by the corpus
parser as the corpus job does, checked by each method; the aim is <= 1% flagged per repository.

    python bench/decontam.py --verilog-eval /tmp/bench/verilog-eval --rtllm /tmp/bench/RTLLM \\
        --real /tmp/bench/ibex /tmp/bench/zipcpu /tmp/bench/verilog-uart [--sweep]

``--sweep`` also tabulates canonical catch rate and false-positive rate over n-gram sizes,
thresholds and boilerplate cut-offs (``max_df``), to show where the defaults sit.
Writes ``bench/results/decontam.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpus.decontam import (IDENT, CanonicalIndex, Decontaminator, load_references,  # noqa: E402
                             sv_tokens)

VERILOG_EXT = (".v", ".sv", ".vh", ".svh")
MIN_TOKENS = 40


def reformat(tokens: list[str], rename: dict[str, str] | None = None) -> str:
    """Source text from canonical tokens: identifiers restored (or renamed), a line break after ``;``."""
    out: list[str] = []
    for tok in tokens:
        if tok.startswith(IDENT):
            name = tok.split(":", 1)[1]
            out.append(rename[name] if rename is not None else name)
        else:
            out.append(tok)
        if tok in (";", "begin", "end"):
            out.append("\n")
    return " ".join(out).replace(" \n ", "\n")


def renamed_copy(source: str, rng: random.Random) -> str:
    """``source`` with comments dropped and every identifier renamed one-to-one to a fresh name."""
    tokens = sv_tokens(source)
    names = sorted({t.split(":", 1)[1] for t in tokens if t.startswith(IDENT)})
    fresh: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        while True:
            new = rng.choice(string.ascii_lowercase) + "".join(rng.choices(string.ascii_lowercase + string.digits, k=7))
            if new not in used:
                break
        used.add(new)
        fresh[name] = new
    # (a macro use comes back without its backtick: the copy feeds the checks, not a compiler)
    return reformat(tokens, fresh)


def drop_statement(source: str) -> str:
    """``source`` without its middle statement (the tokens after one ``;`` up to the next): a light edit."""
    tokens = sv_tokens(source)
    semis = [i for i, t in enumerate(tokens) if t == ";"]
    if len(semis) < 3:
        return reformat(tokens)
    k = len(semis) // 2
    return reformat(tokens[: semis[k - 1] + 1] + tokens[semis[k] + 1 :])


def variants(source: str, rng: random.Random) -> dict[str, str]:
    renamed = renamed_copy(source, rng)
    return {"verbatim": source, "reformatted": reformat(sv_tokens(source)), "renamed": renamed,
            "renamed_edited": drop_statement(renamed)}


def real_modules(repo: Path) -> list[dict[str, Any]]:
    """Design units of every Verilog/SystemVerilog file under ``repo`` (the corpus parser's split)."""
    from corpus.verilog import VerilogParser

    parser = VerilogParser("systemverilog")
    units = []
    for path in sorted(repo.rglob("*")):
        if path.suffix not in VERILOG_EXT or not path.is_file() or ".git" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            recs = parser.parse(text, str(path.relative_to(repo)))
        except Exception as exc:  # noqa: BLE001 - a bench counts what it cannot parse and moves on
            print(f"  parse failed {path}: {type(exc).__name__}", file=sys.stderr)
            continue
        units.extend({"repo": repo.name, "path": str(path.relative_to(repo)), "name": r["name"],
                      "source": r["source"]} for r in recs)
    return units


def catch_rates(refs: list[tuple[str, str]], checks: dict[str, Any], seed: int) -> dict[str, Any]:
    """Per variant and method: caught / total over all distinct references and over 40+ token ones."""
    by_text: dict[str, set[str]] = {}
    for pid, text in refs:
        by_text.setdefault(text, set()).add(pid)
    rng = random.Random(seed)
    counts: dict[str, Counter] = {}
    missed: dict[str, list[str]] = {}
    sizes = {"all": 0, "min40": 0}
    for text in sorted(by_text):
        owners = by_text[text]
        big = len(sv_tokens(text)) >= MIN_TOKENS
        sizes["all"] += 1
        sizes["min40"] += big
        for variant, copy in variants(text, rng).items():
            for method, check in checks.items():
                got = check(copy)
                ok = bool(got) and bool(owners & set(got))
                c = counts.setdefault(f"{variant}/{method}", Counter())
                c["all"] += ok
                c["min40"] += ok and big
                if big and not ok and variant == "renamed":
                    missed.setdefault(method, []).append(sorted(owners)[0])
    out: dict[str, Any] = {"references": sizes}
    for key, c in counts.items():
        variant, method = key.split("/")
        out.setdefault(variant, {})[method] = {
            "all": round(c["all"] / sizes["all"], 4) if sizes["all"] else None,
            "min40": round(c["min40"] / sizes["min40"], 4) if sizes["min40"] else None,
            "caught_min40": c["min40"]}
    out["missed_renamed_min40"] = {m: {"count": len(v), "first": sorted(v)[:10]} for m, v in missed.items()}
    return out


def false_positives(units: list[dict[str, Any]], checks: dict[str, Any]) -> dict[str, Any]:
    """Per repository and method: modules flagged / modules, with the flagged names."""
    out: dict[str, Any] = {}
    for repo in sorted({u["repo"] for u in units}):
        mods = [u for u in units if u["repo"] == repo]
        row: dict[str, Any] = {"modules": len(mods)}
        for method, check in checks.items():
            flagged = [(u["path"], u["name"], check(u["source"])) for u in mods]
            flagged = [f for f in flagged if f[2]]
            row[method] = {"flagged": len(flagged), "rate": round(len(flagged) / len(mods), 4) if mods else None,
                           "examples": [f"{p}:{n} -> {hits[0]}" for p, n, hits in flagged[:8]]}
        out[repo] = row
    total = sum(r["modules"] for r in out.values())
    out["_all"] = {"modules": total, **{m: {"flagged": sum(r[m]["flagged"] for r in out.values() if isinstance(r, dict)
                                                          and m in r),
                                             } for m in checks}}
    for m in checks:
        out["_all"][m]["rate"] = round(out["_all"][m]["flagged"] / total, 4) if total else None
    return out


def sweep(refs: list[tuple[str, str]], units: list[dict[str, Any]], wild: list[dict[str, Any]],
          seed: int) -> list[dict[str, Any]]:
    """Canonical method over (n, max_df, min_grams, threshold): renamed 40+ catch rate, the worst
    ordinary repository's false-positive rate and the share of HDLBits solutions flagged."""
    rows = []
    rng = random.Random(seed)
    by_text: dict[str, set[str]] = {}
    for pid, text in refs:
        by_text.setdefault(text, set()).add(pid)
    copies = [(by_text[t], renamed_copy(t, rng)) for t in sorted(by_text) if len(sv_tokens(t)) >= MIN_TOKENS]
    n_repo = Counter(u["repo"] for u in units)
    for n in (8, 10, 12, 16):
        for max_df in (5, None):
            idx = CanonicalIndex(refs, n=n, threshold=1.0, max_df=max_df, min_grams=1)
            copy_scores = [[(idx.sizes[r], sc) for r, sc in idx.scores(c).items() if owners & set(idx.owners[r])]
                           for owners, c in copies]
            unit_scores = [(u["repo"], [(idx.sizes[r], sc) for r, sc in idx.scores(u["source"]).items()])
                           for u in units]
            wild_scores = [[(idx.sizes[r], sc) for r, sc in idx.scores(u["source"]).items()] for u in wild]
            for min_grams in (10, 19):
                for th in (0.4, 0.5, 0.6, 0.7, 0.8):
                    def hit(scores: list[tuple[int, float]]) -> bool:
                        return any(size >= min_grams and sc >= th for size, sc in scores)

                    per_repo = Counter(repo for repo, sc in unit_scores if hit(sc))
                    rows.append({
                        "n": n, "max_df": max_df, "min_grams": min_grams, "threshold": th,
                        "renamed_min40": round(sum(map(hit, copy_scores)) / len(copies), 4),
                        "fp_worst_repo": round(max((per_repo[r] / n_repo[r] for r in n_repo), default=0.0), 4),
                        "fp_all": round(sum(per_repo.values()) / max(1, len(units)), 4),
                        "hdlbits_flagged": round(sum(map(hit, wild_scores)) / len(wild), 4) if wild else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verilog-eval", default="/tmp/bench/verilog-eval")
    ap.add_argument("--rtllm", default="/tmp/bench/RTLLM")
    ap.add_argument("--real", nargs="*", default=["/tmp/bench/ibex", "/tmp/bench/zipcpu", "/tmp/bench/verilog-uart",
                                                  "/tmp/bench/verilog-axis", "/tmp/bench/basic_verilog"],
                    help="ordinary repositories: every module flagged is a false positive")
    ap.add_argument("--wild", nargs="*", default=["/tmp/bench/HDLBits-Verilog-Solutions"],
                    help="repositories of HDLBits solutions (written independently of VerilogEval's references): "
                         "the share flagged is reported, not counted as false positives")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench/results/decontam.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    paths = [args.verilog_eval, args.rtllm]
    dec = Decontaminator.from_paths(paths)
    text_idx, canon_idx = dec.text, dec.canonical
    refs = [r for p in paths for r in load_references(p)]
    checks = {"text_13gram": text_idx.hits,
              "canonical": lambda s: [m[0]] if (m := canon_idx.match(s)) else [],
              "canonical_all": lambda s: [pid for pid, _ in canon_idx.matches(s)],
              "either": lambda s: m.all_ids if (m := dec.check(s)) else []}
    print(f"benchmarks: {len(text_idx)} problems, {len({t for _, t in refs})} distinct references "
          f"({sum(1 for t in {t for _, t in refs} if len(sv_tokens(t)) >= MIN_TOKENS)} of {MIN_TOKENS}+ tokens); "
          f"canonical: n={canon_idx.n} threshold={canon_idx.threshold} max_df={canon_idx.max_df} "
          f"min_grams={canon_idx.min_grams}, {len(canon_idx.owners)} references indexed")
    # Catch rates: a copy is caught when any named problem owns the copied reference ("canonical_all"
    # lists every problem over the threshold, so a tie with a sibling problem still counts).
    catch = catch_rates(refs, {"text_13gram": checks["text_13gram"], "canonical": checks["canonical_all"],
                               "either": checks["either"]}, args.seed)
    for variant in ("verbatim", "reformatted", "renamed", "renamed_edited"):
        print(f"  {variant:<15}" + "  ".join(
            f"{m} {100 * v['min40']:.1f}% (all {100 * v['all']:.1f}%)" for m, v in catch[variant].items()))
    units = [u for r in args.real for u in real_modules(Path(r))]
    fp_checks = {"text_13gram": checks["text_13gram"], "canonical": checks["canonical"], "either": checks["either"]}
    fp = false_positives(units, fp_checks)
    for repo, row in fp.items():
        print(f"  {repo:<14} {row['modules']:>5} modules  " + "  ".join(
            f"{m} {row[m]['flagged']} ({100 * row[m]['rate']:.2f}%)" for m in ("text_13gram", "canonical", "either")))
    t1 = time.process_time()
    for u in units:
        dec.check(u["source"])
    check_cpu = time.process_time() - t1
    n_bytes = sum(len(u["source"].encode()) for u in units)
    speed = {"modules": len(units), "bytes": n_bytes, "cpu_s": round(check_cpu, 2),
             "mb_per_cpu_s": round(n_bytes / 1e6 / check_cpu, 3) if check_cpu else None}
    print(f"  both checks: {speed['mb_per_cpu_s']} MB per CPU second ({len(units)} modules, {n_bytes / 1e6:.1f} MB)")
    wild_units = [u for r in args.wild for u in real_modules(Path(r))]
    wild = false_positives(wild_units, fp_checks) if wild_units else {}
    for repo, row in wild.items():
        print(f"  in the wild: {repo:<14} {row['modules']:>5} modules  " + "  ".join(
            f"{m} {row[m]['flagged']} ({100 * row[m]['rate']:.2f}%)" for m in ("text_13gram", "canonical", "either")))
    result: dict[str, Any] = {
        "inputs": {"benchmarks": paths, "real": args.real, "wild": args.wild, "min_tokens": MIN_TOKENS,
                   "seed": args.seed},
        "settings": {"text_ngram": text_idx.n, "canonical_n": canon_idx.n, "threshold": canon_idx.threshold,
                     "max_df": canon_idx.max_df, "min_grams": canon_idx.min_grams,
                     "references_not_indexed": len(canon_idx.skipped)},
        "catch_rate": catch,
        "false_positives": fp,
        "check_speed": speed,
        "hdlbits_solutions_flagged": wild,
        "aim": {"renamed_min40_either": catch["renamed"]["either"]["min40"],
                "fp_worst_repo_either": max(r["either"]["rate"] for k, r in fp.items() if k != "_all"),
                "met": catch["renamed"]["either"]["min40"] >= 0.95
                and max(r["either"]["rate"] for k, r in fp.items() if k != "_all") <= 0.01},
    }
    if args.sweep:
        result["sweep"] = sweep(refs, units, wild_units, args.seed)
        print("  sweep (canonical only): n max_df min_grams threshold -> renamed 40+ caught, worst repo FP, "
              "HDLBits flagged")
        for row in result["sweep"]:
            ok = row["renamed_min40"] >= 0.95 and row["fp_worst_repo"] <= 0.01
            print(f"    {row['n']:>2} {str(row['max_df']):>4} {row['min_grams']:>3} {row['threshold']:.1f} -> "
                  f"{100 * row['renamed_min40']:5.1f}% {100 * row['fp_worst_repo']:5.2f}% "
                  f"{100 * (row['hdlbits_flagged'] or 0):5.1f}%{'  (aim met)' if ok else ''}")
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"aim met: {result['aim']['met']} (renamed 40+ caught {100 * result['aim']['renamed_min40_either']:.1f}%, "
          f"worst repo flagged {100 * result['aim']['fp_worst_repo_either']:.2f}%); wrote {args.out} "
          f"in {result['wall_s']} s")


if __name__ == "__main__":
    main()
