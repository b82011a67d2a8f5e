"""``report.html``: one self-contained page (plots as embedded base64 PNG, no external asset).

Sections: models and simulator; specialist vs base per phase and metric (bar charts and the
side-by-side table with differences); pass@k curves and failure classes per benchmark; the
self-check's ceiling; routing confusion matrices; the smoke suite. matplotlib runs with the
``Agg`` backend (no display needed).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
from collections.abc import Callable
from typing import Any

COLORS = {"base": "#8c8c8c", "specialist": "#1f77b4", "reference": "#2ca02c"}
CLASS_COLORS = {"engine_error": "#7f7f7f", "no_code": "#bcbd22", "unsafe": "#9467bd", "syntax": "#d62728",
                "compile": "#ff7f0e", "timeout": "#8c564b", "sim_mismatch": "#e377c2", "check_error": "#17becf"}


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_text(plot: Callable[..., str]) -> Callable[..., str]:
    """``plot`` with matplotlib's mathtext off: its labels are data (model names, benchmark and
    problem names), and a ``$`` in one was parsed as math (an unbalanced one failed the page)."""

    @functools.wraps(plot)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        _plt()
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)

    return wrapper


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{nd}f}" if math.isfinite(x) else str(x)
    return html.escape(str(x))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@_plain_text
def side_by_side_plot(side: list[dict[str, Any]]) -> str:
    """One panel per (area, metric): specialist and base bars for each specialist/phase."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in side:
        if r["specialist_value"] is None and r["base_value"] is None:
            continue
        cells.setdefault((r["area"], r["metric"]), []).append(r)
    if not cells:
        return "<p>No specialist was evaluated (no registry given): nothing to compare.</p>"
    plt = _plt()
    n = len(cells)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, ((area, metric), rs) in zip(axes.flat, sorted(cells.items())):
        labels = [r["phase"] or r["specialist"] for r in rs]
        xs = range(len(rs))
        ax.bar([x - 0.2 for x in xs], [r["specialist_value"] or 0 for r in rs], 0.4, label="specialist",
               color=COLORS["specialist"])
        ax.bar([x + 0.2 for x in xs], [r["base_value"] or 0 for r in rs], 0.4, label="base", color=COLORS["base"])
        ax.set_xticks(list(xs), labels, rotation=20, fontsize=8)
        if not any((r["specialist_value"] or 0) or (r["base_value"] or 0) for r in rs):
            ax.set_ylim(0, 1)  # both zero: show the empty bars on a readable scale
            ax.text(0.5, 0.5, "0 for both", ha="center", transform=ax.transAxes, fontsize=8, color="#666")
        better = "higher is better" if rs[0]["higher_is_better"] else "lower is better"
        ax.set_title(f"{area}\n{metric} ({better})", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


@_plain_text
def pass_at_k_plot(name: str, cells: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    for model, c in cells.items():
        ks = sorted(int(k) for k in c["pass_at_k"])
        if not ks:
            continue
        ax.plot(ks, [c["pass_at_k"][str(k)] for k in ks], marker="o",
                label=f"{model} ({c['pass_at_k_from']})")
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


@_plain_text
def failures_plot(name: str, cells: dict[str, Any]) -> str:
    plt = _plt()
    models = list(cells)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(models) + 2), 3.0))
    bottom = [0] * len(models)
    classes = sorted({k for c in cells.values() for k, v in c["failures"].items() if v})
    ax.bar(models, [c["passed"] for c in cells.values()], color="#2ca02c", label="passed")
    bottom = [c["passed"] for c in cells.values()]
    for cls in classes:
        vals = [c["failures"].get(cls, 0) for c in cells.values()]
        ax.bar(models, vals, bottom=bottom, label=cls, color=CLASS_COLORS.get(cls))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("samples")
    ax.set_title(f"{name}: verdicts", fontsize=9)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return _png(fig)


