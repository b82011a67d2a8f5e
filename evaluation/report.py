"""The report: rows' verdicts aggregated per phase, benchmark, router and model; the side-by-side
comparison of each specialist with its base; the registry blocks; the printed summary.

Pure functions over the small rows the check stage returns (``evaluation.checks.SMALL_SCHEMA``)
and the job's config; nothing here runs a model or a tool.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from chipforge import fs
from chipforge.vocab import PHASES
from evaluation import metrics
from evaluation.models import ModelSpec
from evaluation.prompts import REFERENCE
from evaluation.simulate import FAILURE_CLASSES, simulator_versions

TINY = "tiny"


def _scores(r: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(r.get("scores_json") or "{}")


def json_safe(value: Any, where: str = "", found: list[str] | None = None) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has neither: Python's
    ``json`` would write ``NaN``/``Infinity``, which other readers reject); the dotted path of each
    replaced value is appended to ``found``."""
    if isinstance(value, float) and not math.isfinite(value):
        if found is not None:
            found.append(f"{where}={value}")
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v, f"{where}.{k}" if where else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value


def benchmark_summary(rows: list[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """One (benchmark, model) cell: counts, pass@1 (greedy), pass@k (sampled; greedy when none)."""
    greedy_rows = [r for r in rows if r["sample"] < 0]
    sampled_rows = [r for r in rows if r["sample"] >= 0]
    per_problem: dict[str, dict[str, Any]] = {}
    for r in greedy_rows:
        per_problem.setdefault(r["item_id"], {"n": 0, "c": 0})["greedy"] = r["failure_class"] or "pass"
    for r in sampled_rows:
        cell = per_problem.setdefault(r["item_id"], {"n": 0, "c": 0})
        cell["n"] += 1
        cell["c"] += r["verdict"] == "pass"
    n_problems = len(per_problem)
    counts = ([(v["n"], v["c"]) for v in per_problem.values() if v["n"]] if sampled_rows else
              [(1, int(v.get("greedy") == "pass")) for v in per_problem.values()])
    passed = sum(r["verdict"] == "pass" for r in rows)
    failures = metrics.failure_counts((r["failure_class"] for r in rows if r["verdict"] != "pass"), FAILURE_CLASSES)
    greedy_passed = sum(r["verdict"] == "pass" for r in greedy_rows)
    out = {
        "n_problems": n_problems, "samples": len(rows), "passed": passed, "failed": len(rows) - passed,
        "failures": failures, "counts_add_up": len(rows) == passed + sum(failures.values()),
        "pass_at_1": greedy_passed / len(greedy_rows) if greedy_rows else None,
        "greedy": {"n": len(greedy_rows), "passed": greedy_passed,
                   "failures": metrics.failure_counts((r["failure_class"] for r in greedy_rows
                                                       if r["verdict"] != "pass"), FAILURE_CLASSES)},
        "n_samples_per_problem": max((v["n"] for v in per_problem.values()), default=0),
        "pass_at_k": {str(k): v for k in ks if (v := metrics.mean_pass_at_k(counts, k)) is not None},
        "pass_at_k_from": "sampled" if sampled_rows else "greedy",
        "problems": {pid: per_problem[pid] for pid in sorted(per_problem)},
    }
    return out


def aggregate(small: list[dict[str, Any]], cfg: Any, specs: Sequence[ModelSpec],
              phase_info: dict[str, dict[str, Any]], problems: list[dict[str, Any]], suite: dict[str, Any] | None,
              classifier_routing: dict[str, Any] | None, route_items: list[dict[str, Any]],
              engine_info: dict[str, Any]) -> dict[str, Any]:
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in small:
        by_kind[r["kind"]].append(r)
    model_names = [m.name for m in specs] + ([REFERENCE] if cfg.reference else [])

    # 1-2: phases
    phases_out: dict[str, Any] = {}
    for phase, info in phase_info.items():
        loss: dict[str, Any] = {}
        for (model,), rs in metrics.counts_by([r for r in by_kind["loss"] if r["suite"] == phase], "model").items():
            ok = [r for r in rs if not r["failure_class"]]
            nll = sum(_scores(r).get("nll_sum") or 0.0 for r in ok)
            tokens = sum(_scores(r).get("n_tokens") or 0 for r in ok)
            lo, ppl = metrics.perplexity(nll, tokens)
            loss[model] = {"loss": lo, "perplexity": ppl, "tokens": tokens, "examples": len(rs),
                           "errors": len(rs) - len(ok)}
        gen: dict[str, Any] = {}
        for (model,), rs in metrics.counts_by([r for r in by_kind["generation"] if r["suite"] == phase],
                                              "model").items():
            v = [r for r in rs if "parse" in _scores(r)]
            t = [r for r in rs if "rouge_l" in _scores(r)]
            gen[model] = {
                "n": len(rs), "engine_errors": sum(r["failure_class"] == "engine_error" for r in rs),
                "verilog": {"n": len(v), "parse_rate": metrics.share(_scores(r)["parse"] for r in v),
                            "compile_rate": metrics.share(_scores(r)["compile"] for r in v),
                            "lint_rate": metrics.share(_scores(r)["lint"] for r in v)},
                "text": {"n": len(t), "rouge_l": metrics.mean(_scores(r)["rouge_l"] for r in t),
                         "chrf": metrics.mean(_scores(r)["chrf"] for r in t)},
            }
        phases_out[phase] = {**info, "loss": loss, "generation": gen}

    # 3-4: benchmarks and the self-check
    benchmarks_out: dict[str, Any] = {}
    for (suite_name, model), rs in sorted(metrics.counts_by(by_kind["benchmark"], "suite", "model").items()):
        benchmarks_out.setdefault(suite_name, {})[model] = benchmark_summary(rs, cfg.benchmarks.ks)
    reference_check = None
    if cfg.reference:
        reference_check = {"simulator": simulator_versions(), "benchmarks": {}}
        ref_rows = [r for r in small if r["model"] == REFERENCE]
        for (suite_name,), rs in sorted(metrics.counts_by(ref_rows, "suite").items()):
            if suite_name == "smoke":
                continue
            failed = [r for r in rs if r["verdict"] != "pass"]
            reference_check["benchmarks"][suite_name] = {
                "n_problems": len(rs), "passed": len(rs) - len(failed),
                "ceiling": (len(rs) - len(failed)) / len(rs) if rs else None,
                "cannot_pass": [{"problem": r["item_id"], "failure_class": r["failure_class"], "log": r.get("log")}
                                for r in sorted(failed, key=lambda r: r["item_id"])]}
        smoke_ref = [r for r in ref_rows if r["suite"] == "smoke"]
        if smoke_ref:
            reference_check["smoke"] = {"n_items": len(smoke_ref),
                                        "passed": sum(r["verdict"] == "pass" for r in smoke_ref),
                                        "cannot_pass": [{"item": r["item_id"], "failure_class": r["failure_class"],
                                                         "log": r.get("log")}
                                                        for r in smoke_ref if r["verdict"] != "pass"]}

    # 5: routing
    phases_all = list(PHASES)
    routing_out: dict[str, Any] | None = None
    if cfg.routing.enabled:
        routing_out = {"eval_path": cfg.routing.eval_path, "n_items": len(route_items), "routers": {}}
        if classifier_routing is not None:
            routing_out["routers"]["classifier"] = classifier_routing
        for (model,), rs in metrics.counts_by([r for r in by_kind["routing"] if r["suite"] == "phase_eval"],
                                              "model").items():
            expected = {i["id"]: i["phase"] for i in route_items}
            rs = sorted(rs, key=lambda r: r["item_id"])
            routing_out["routers"][model] = metrics.routing_metrics(
                [expected[r["item_id"]] for r in rs], [_scores(r).get("predicted", metrics.UNPARSED) for r in rs],
                phases_all)

    # 6: smoke
    smoke_out = None
    if suite is not None:
        smoke_out = {"items": [{k: i.get(k) for k in ("id", "kind", "phase", "expected_phase", "top")}
                               for i in suite["items"]], "models": {}, "routing": {}}
        for (model,), rs in metrics.counts_by(by_kind["smoke"], "model").items():
            smoke_out["models"][model] = {
                "passed": sum(r["verdict"] == "pass" for r in rs), "total": len(rs),
                "items": {r["item_id"]: {"verdict": r["verdict"], "failure_class": r["failure_class"],
                                         "scores": _scores(r)} for r in sorted(rs, key=lambda r: r["item_id"])}}
        routing_items = [i for i in suite["items"] if i["kind"] == "routing"]
        if classifier_routing is not None and routing_items:
            smoke_out["routing"]["classifier"] = classifier_routing.get("smoke", {})
        for (model,), rs in metrics.counts_by([r for r in by_kind["routing"] if r["suite"] == "smoke"],
                                              "model").items():
            exp = {i["id"]: i["expected_phase"] for i in routing_items}
            items = {r["item_id"]: {"expected": exp[r["item_id"]], "predicted": _scores(r).get("predicted"),
                                    "ok": r["verdict"] == "pass"} for r in rs}
            smoke_out["routing"][model] = {"passed": sum(v["ok"] for v in items.values()), "total": len(items),
                                           "items": items}
        if classifier_routing is not None:
            classifier_routing.pop("smoke", None)

    side = side_by_side(specs, phases_out, benchmarks_out, routing_out, smoke_out, cfg)
    counts = Counter(r["kind"] for r in small)
    judged = Counter(r["kind"] for r in small if r["verdict"] is not None or r["kind"] == "loss")
    non_finite: list[str] = []
    out = json_safe({
        "models": {m.name: m.as_dict() for m in specs} | (
            {REFERENCE: {"name": REFERENCE, "kind": "reference"}} if cfg.reference else {}),
        "model_names": model_names,
        "phases": phases_out, "benchmarks": benchmarks_out, "reference_check": reference_check,
        "routing": routing_out, "smoke": smoke_out, "side_by_side": side,
        "problems": dict(sorted(Counter(p["benchmark"] for p in problems).items())),
        "rows": {"total": len(small), "by_kind": dict(sorted(counts.items())),
                 "judged": sum(judged.values()), "all_judged": sum(judged.values()) == len(small)},
        "engine_info": engine_info,
    }, found=non_finite)
    out["non_finite"] = non_finite  # metrics that were NaN or infinite (null in the report)
    return out


def side_by_side(specs: Sequence[ModelSpec], phases_out: dict[str, Any], benchmarks_out: dict[str, Any],
                 routing_out: dict[str, Any] | None, smoke_out: dict[str, Any] | None,
                 cfg: Any) -> list[dict[str, Any]]:
    """Every metric of each specialist next to its base's, with the difference (specialist - base)."""
    out: list[dict[str, Any]] = []

    def add(sp: ModelSpec, area: str, metric: str, a: float | None, b: float | None, better: str) -> None:
        out.append({"phase": sp.phase, "specialist": sp.name, "base": sp.base, "area": area, "metric": metric,
                    "specialist_value": a, "base_value": b, "difference": metrics.difference(a, b),
                    "higher_is_better": better == "higher"})

    for sp in (m for m in specs if m.kind == "specialist"):
        ph = phases_out.get(sp.phase, {})
        ls, lb = ph.get("loss", {}).get(sp.name, {}), ph.get("loss", {}).get(sp.base, {})
        if ls or lb:
            add(sp, f"test split ({ph.get('split')})", "loss", ls.get("loss"), lb.get("loss"), "lower")
            add(sp, f"test split ({ph.get('split')})", "perplexity", ls.get("perplexity"), lb.get("perplexity"),
                "lower")
        gs, gb = ph.get("generation", {}).get(sp.name), ph.get("generation", {}).get(sp.base)
        if gs and gb:
            for k in ("parse_rate", "compile_rate", "lint_rate"):
                if gs["verilog"]["n"]:
                    add(sp, "generation (verilog)", k, gs["verilog"][k], gb["verilog"][k], "higher")
            for k in ("rouge_l", "chrf"):
                if gs["text"]["n"]:
                    add(sp, "generation (text)", k, gs["text"][k], gb["text"][k], "higher")
        for name, cells in benchmarks_out.items():
            if sp.name in cells and sp.base in cells:
                a, b = cells[sp.name], cells[sp.base]
                add(sp, name, "pass@1", a["pass_at_1"], b["pass_at_1"], "higher")
                if a["pass_at_k_from"] == "sampled":
                    for k in a["pass_at_k"]:
                        add(sp, name, f"pass@{k} (n={a['n_samples_per_problem']})", a["pass_at_k"].get(k),
                            b["pass_at_k"].get(k), "higher")
        if routing_out and sp.name in routing_out["routers"] and sp.base in routing_out["routers"]:
            a, b = routing_out["routers"][sp.name], routing_out["routers"][sp.base]
            add(sp, "routing", "accuracy", a["accuracy"], b["accuracy"], "higher")
            add(sp, "routing", "macro_f1", a["macro_f1"], b["macro_f1"], "higher")
        if smoke_out and sp.name in smoke_out["models"] and sp.base in smoke_out["models"]:
            a, b = smoke_out["models"][sp.name], smoke_out["models"][sp.base]
            add(sp, "smoke", "pass_rate", a["passed"] / a["total"], b["passed"] / b["total"], "higher")
        if smoke_out and sp.name in smoke_out["routing"] and sp.base in smoke_out["routing"]:
            a, b = smoke_out["routing"][sp.name], smoke_out["routing"][sp.base]
            add(sp, "smoke routing", "pass_rate", a["passed"] / a["total"], b["passed"] / b["total"], "higher")
    return out


def random_base(path: str) -> bool:
    """The in-process tiny model, or one the fine-tuning job built (``base_model: tiny`` stamps it)."""
    return path == TINY or (not fs.is_uri(path) and os.path.exists(os.path.join(path, "chipforge_base.json")))


def registry_blocks(report: dict[str, Any], specs: Sequence[ModelSpec]) -> dict[str, dict[str, Any]]:
    """Per specialist: its side-by-side metrics (specialist, base, difference) and the report's path."""
    out = {}
    for sp in (m for m in specs if m.kind == "specialist"):
        rows = [r for r in report["side_by_side"] if r["specialist"] == sp.name]
        out[sp.phase] = {
            "report": report["output_dir"] + "/report.json", "report_html": report["report_html"],
            "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "adapter_path": sp.adapter_path,
            "base_model": sp.base_model, "engine": report["engine"]["name"],
            "metrics": {f"{r['area']}/{r['metric']}": {"specialist": r["specialist_value"], "base": r["base_value"],
                                                        "difference": r["difference"]} for r in rows},
        }
    return out


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if math.isfinite(x) else str(x)
    return str(x)


def summary(r: dict[str, Any]) -> str:
    bases = sorted({m.get("base_model") for m in r["models"].values() if m.get("kind") == "base"})
    lines = [f"models: {', '.join(r['model_names']) or 'none'}; engine {r['engine']['name']}; "
             f"base model {', '.join(map(str, bases)) or '-'}",
             f"simulator: {r['simulator'].get('iverilog')} / {r['simulator'].get('vvp')}; "
             f"sandbox {r['sandbox']['mode']}"]
    base_only = [p for p, ph in r["phases"].items() if set(ph["loss"]) <= {"base"} and set(ph["generation"]) <= {"base"}]
    if base_only and len(base_only) < len(r["phases"]):
        lines.append(f"{len(base_only)} phases without a specialist (base only): {', '.join(base_only)}; see report.json")
    for phase, ph in r["phases"].items():
        if phase in base_only and len(base_only) < len(r["phases"]):
            continue
        bits = []
        for m, v in ph["loss"].items():
            bits.append(f"{m} loss {_f(v['loss'])} ppl {_f(v['perplexity'], 1)}")
        for m, v in ph["generation"].items():
            if v["verilog"]["n"]:
                bits.append(f"{m} parse/compile/lint {_f(v['verilog']['parse_rate'], 2)}/"
                            f"{_f(v['verilog']['compile_rate'], 2)}/{_f(v['verilog']['lint_rate'], 2)}")
            if v["text"]["n"]:
                bits.append(f"{m} rougeL {_f(v['text']['rouge_l'])} chrF {_f(v['text']['chrf'], 1)}")
        split = ph.get("split") or "no data"
        lines.append(f"{phase} [{split}{' (fallback)' if ph.get('split_fallback') else ''}, {ph['n_examples']} ex]: "
                     + ("; ".join(bits) or "-"))
    for name, cells in r["benchmarks"].items():
        for m, c in cells.items():
            pk = (f"{c['n_samples_per_problem']} samples/problem: "
                  + " ".join(f"pass@{k} {_f(v)}" for k, v in c["pass_at_k"].items())
                  if c["pass_at_k_from"] == "sampled" else "greedy only")
            fails = ", ".join(f"{k}={v}" for k, v in c["failures"].items() if v)
            lines.append(f"{name} {m}: pass@1 {_f(c['pass_at_1'])} ({c['greedy']['passed']}/{c['n_problems']}); {pk}; "
                         f"samples {c['samples']} = {c['passed']} passed + {c['failed']} failed ({fails or 'none'})")
    skipped = r.get("benchmark_problems_skipped") or []
    if skipped:
        lines.append(f"benchmark problems skipped: {len(skipped)} (" + "; ".join(
            f"{x['benchmark']}/{x['problem']}: {x['reason']}" for x in skipped[:3])
                     + ("; ... in report.json" if len(skipped) > 3 else "") + ")")
    if r.get("reference_check"):
        for name, c in r["reference_check"]["benchmarks"].items():
            cannot = ", ".join(f"{x['problem']} ({x['failure_class']})" for x in c["cannot_pass"][:8])
            lines.append(f"self-check {name}: {c['passed']}/{c['n_problems']} references pass"
                         + (f"; cannot pass: {cannot}" if cannot else ""))
    if r.get("routing"):
        for m, v in r["routing"]["routers"].items():
            lines.append(f"routing {m}: accuracy {_f(v['accuracy'])} macro-F1 {_f(v['macro_f1'])} on {v['n']} items"
                         + (f" ({v['unparsed']} unparsed)" if v.get("unparsed") else ""))
    if r.get("smoke"):
        lines.append("smoke: " + "; ".join(f"{m} {v['passed']}/{v['total']}" for m, v in r["smoke"]["models"].items())
                     + (" | routing " + "; ".join(f"{m} {v['passed']}/{v['total']}"
                                                  for m, v in r["smoke"]["routing"].items())
                        if r["smoke"]["routing"] else ""))
    diffs = [x for x in r["side_by_side"] if x["difference"] is not None]
    if diffs:
        lines.append("specialist vs base (difference = specialist - base):")
        shown = [x for x in diffs if x["metric"] in ("loss", "pass_rate", "pass@1", "compile_rate")][:8]
        for x in shown:
            lines.append(f"  {x['specialist']:<16} {x['area'][:28]:<28} {x['metric']:<13} {_f(x['specialist_value'])} "
                         f"vs {_f(x['base_value'])} ({x['difference']:+.3f})")
        if len(diffs) > len(shown):
            lines.append(f"  ... {len(diffs) - len(shown)} more in report.json / report.html")
    lines.append(f"rows: {r['rows']['total']} judged {r['rows']['judged']}; samples → {r['samples_dir']}; "
                 f"report → {r['report_html']}")
    if r.get("random_weights"):
        lines.append("note: a tiny random-weight base: generation and benchmark scores are ~0 by design; this run "
                     "checks the harness (evaluate real specialists with --registry and --engine vllm/openai).")
    return "\n".join(lines)
