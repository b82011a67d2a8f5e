"""Instruction-example builders: module rows → examples, doc chunks → examples; per-group caps.

Stages are pure functions over pyarrow tables (Ray-free); ``jobs/build_dataset.py`` maps them.
Rows are EXAMPLES_SCHEMA minus ``split`` (assigned later by group, see corpus/splits.py); the
split column is filled with "" here and overwritten by the split stage.

Token counts default to a cheap deterministic approximation: ceil(chars / 4) over the message
contents (prompt = system + user, completion = assistant), the usual rule of thumb for BPE
tokenisers on English and code.

Inputs are validated at the stage boundary (issue 8: a modules table without ``keep``/``source``
was read as nulls and silently produced no examples): a batch that lacks a column the builders
need (``MODULE_REQUIRED``, ``DOC_REQUIRED``) raises ``SchemaError`` naming the stage and the
columns; ``check_input_files`` does the same on the driver, per Parquet file, naming the file.
A row whose required value is null or empty is not built: it becomes a skip row with reason
``invalid_row:<column> ...``, the row's ``id`` in the ``id`` column, counted like any skip.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from chipforge.vocab import SYSTEM_PROMPTS, content_hash
from corpus.schema import DOCS_SCHEMA, EXAMPLES_SCHEMA, MODULES_SCHEMA, SchemaError, conform, from_rows
from corpus.splits import doc_group, module_group

log = logging.getLogger(__name__)

# Columns the builders read, which must be present and non-null (and non-empty for strings) per row.
MODULE_REQUIRED: tuple[str, ...] = ("id", "repo", "path", "name", "source", "keep", "parse_ok")
DOC_REQUIRED: tuple[str, ...] = ("id", "source", "text")
INVALID_ROW = "invalid_row"  # skip reason prefix of a row that does not fit its schema

SYSTEM = SYSTEM_PROMPTS  # one definition: chipforge.vocab


def approx_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def example_id(phase: str, task: str, messages: Sequence[dict[str, str]]) -> str:
    return content_hash(phase, task, list(messages))


def make_example(phase: str, task: str, user: str, assistant: str, source: str,
                 provenance: dict[str, Any], license: str | None) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM[phase]}, {"role": "user", "content": user},
                {"role": "assistant", "content": assistant}]
    return {
        "id": example_id(phase, task, messages), "phase": phase, "task": task, "messages": messages,
        "source": source, "provenance": provenance, "license": license, "split": "",
        "prompt_tokens": approx_tokens(SYSTEM[phase] + user), "completion_tokens": approx_tokens(assistant),
    }


def description(row: Mapping[str, Any]) -> str:
    """The author's header comment without a leading ``<name>:`` / ``<name> -`` prefix (issue 13:
    15 of 19 explanations began by repeating the module name)."""
    text = (row.get("comment") or "").strip()
    name = re.escape(row.get("name") or "")
    if name:
        text = re.sub(rf"^\s*(?:module\s+)?`?{name}`?\s*(?:[:\-\u2013\u2014]+|is\b)\s*", "", text, count=1,
                      flags=re.IGNORECASE)
    text = text.strip()
    return text[:1].upper() + text[1:]


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z0-9_]*", text.lower())


def describable(row: Mapping[str, Any], min_chars: int, min_words: int = 4) -> bool:
    """Whether the author's comment describes behaviour rather than restating the header: at
    least ``min_chars`` characters and ``min_words`` words that are not the module's, its
    ports' or its parameters' names (``clk``, ``data`` ... alone describe nothing)."""
    text = description(row)
    if len(text) < min_chars:
        return False
    names = {(row.get("name") or "").lower(), "module", "input", "output", "inout", "wire", "reg", "logic"}
    names |= {(p.get("name") or "").lower() for p in (row.get("ports") or []) + (row.get("parameters") or [])}
    return sum(1 for w in _words(text) if w not in names) >= min_words


def _width(ptype: str) -> str:
    """Width of a port from its declared type: ``[7:0]`` → 8 bits, ``[W-1:0]`` → W bits."""
    m = re.search(r"\[([^\]:]+):([^\]]+)\]", ptype)
    if not m:
        return "1 bit" if not re.search(r"[A-Za-z_]\w*\.\w+|_t\b|_if\b", ptype) else f"type {ptype.strip()}"
    hi, lo = m.group(1).strip(), m.group(2).strip()
    if hi.isdigit() and lo.isdigit():
        n = abs(int(hi) - int(lo)) + 1
        return f"{n} bit" + ("s" if n != 1 else "")
    minus = re.fullmatch(r"(.+?)\s*-\s*1", hi)
    if minus and lo == "0":
        return f"{minus.group(1).strip()} bits"
    return f"bits [{hi}:{lo}]"


def _port_kind(ptype: str) -> str:
    """``8 bits, reg`` from ``reg [7:0]``: the width, then the declared keywords without the range."""
    words = re.sub(r"\[[^\]]*\]", " ", ptype).split()
    return ", ".join([_width(ptype), *words]) if words and not _width(ptype).startswith("type ") else _width(ptype)


def port_comments(source: str, ports: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Port name → the author's trailing ``//`` comment on its declaration line, where there is one."""
    out: dict[str, str] = {}
    names = {p.get("name") for p in ports if p.get("name")}
    for line in source.splitlines():
        code, sep, comment = line.partition("//")
        if not sep or not comment.strip():
            continue
        for name in names:
            if name not in out and re.search(rf"\b(input|output|inout)\b.*\b{re.escape(name)}\b", code):
                out[name] = comment.strip()
    return out


