"""Seeds and prompts for synthesis: doc chunks, module records and topics → prompt rows.

- Doc chunks (``DOCS_SCHEMA``, the docs job's ``DIR/docs/``) seed the phases their tool and
  keywords point to (``doc_phases``): yosys → synthesis, OpenSTA → timing/power, OpenROAD
  → placement/routing, refined by keywords in the chunk.
- Module records (``MODULES_SCHEMA``, the corpus job's ``DIR/modules/``, ``keep`` rows that
  parsed) seed RTL tasks.
- Topics come from the config (``DEFAULT_TOPICS`` when a phase lists none).
- ``read_local_docs`` chunks local documentation directories in-process (the bundled
  ``sample/docs``), so a run on the sample needs no docs job.

Every seed has a ``group`` (``group_of``): its repository or documentation page, the unit
the dataset job puts wholly into one split. An example grown from a seed goes into the split
of the seed's group, so a test repository never reaches training through synthesis.

``build_prompts`` is deterministic: the same (seed, round, phase) gives the same prompts
with the same content-derived ids, so reruns and resumed runs line up.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from chipforge.vocab import content_hash
from corpus.schema import DOCS_SCHEMA, MODULES_SCHEMA, conform
from corpus.splits import doc_group
from synthesis.templates import Template

PROMPT_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("round", pa.int32()),
        pa.field("phase", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("template_id", pa.string()),
        pa.field("seed_json", pa.string()),  # the seed's provenance (no long text)
        pa.field("messages_json", pa.string()),  # chat messages for the model
    ]
)

DEFAULT_TOPICS: dict[str, list[str]] = {
    "rtl_design": [
        "a synchronous FIFO with full and empty flags", "a parameterised shift register with parallel load",
        "a gray-code counter", "a round-robin arbiter for four requesters", "an edge detector for a slow input",
        "a pulse stretcher", "a UART transmit shift register", "a saturating up/down counter",
        "a priority encoder", "a clock-enable based frequency divider", "a debouncer with a configurable window",
        "a parity generator and checker", "a simple PWM generator", "a one-hot state machine for a traffic light",
    ],
    "synthesis": [
        "flattening and reporting cell counts", "technology-independent optimisation passes",
        "mapping flip-flops and reporting statistics", "FSM extraction and recoding",
        "keeping hierarchy while synthesising", "writing a netlist without attributes",
        "checking a design for combinational loops and undriven wires", "sharing resources and opt_clean",
        "synthesising for a generic LUT architecture", "retiming-friendly synthesis options",
    ],
    "placement": [
        "floorplan initialisation with a target utilisation", "global placement density settings",
        "detailed placement and legality checks", "placing I/O pins on die edges", "tap cell insertion",
        "macro placement", "placement padding for congested cells", "incremental placement after resizing",
    ],
    "routing": [
        "global routing layer ranges", "reducing routing congestion with layer adjustments",
        "detailed routing and DRC iterations", "writing route guides", "estimating parasitics after global route",
        "clock net routing layers", "antenna repair during routing",
    ],
    "timing_analysis": [
        "defining a primary clock and I/O delays", "generated clocks from a divider", "false paths between async clocks",
        "multicycle paths for a slow enable", "clock uncertainty and latency", "reporting worst setup and hold paths",
        "input transitions and output loads", "path groups for reporting",
    ],
    "power_analysis": [
        "reporting total and per-instance power", "setting switching activity on inputs",
        "reading VCD activity for power", "leakage versus dynamic power", "power of a clock network",
        "comparing power across corners",
    ],
}

# Keywords that tie a documentation chunk to a phase (lower-case substrings).
PHASE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "synthesis": ("synth", "abc", "techmap", "dfflibmap", "opt_", "netlist", "yosys"),
    "placement": ("place", "floorplan", "utilization", "utilisation", "macro", "tapcell", "pdn", "density"),
    "routing": ("route", "routing", "guide", "congestion", "antenna", "track", "layer"),
    "timing_analysis": ("timing", "slack", "clock", "report_checks", "sdc", "delay", "setup", "hold"),
    "power_analysis": ("power", "activity", "vcd", "saif", "leakage", "switching"),
}
TOOL_PHASES: dict[str, tuple[str, ...]] = {
    "yosys": ("synthesis",),
    "opensta": ("timing_analysis", "power_analysis"),
    "openroad": ("placement", "routing", "timing_analysis", "power_analysis"),
    "dreamplace": ("placement",),
    "openlane": ("synthesis", "placement", "routing", "timing_analysis", "power_analysis"),
    "magic": ("routing",),
}


def doc_phases(row: Mapping[str, Any]) -> list[str]:
    """Phases a documentation chunk can seed: its tool's phases that its text mentions.

    A tool with one phase seeds it regardless of keywords; unknown tools use keywords alone.
    """
    tool = (row.get("tool") or row.get("source") or "").lower()
    candidates = TOOL_PHASES.get(tool, tuple(PHASE_KEYWORDS))
    if len(candidates) == 1:
        return list(candidates)
    text = " ".join(filter(None, [row.get("title") or "", " ".join(row.get("section_path") or []),
                                  row.get("text") or ""])).lower()
    return [p for p in candidates if any(k in text for k in PHASE_KEYWORDS[p])]


def _read(path: str, schema: pa.Schema, stage: str, filt: Any = None) -> pa.Table:
    import pyarrow.dataset as pads

    from chipforge import fs

    filesystem, p = fs.resolve(path)
    dataset = pads.dataset(p, filesystem=filesystem, format="parquet", partitioning="hive")
    names = [n for n in schema.names if n in dataset.schema.names]
    table = dataset.to_table(columns=names, filter=filt)
    return conform(table, schema, stage=stage)


def doc_seeds(rows: Iterable[Mapping[str, Any]], *, max_chars: int = 3000,
              min_chars: int = 200) -> tuple[list[dict], list[dict]]:
    """(doc seeds, raw rows with tool/source/text for command lists) from ``DOCS_SCHEMA`` rows.

    A seed's ``group`` is the chunk's documentation page (``corpus.splits.doc_group``), the unit
    the dataset job assigns to one split (``split_of_group`` in its report).
    """
    rows = list(rows)
    seeds = []
    for r in rows:
        text = r.get("text") or ""
        if len(text) < min_chars:
            continue
        seeds.append({
            "kind": "doc", "id": r["id"], "group": doc_group(r), "tool": r.get("tool"), "title": r.get("title"),
            "url": r.get("url"), "section": " > ".join(r.get("section_path") or []), "license": r.get("license"),
            "text": text[:max_chars], "phases": doc_phases(r),
        })
    raw = [{"tool": r.get("tool"), "source": r.get("source"), "text": r.get("text")} for r in rows]
    return seeds, raw


def load_doc_seeds(docs_dir: str, *, max_chars: int = 3000, min_chars: int = 200) -> tuple[list[dict], list[dict]]:
    """(doc seeds, raw doc rows with tool/text for command lists) from the docs job's ``DIR/docs/``."""
    from chipforge import fs

    path = fs.join(docs_dir, "docs")
    if not fs.exists(path):
        raise FileNotFoundError(f"docs input {docs_dir!r} has no docs/ directory (expected the docs job's output)")
    rows = _read(path, DOCS_SCHEMA, "synthesize: read docs").to_pylist()
    return doc_seeds(rows, max_chars=max_chars, min_chars=min_chars)