@_plain_text
def confusion_plot(name: str, m: dict[str, Any]) -> str:
    plt = _plt()
    conf = m["confusion"]
    matrix, rows, cols = conf["matrix"], conf["labels"], conf.get("columns_labels", conf["labels"])
    fig, ax = plt.subplots(figsize=(0.75 * len(cols) + 2, 0.6 * len(rows) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{name}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}", fontsize=9)
    return _png(fig)


def render(report: dict[str, Any]) -> str:
    parts: list[str] = []
    sim = report.get("simulator", {})
    models = report.get("models", {})
    parts.append("<h2>Models</h2>" + _table(
        ["model", "kind", "phase", "base model", "adapter"],
        [[n, m.get("kind"), m.get("phase"), m.get("base_model"), m.get("adapter_path")] for n, m in models.items()]))
    parts.append(f"<p>Engine: <b>{_fmt(report['engine']['name'])}</b> ({_fmt(report['engine']['model'])}); "
                 f"sampling {_fmt(report['engine'].get('sampling'))}. Simulator: {_fmt(sim.get('iverilog'))}; "
                 f"{_fmt(sim.get('vvp'))}; lint {_fmt(sim.get('verilator'))}. "
                 f"Sandbox: {_fmt(report['sandbox']['mode'])}."
                 "</p>")
    if report.get("random_weights"):
        parts.append("<p class=note>The base model is the tiny random-weight model built in-process: the scores "
                     "are a random model's, this run checks the harness.</p>")

    side = report.get("side_by_side", [])
    parts.append("<h2>Specialist vs base, per phase and metric</h2>" + side_by_side_plot(side))
    if side:
        parts.append(_table(["specialist", "base", "area", "metric", "specialist", "base", "difference"],
                            [[r["specialist"], r["base"], r["area"], r["metric"], r["specialist_value"],
                              r["base_value"], r["difference"]] for r in side]))

    rows = []
    for phase, ph in report.get("phases", {}).items():
        for model in sorted(set(ph["loss"]) | set(ph["generation"])):
            lo, g = ph["loss"].get(model, {}), ph["generation"].get(model, {})
            v, t = g.get("verilog", {}), g.get("text", {})
            rows.append([phase, ph.get("split"), model, lo.get("loss"), lo.get("perplexity"), v.get("n"),
                         v.get("parse_rate"), v.get("compile_rate"), v.get("lint_rate"), t.get("n"),
                         t.get("rouge_l"), t.get("chrf")])
    if rows:
        parts.append("<h2>Test splits</h2>" + _table(
            ["phase", "split", "model", "loss", "perplexity", "verilog n", "parse", "compile", "lint", "text n",
             "ROUGE-L", "chrF"], rows))

    if report.get("benchmarks"):
        parts.append("<h2>Benchmarks</h2>")
        for name, cells in report["benchmarks"].items():
            parts.append(f"<h3>{html.escape(name)}</h3>" + pass_at_k_plot(name, cells) + failures_plot(name, cells))
            parts.append(_table(["model", "problems", "pass@1 (greedy)", "pass@k", "samples", "passed", "failures"],
                                [[m, c["n_problems"], c["pass_at_1"],
                                  ", ".join(f"@{k} {v:.3f}" for k, v in c["pass_at_k"].items()), c["samples"],
                                  c["passed"], ", ".join(f"{k} {v}" for k, v in c["failures"].items() if v)]
                                 for m, c in cells.items()]))
    skipped = report.get("benchmark_problems_skipped") or []
    if skipped:
        parts.append("<h3>Benchmark problems skipped (a missing or unusable file)</h3>" + _table(
            ["benchmark", "problem", "reason"], [[x["benchmark"], x["problem"], x["reason"]] for x in skipped]))
    ref = report.get("reference_check")
    if ref:
        parts.append("<h2>Harness self-check (reference solutions)</h2>")
        versions = f"{_fmt(ref['simulator'].get('iverilog'))} / {_fmt(ref['simulator'].get('vvp'))}"
        parts.append(f"<p>Simulator: {versions}</p>")
        for name, c in ref["benchmarks"].items():
            parts.append(f"<p><b>{html.escape(name)}</b>: {c['passed']}/{c['n_problems']} references pass "
                         f"(ceiling {_fmt(c['ceiling'])}).</p>")
            if c["cannot_pass"]:
                parts.append(_table(["problem", "class", "log"],
                                    [[x["problem"], x["failure_class"], (x.get("log") or "")[:400]]
                                     for x in c["cannot_pass"]]))
    routing = report.get("routing")
    if routing and routing.get("routers"):
        parts.append(f"<h2>Routing ({_fmt(routing['eval_path'])})</h2>")
        for name, m in routing["routers"].items():
            parts.append(confusion_plot(name, m))
        parts.append(_table(["router", "items", "accuracy", "macro-F1", "unparsed"],
                            [[n, m["n"], m["accuracy"], m["macro_f1"], m.get("unparsed")]
                             for n, m in routing["routers"].items()]))
    smoke = report.get("smoke")
    if smoke:
        items = [i["id"] for i in smoke["items"] if i["kind"] != "routing"]
        parts.append("<h2>Smoke suite (the users' acceptance prompts)</h2>")
        parts.append(_table(["model", "passed", *items],
                            [[m, f"{v['passed']}/{v['total']}",
                              *[(v["items"].get(i, {}).get("failure_class") or v["items"].get(i, {}).get("verdict"))
                                for i in items]] for m, v in smoke["models"].items()]))
        route_ids = [i["id"] for i in smoke["items"] if i["kind"] == "routing"]
        if smoke.get("routing"):
            parts.append(_table(["router", "passed", *route_ids],
                                [[m, f"{v['passed']}/{v['total']}",
                                  *[f"{v['items'][i]['predicted']} ({'ok' if v['items'][i]['ok'] else 'wrong'})"
                                    if i in v["items"] else "–" for i in route_ids]]
                                 for m, v in smoke["routing"].items()]))
    rowinfo = report.get("rows", {})
    parts.append(f"<p>{_fmt(rowinfo.get('total'))} rows judged ({_fmt(rowinfo.get('by_kind'))}); every prompt and "
                 f"completion with its verdict is in <code>{_fmt(report.get('samples_dir'))}</code>.</p>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:0.6em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%;margin:0.4em 0}.note{background:#fff5d6;padding:0.5em}")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>chipforge evaluation</title>"
            f"<style>{style}</style></head><body><h1>chipforge evaluation</h1>" + "\n".join(parts) + "</body></html>\n")