def spec_text(row: Mapping[str, Any]) -> str:
    """A specification from everything the parser knows except the body: the kind and name, the
    author's description, the parameters with defaults, the ports with direction, width and the
    author's port comments, and the submodules it instantiates (localparams are implementation)."""
    kind = row.get("kind") or "module"
    comments = port_comments(row.get("source") or "", row.get("ports") or [])
    parts = [f"{kind.capitalize()} name: {row['name']}", f"Behaviour:\n{description(row)}"]
    params = [p for p in row.get("parameters") or [] if (p.get("kind") or "parameter") == "parameter"]
    if params:
        parts.append("Parameters:\n" + "\n".join(f"- {p['name']} (default {p['default']})" for p in params))
    ports = row.get("ports") or []
    if ports:
        lines = []
        for p in ports:
            ptype = p.get("type") or ""
            signed = ", signed" if re.search(r"\bsigned\b", ptype) else ""
            note = f": {comments[p['name']]}" if p["name"] in comments else ""
            lines.append(f"- {p['name']}: {p.get('direction') or 'port'}, {_width(ptype)}{signed}{note}")
        parts.append("Ports:\n" + "\n".join(lines))
    subs = sorted(set(row.get("instances") or []))
    if subs:
        parts.append("Instantiates: " + ", ".join(subs))
    return "\n\n".join(parts)


def _explanation(row: Mapping[str, Any]) -> str:
    """Answer for explain_module: the author's description (no name prefix), the interface, the submodules."""
    parts = [description(row)]
    ports = row.get("ports") or []
    ins = [p for p in ports if (p.get("direction") or "").startswith("in")]
    outs = [p for p in ports if (p.get("direction") or "").startswith("out")]
    other = [p for p in ports if p not in ins and p not in outs]
    for label, ps in (("Inputs", ins), ("Outputs", outs), ("Other ports", other)):
        if ps:
            parts.append(f"{label}: " + ", ".join(f"`{p['name']}` ({_port_kind(p.get('type') or '')})" for p in ps) + ".")
    params = [p for p in row.get("parameters") or [] if (p.get("kind") or "parameter") == "parameter"]
    if params:
        parts.append("Parameters: " + ", ".join(f"`{p['name']}` (default {p['default']})" for p in params) + ".")
    if row.get("instances"):
        parts.append("It instantiates: " + ", ".join(f"`{i}`" for i in sorted(set(row["instances"]))) + ".")
    return "\n\n".join(parts)