def read_local_docs(sources: Iterable[Any], *, chunk_chars: int = 1500, min_chars: int = 40) -> tuple[list[dict], dict]:
    """``DOCS_SCHEMA`` rows of local documentation directories, read and chunked in-process.

    ``sources`` are ``corpus.docs.sources.LocalSource`` configs (name, tool, path, globs,
    license): the same extraction and chunking as the docs job, without running it, so a
    synthesis run on the bundled sample (``sample/docs``) needs no other job's output. The
    chunks carry the source's name, as the docs job's would. Returns (rows, stats per source).
    """
    from corpus.docs.chunk import chunk_page, dedup
    from corpus.docs.crawl import read_local
    from corpus.docs.extract import extract

    rows: list[dict] = []
    stats: dict[str, Any] = {}
    for source in sources:
        pages, st = read_local(source)
        failed = list(st.get("failures") or [])
        for page in pages.to_pylist():
            try:
                parsed = extract(page["content"] or "", page["format"], page["url"])
            except Exception as exc:  # noqa: BLE001 - one bad page is skipped, and counted
                failed.append({"url": page["url"], "reason": f"extract_error:{type(exc).__name__}"})
                continue
            chunks, _ = chunk_page(parsed, source=source.name, tool=source.tool, license=source.license,
                                   max_chars=chunk_chars, min_chars=min_chars)
            rows += chunks
        stats[source.name] = {"pages": pages.num_rows, "failed": len(failed),
                              "failures": [f"{f['url']}: {f['reason']}" for f in failed][:5]}
    kept, _ = dedup(rows)
    return kept, stats


def load_module_seeds(corpus_dir: str, *, min_lines: int = 8, max_lines: int = 150) -> list[dict]:
    """Module seeds (kept, parsed, modest size) from the corpus job's ``DIR/modules/``."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from chipforge import fs

    path = fs.join(corpus_dir, "modules")
    if not fs.exists(path):
        raise FileNotFoundError(f"corpus input {corpus_dir!r} has no modules/ directory (expected the corpus job's output)")
    filt = (pads.field("keep") == True) & (pads.field("kind") == "module") & (pads.field("parse_ok") == True)  # noqa: E712
    table = _read(path, MODULES_SCHEMA, "synthesize: read modules", filt)
    n = pc.fill_null(table.column("n_lines"), 0)
    table = table.filter(pc.and_(pc.greater_equal(n, min_lines), pc.less_equal(n, max_lines)))
    table = table.filter(pc.is_null(table.column("contaminated_by")))  # decontam: no benchmark copies as seeds
    seeds = []
    for r in table.select(["id", "repo", "url", "commit", "path", "license", "name", "start_line", "end_line",
                           "source"]).to_pylist():
        seeds.append({"kind": "module", "group": r["repo"], **r})
    return sorted(seeds, key=lambda s: s["id"])


def provenance(seed: Mapping[str, Any], generator: str) -> dict[str, Any]:
    """``PROVENANCE`` struct for an example grown from ``seed``."""
    return {
        "repo": seed.get("repo"), "commit": seed.get("commit"), "path": seed.get("path"),
        "start_line": seed.get("start_line"), "end_line": seed.get("end_line"), "url": seed.get("url"),
        "section": seed.get("section") or seed.get("topic") or seed.get("title"), "generator": generator,
    }


def group_of(seed: Mapping[str, Any]) -> str:
    """The split group of a seed: its repository (modules), documentation page (docs) or
    ``topic:<text>`` (topics, which come from no data). Examples inherit this group's split."""
    if seed.get("group"):
        return str(seed["group"])
    if seed.get("kind") == "module" and seed.get("repo"):
        return str(seed["repo"])
    if seed.get("kind") == "topic":
        return f"topic:{seed.get('topic')}"
    return f"{seed.get('kind') or 'seed'}:{seed.get('id') or seed.get('url') or seed.get('title')}"


def seed_ref(seed: Mapping[str, Any]) -> str:
    """The seed without its long text, as JSON (travels with each prompt)."""
    keep = {k: v for k, v in seed.items() if k not in {"text", "source", "phases"}}
    return json.dumps(keep, sort_keys=True, default=str)


def seeds_by_kind(phase: str, docs: Iterable[dict], modules: Iterable[dict], topics: list[str]) -> dict[str, list[dict]]:
    return {
        "doc": [d for d in docs if phase in d.get("phases", [])],
        "module": list(modules) if phase == "rtl_design" else [],
        "topic": [{"kind": "topic", "topic": t} for t in topics],
    }


def build_prompts(phase: str, n: int, *, round_: int, seed: int, templates: list[Template],
                  seeds: Mapping[str, list[dict]], design: Mapping[str, str], offset: int = 0) -> list[dict]:
    """``n`` prompt rows for ``phase``: templates in turn (those with seeds), seeds shuffled.

    ``offset`` continues a phase's numbering across rounds so prompt ids never repeat.
    """
    usable = [t for t in templates if seeds.get(t.seed_kind)]
    if not usable or n <= 0:
        return []
    rng = random.Random(f"{seed}|{phase}|{round_}")
    pools = {kind: rng.sample(items, len(items)) for kind, items in seeds.items() if items}
    rows = []
    for k in range(n):
        template = usable[k % len(usable)]
        pool = pools[template.seed_kind]
        s = pool[(k // len(usable)) % len(pool)]
        messages = template.render(s, dict(design))
        ident = f"{seed}|{phase}|{offset + k}|{template.id}|{seed_ref(s)}"
        rows.append({
            "prompt_id": content_hash(ident, length=20),
            "round": round_, "phase": phase, "task": template.task, "template_id": template.id,
            "seed_json": seed_ref(s), "messages_json": json.dumps(messages),
        })
    return rows