def module_skip_reason(row: dict[str, Any], min_comment_chars: int, max_error_share: float) -> str | None:
    """Why a module yields no examples, or None. ``description_too_short``: the module cannot be
    described (see ``describable``), so no specification can be written for it."""
    # --- decontam: the corpus job marked this module as a copy of a benchmark problem ---
    if row.get("contaminated_by"):
        return f"contaminated_module:{row['contaminated_by']}"
    # --- end decontam ---
    if not row.get("keep"):
        return "not_kept_by_dedup"
    if not row.get("parse_ok") or (row.get("error_line_share") or 0.0) > max_error_share:
        return "parse_error"
    if not describable(row, min_comment_chars):
        return "description_too_short"
    return None


def header_end(source: str) -> int | None:
    """Character offset just past the declaration header (``module m #(...) (...);``): the first
    ``;`` outside parentheses, comments and strings; None when there is none."""
    depth, i, n = 0, 0, len(source)
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            i = source.find("\n", i)
            i = n if i < 0 else i
            continue
        if source.startswith("/*", i):
            j = source.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c == '"':
            j = i + 1
            while j < n and source[j] != '"':
                j += 2 if source[j] == "\\" else 1
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == ";" and depth == 0:
            return i + 1
        i += 1
    return None


def split_header(row: Mapping[str, Any]) -> tuple[str, str] | str:
    """(header, body) for complete_module, or the reason it cannot be built.

    A package has no port header (``package p;`` says nothing the spec does not), so it is
    skipped rather than cut at the first ``);`` inside a function, as the line-based split did."""
    kind = row.get("kind") or "module"
    if kind == "package":
        return "package_has_no_header"
    src = row["source"]
    end = header_end(src)
    if end is None:
        return "no_header"
    nl = src.find("\n", end)
    cut = len(src) if nl < 0 else nl
    header, body = src[:cut].rstrip(), src[cut:].strip("\n")
    lines = [ln for ln in body.splitlines() if ln.strip()]
    if len(lines) < 2:  # only the end keyword: nothing to complete
        return "empty_body"
    return header, body


def module_examples(row: dict[str, Any], phase: str = "rtl_design") -> list[dict[str, Any]]:
    """write_module / explain_module / complete_module for one kept, described module.

    A complete_module that cannot be built comes back as a skip row ``complete_module_skipped:<reason>``.
    """
    src = row["source"]
    prov = {"repo": row["repo"], "commit": row.get("commit"), "path": row["path"],
            "start_line": row.get("start_line"), "end_line": row.get("end_line"), "url": row.get("url"),
            "section": None, "generator": None}
    spec = spec_text(row)
    kind = row.get("kind") or "module"
    lang = "systemverilog" if kind in ("package", "interface") or re.search(r"\blogic\b", src) else "verilog"
    out = [
        make_example(phase, "write_module", f"Write a {'SystemVerilog' if lang == 'systemverilog' else 'Verilog'} "
                     f"{kind} from this specification.\n\n{spec}",
                     f"```{lang}\n{src}\n```", "verilog_code", prov, row.get("license")),
        make_example(phase, "explain_module", f"Explain what this {kind} does.\n\n```{lang}\n{src}\n```",
                     _explanation(row), "verilog_code", prov, row.get("license")),
    ]
    parts = split_header(row)
    if isinstance(parts, str):
        out.append({"skip": f"complete_module_skipped:{parts}", "phase": phase, "group": row["repo"]})
    else:
        header, body = parts
        out.append(make_example(phase, "complete_module",
                                f"Complete the body of this {kind}.\n\n{spec}\n\n```{lang}\n{header}\n```",
                                f"```{lang}\n{body}\n```", "verilog_code", prov, row.get("license")))
    return out


DOC_QUESTIONS: tuple[str, ...] = (
    "In {tool}, what does the documentation say about {topic}?",
    "Can you explain {topic} in {tool}?",
    "I am using {tool}. What should I know about {topic}?",
)


def doc_question(row: Mapping[str, Any]) -> str:
    """A question from the section's titles only (no engine here): never any of the answer's
    text (issue 13: every prompt ended with ``(context: <the answer's first line>)``). The
    template is picked by a hash of the section's source, topic and text (not the chunk id, whose
    ``file://`` URL names the checkout's path), so the wording varies but is the same on every
    machine."""
    path = [s for s in (row.get("section_path") or []) if s]
    if len(path) >= 2:
        topic = f"\"{path[-1]}\" (in \"{path[0]}\")"
    else:
        topic = f"\"{(path or [row.get('title') or row['source']])[0]}\""
    tool = row.get("tool") or row["source"]
    template = DOC_QUESTIONS[int(content_hash(row["source"], topic, row.get("text") or "")[:8], 16) % len(DOC_QUESTIONS)]
    return template.format(tool=tool, topic=topic)


def doc_examples(row: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    """doc_qa (a section-title question, the section as the answer). Router (triage) examples
    come from corpus/router.py (labelled questions), not from the classifier's phase here."""
    path = [s for s in (row.get("section_path") or []) if s]
    topic = " > ".join(path) or (row.get("title") or row["source"])
    question = doc_question(row)
    prov = {"repo": None, "commit": None, "path": None, "start_line": None, "end_line": None,
            "url": row.get("url"), "section": topic, "generator": None}
    return [
        make_example(phase, "doc_qa", question, row["text"].strip(), "documentation", prov, row.get("license")),
    ]


def cap_per_group(rows: list[dict[str, Any]], key: str, max_share: float) -> tuple[list[dict[str, Any]], int]:
    """Within each phase keep at most ``cap`` examples from one group, lowest ids first (deterministic).

    ``cap = max(1, floor(max_share * n), ceil(n / n_groups))`` with ``n`` the phase's examples before
    capping. The second term is the floor: with fewer than ``1 / max_share`` groups the share
    cannot be met, so each group may keep an equal part (a 1-repository corpus keeps everything,
    2 repositories keep up to half each). Returns (kept, n_dropped).
    """
    by_phase: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_phase[r["phase"]].append(r)
    kept: list[dict[str, Any]] = []
    for phase_rows in by_phase.values():
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in phase_rows:
            groups[r[key]].append(r)
        n = len(phase_rows)
        cap = max(1, math.floor(max_share * n), math.ceil(n / len(groups)))
        for g in groups.values():
            kept.extend(sorted(g, key=lambda r: r["id"])[:cap])
    return kept, len(rows) - len(kept)


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return from_rows(rows, EXAMPLES_SCHEMA, stage="dataset.examples")


def _as_table(batch: pa.Table | pa.RecordBatch | Mapping[str, Any]) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    return pa.table({k: list(v) for k, v in batch.items()})


def require_columns(names: Sequence[str], required: Sequence[str], where: str) -> None:
    """Raise SchemaError naming ``where`` and the missing columns if ``names`` lacks any of ``required``."""
    missing = [c for c in required if c not in names]
    if missing:
        raise SchemaError(f"{where}: missing required columns {missing} (has {list(names)}); "
                          "is this the output of the right job?")


def _uncastable_rows(column: pa.ChunkedArray, target: pa.DataType) -> list[int]:
    """Rows of ``column`` whose value cannot be cast to ``target`` (all of them when the types
    cannot be cast at all); empty when the whole column casts."""
    try:
        column.cast(target)
        return []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    bad = []
    for i in range(len(column)):
        try:
            column.slice(i, 1).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            bad.append(i)
    return bad


def validate_rows(batch: pa.Table | pa.RecordBatch | Mapping[str, Any], schema: pa.Schema,
                  required: Sequence[str], group_column: str, stage: str) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Split a batch into (valid rows conformed to ``schema``, skip rows for the invalid ones).

    A missing ``required`` column raises SchemaError (the whole input is wrong, not one row).
    Columns ``schema`` does not know (a corpus written by another version) are not read.
    A row with a null (or, for strings, empty) value in a ``required`` column, or a value that
    does not cast to its column's type (``keep: "maybe"``), becomes
    ``{"skip": "invalid_row:<column> <what is wrong>", "id": <row id>, "group": <group>}``
    and is logged with its id; the others are conformed (types cast) to ``schema``.
    """
    table = _as_table(batch)
    require_columns(table.column_names, required, stage)
    table = table.select([c for c in table.column_names if schema.get_field_index(c) >= 0])
    first_problem: list[str | None] = [None] * table.num_rows
    for col in required:
        values = table.column(col)
        empty = pc.is_null(values)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            empty = pc.or_(empty, pc.fill_null(pc.equal(pc.utf8_length(values), 0), True))
        if pc.any(empty).as_py():
            for i, flag in enumerate(empty.to_pylist()):
                if flag and first_problem[i] is None:
                    first_problem[i] = f"{col} is null or empty"
    for field in schema:
        if field.name in table.column_names and table.column(field.name).type != field.type:
            column = table.column(field.name)
            for i in _uncastable_rows(column, field.type):
                if first_problem[i] is None:
                    first_problem[i] = f"{field.name} is not {field.type} (a {column.type} value {str(column[i])[:60]!r})"
    skips: list[dict[str, Any]] = []
    if any(p is not None for p in first_problem):
        ids = table.column("id").to_pylist()
        groups = table.column(group_column).to_pylist()
        for i, problem in enumerate(first_problem):
            if problem is not None:
                skips.append({"skip": f"{INVALID_ROW}:{problem}", "id": ids[i], "group": groups[i] or "unknown"})
        log.warning("%s: %d invalid rows skipped, e.g. id=%s (%s)", stage, len(skips), skips[0]["id"], skips[0]["skip"])
        table = table.filter(pa.array([p is None for p in first_problem], pa.bool_()))
    return conform(table, schema, stage=stage), skips


def input_files(root: str) -> list[tuple[str, pa.Schema | str, list[str]]]:
    """(path, file schema or why it cannot be read, hive partition columns) of every Parquet file
    under ``root`` (schemas only, no data read); hidden and ``_``-prefixed files are not inputs."""
    import pyarrow.parquet as pq

    from chipforge import fs

    out = []
    for path in fs.listdir(root, recursive=True):
        if not path.endswith(".parquet") or posixpath.basename(path).startswith((".", "_")):
            continue
        rel = fs.relative(path, root)
        partition_cols = [seg.split("=", 1)[0] for seg in rel.split("/")[:-1] if "=" in seg]
        filesystem, inner = fs.resolve(path)
        try:
            schema: pa.Schema | str = pq.read_schema(inner, filesystem=filesystem)
        except (pa.ArrowInvalid, OSError) as exc:  # truncated or not Parquet at all
            schema = f"not a readable Parquet file ({str(exc).splitlines()[0][:200]})"
        out.append((path, schema, partition_cols))
    return out


def check_input_files(root: str, required: Sequence[str], what: str) -> int:
    """Driver-side check of every Parquet file under ``root`` (schemas only, no data read).

    Hive partition directories (``repo=<name>/``) supply their column. Raises SchemaError naming
    the first file that lacks a ``required`` column; returns the number of files checked.
    """
    files = input_files(root)
    for path, schema, partition_cols in files:
        if isinstance(schema, str):  # unreadable: incompatible_files reports it and it is not read
            continue
        require_columns(list(schema.names) + partition_cols, required, f"{what} file {path}")
    return len(files)


def incompatible_files(root: str, schema: pa.Schema) -> dict[str, str]:
    """Parquet files under ``root`` that cannot be read, or whose column types cannot be unified with
    ``schema``'s: path → why.

    Ray Data unifies the schemas of every file it reads before reading any, so one file of a
    hand-made or older corpus with, say, ``start_line`` written as strings failed the whole read
    (``Unable to merge: Field start_line has incompatible types``). The job reads the others and
    reports these; values that fit a unifiable type are checked row by row (``validate_rows``).
    Columns ``schema`` does not have are not compared (they are not read into examples).
    """
    bad: dict[str, str] = {}
    for path, file_schema, _ in input_files(root):
        if isinstance(file_schema, str):
            bad[path] = file_schema
            continue
        shared = pa.schema([f for f in file_schema if schema.get_field_index(f.name) >= 0])
        expected = pa.schema([schema.field(f.name) for f in shared])
        try:
            pa.unify_schemas([expected, shared], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            bad[path] = str(exc).splitlines()[0]
    return bad


class ModuleStage:
    """Batch of MODULES_SCHEMA rows → example rows (+ a ``group`` column = repo, ``skip`` reasons).

    Phase: ``rtl_design`` unless a classifier is given (``classify=True``) and it assigns another
    phase (e.g. power_analysis for a clock-gating cell) with probability ≥ ``min_confidence``
    over the module's name + header comment: a module is RTL first, so only a confident call
    moves it. No triage (router) examples here: corpus/router.py builds them from labelled questions.
    """

    def __init__(self, min_comment_chars: int = 20, max_error_share: float = 0.05, classify: bool = False,
                 model_path: str | None = None, min_confidence: float = 0.6, specs_max_chars: int | None = None) -> None:
        self.min_comment_chars, self.max_error_share, self.min_confidence = min_comment_chars, max_error_share, min_confidence
        # --- module specs: with an engine (specs_max_chars = module_specs.max_source_chars), the
        # write_module example (or the description_too_short skip) of every module corpus.module_specs
        # prompts comes from its check (engine spec, or the comment-based fallback); the rest stays here ---
        self.specs_max_chars = specs_max_chars
        self.clf = None
        if classify:
            from corpus.phases import PhaseClassifier

            self.clf = PhaseClassifier.load(model_path)

    def phases(self, rows: list[dict[str, Any]]) -> list[str]:
        if self.clf is None or not rows:
            return ["rtl_design"] * len(rows)
        return module_phases(self.clf, [f"{r['name']}: {r.get('comment') or ''}" for r in rows], self.min_confidence)

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch, rows = validate_rows(batch, MODULES_SCHEMA, MODULE_REQUIRED, "repo", "dataset.modules")
        modules = batch.to_pylist()
        # every valid row is classified, so the report can say which phase a filter took rows from
        for r, phase in zip(modules, self.phases(modules)):
            reason = module_skip_reason(r, self.min_comment_chars, self.max_error_share)
            if self.specs_max_chars is not None and _spec_prompted(r, reason, self.specs_max_chars):  # module specs
                if reason is None:
                    rows.extend({**e, "group": module_group(r)} for e in module_examples(r, phase)[1:])
                continue
            if reason:
                rows.append({"skip": reason, "phase": phase, "group": module_group(r)})
            else:
                rows.extend({**e, "group": module_group(r)} for e in module_examples(r, phase))
        return _tagged(rows, lambda e: e["provenance"]["repo"])


# --- module specs (corpus.module_specs) ---
def _spec_prompted(row: Mapping[str, Any], reason: str | None, max_chars: int) -> bool:
    from corpus.module_specs import prompted

    return prompted(row, reason, max_chars)
# --- end module specs ---


def module_phases(clf: Any, texts: list[str], min_confidence: float) -> list[str]:
    """Classifier phase where confident and not triage, else rtl_design."""
    pipe = getattr(clf, "pipeline", None)
    if pipe is None or not hasattr(pipe, "predict_proba"):
        return ["rtl_design"] * len(texts)
    from corpus.phases import _with_tool

    probs = pipe.predict_proba(_with_tool(texts, None))
    out = []
    for p in probs:
        i = int(p.argmax())
        label = str(pipe.classes_[i])
        out.append(label if label not in ("triage",) and p[i] >= min_confidence else "rtl_design")
    return out


class DocStage:
    """Batch of DOCS_SCHEMA rows → doc_qa rows; phase from the classifier with the tool prior."""

    def __init__(self, model_path: str | None = None, min_chars: int = 80, titles: bool = True) -> None:
        from corpus.phases import PhaseClassifier

        self.clf, self.min_chars = PhaseClassifier.load(model_path), min_chars
        # --- doc questions: titles=False when an engine writes the questions (corpus.doc_questions
        # builds the examples of eligible chunks, title fallback included); only skips come from here ---
        self.titles = titles

    def __call__(self, batch: pa.Table) -> pa.Table:
        table, rows = validate_rows(batch, DOCS_SCHEMA, DOC_REQUIRED, "source", "dataset.docs")
        docs = table.to_pylist()
        phases = self.clf.predict([d["text"] for d in docs], tools=[d.get("tool") for d in docs]) if docs else []
        for d, ph in zip(docs, phases):
            group = doc_group(d)  # the page, not the whole source (corpus.splits)
            if len((d.get("text") or "").strip()) < self.min_chars:
                rows.append({"skip": "doc_too_short", "phase": ph, "group": group})
            elif ph == "triage":
                rows.append({"skip": "doc_general_no_phase", "phase": ph, "group": group})
            elif self.titles:  # --- doc questions: see __init__ ---
                rows.extend({**e, "group": group} for e in doc_examples(d, ph))
        return _tagged(rows, lambda e: e["group"])


TAGGED_SCHEMA = pa.schema([("id", pa.string()), ("phase", pa.string()), ("group", pa.string()),
                           ("skip", pa.string()), ("example", pa.string())])


SHARED_WORDS = 8  # a user turn may not share a run of this many words with its assistant turn
_WORD = re.compile(r"\w+")


def shares_answer(messages: Sequence[Mapping[str, Any]], n: int = SHARED_WORDS) -> bool:
    """Whether the user turns share a run of ``n`` words (case-folded) with the assistant turns:
    the prompt would hand the model part of its answer (issue 13; e.g. an author's comment that
    is both the module's specification and a line of its code)."""
    def grams(role: str) -> set[tuple[str, ...]]:
        words = _WORD.findall(" ".join(m["content"] for m in messages if m["role"] == role).lower())
        return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

    return not grams("user").isdisjoint(grams("assistant"))


def _tagged(rows: list[dict[str, Any]], group: Any) -> pa.Table:
    """Examples as JSON strings with id/phase/group/skip columns: a flat, schema-stable batch for Ray.

    A skipped input is one row with ``skip`` set (the reason) and no example. An example whose
    prompt shares a long run of words with its answer becomes a ``prompt_shares_answer`` skip.
    """
    groups = [r.get("group") or group(r) for r in rows]
    rows = [{"skip": "prompt_shares_answer", "phase": r.get("phase"), "id": r.get("id")}
            if not r.get("skip") and r.get("messages") and shares_answer(r["messages"]) else r for r in rows]
    return pa.table({
        "id": [r.get("id") for r in rows],
        "phase": [r.get("phase") for r in rows],
        "group": groups,
        "skip": [r.get("skip") for r in rows],
        "example": [None if r.get("skip") else json.dumps(r) for r in rows],
    }, schema=TAGGED_SCHEMA)


class DecontamStage:
    """Tagged batch → same rows, with ``skip = "contaminated:<suite>:<methods>"`` where the example
    copies a benchmark problem: its user+assistant text shares an n-gram with a problem's prompt
    or reference (``text_13gram``), or holds most of a reference solution's identifier-canonical
    token n-grams, so a renamed copy is caught too (``canonical``); ``corpus.decontam``. Both
    indexes are built once per actor."""

    def __init__(self, benchmark_paths: Sequence[str], n: int = 13) -> None:
        from corpus.decontam import Decontaminator

        self.check = Decontaminator.from_paths(list(benchmark_paths), ngram=n).check

    def __call__(self, batch: pa.Table) -> pa.Table:
        from corpus.decontam import BenchmarkIndex

        skip = batch.column("skip").to_pylist()
        for i, ex in enumerate(batch.column("example").to_pylist()):
            if ex is None:
                continue
            msgs = json.loads(ex)["messages"]
            match = self.check("\n".join(m["content"] for m in msgs if m["role"] != "system"))
            if match:
                skip[i] = f"contaminated:{BenchmarkIndex.suite(match.problem_id)}:{'+'.join(match.methods)}"
        return batch.set_column(batch.schema.get_field_index("skip"), "skip", pa.array(skip, pa.string()))


class ApplySplits:
    """Tagged batch → EXAMPLES_SCHEMA rows of the kept (id, group) pairs, split from the driver's
    group → split map. Keyed by the pair: the same example text from two repositories is one id,
    and only the copy the driver kept may pass."""

    def __init__(self, split_of: dict[str, str], keep: set[tuple[str, str]]) -> None:
        self.split_of, self.keep = split_of, keep

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for ex_id, group, ex in zip(*(batch.column(c).to_pylist() for c in ("id", "group", "example"))):
            if ex is not None and (ex_id, group) in self.keep:
                rows.append({**json.loads(ex), "split": self.split_of[group]})
                rows[-1].pop("group", None)
        return to_table(rows)
