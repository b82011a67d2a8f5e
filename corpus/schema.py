"""The datasets that ``corpus`` writes, one ``pa.schema`` each, checked at stage boundaries.

- ``FILES_SCHEMA``: source files read from cloned repositories (an internal boundary).
- ``MODULES_SCHEMA``: one row per Verilog/SystemVerilog design unit (``DIR/modules/``).
- ``DOCS_SCHEMA``: one row per documentation chunk (``DIR/docs/``).
- ``EXAMPLES_SCHEMA``: one row per chat example, real or synthetic (``DIR/examples/``,
  ``DIR/synthetic/``); the fine-tuning job reads it.

Column order is part of the contract. ``conform`` casts a batch to a schema (adding nulls for
missing nullable columns) and raises ``SchemaError`` naming the stage and the column when a
batch does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

# One row per source file read from a cloned repository (the clone/read → parse boundary).
FILES_SCHEMA = pa.schema(
    [
        pa.field("repo", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("commit", pa.string()),
        pa.field("path", pa.string(), nullable=False),  # relative to the repository root, '/' separated
        pa.field("license", pa.string()),
        pa.field("text", pa.string()),  # decoded file content
        pa.field("encoding", pa.string()),  # utf-8 or the fallback used
        pa.field("n_bytes", pa.int64()),
        pa.field("manifest_index", pa.int32()),  # position of the repository in the manifest
    ]
)

PARAMETER = pa.struct([("name", pa.string()), ("default", pa.string()), ("kind", pa.string())])
PORT = pa.struct([("name", pa.string()), ("direction", pa.string()), ("type", pa.string())])

# Columns produced by parsing (before deduplication).
PARSED_MODULE_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),  # sha256 of url|commit|path|start_line
    pa.field("repo", pa.string(), nullable=False),  # manifest name
    pa.field("url", pa.string()),
    pa.field("commit", pa.string()),
    pa.field("path", pa.string(), nullable=False),  # relative to the repository root, '/' separated
    pa.field("license", pa.string()),  # SPDX id, or the manifest override, or "NOASSERTION"
    pa.field("language", pa.string()),  # verilog | systemverilog
    pa.field("kind", pa.string()),  # module | interface | package | program | primitive
    pa.field("name", pa.string()),
    pa.field("start_line", pa.int32()),  # 1-based, inclusive
    pa.field("end_line", pa.int32()),
    pa.field("comment", pa.string()),  # comment block just before the declaration
    pa.field("parameters", pa.list_(PARAMETER)),
    pa.field("ports", pa.list_(PORT)),
    pa.field("instances", pa.list_(pa.string())),  # module names it instantiates
    pa.field("source", pa.string()),
    pa.field("n_lines", pa.int32()),
    pa.field("parse_ok", pa.bool_()),
    pa.field("error_line_share", pa.float32()),  # share of the unit's lines inside ERROR nodes
    pa.field("sha256", pa.string()),  # of ``source``
    pa.field("norm_sha256", pa.string()),  # of the normalised text (comments/whitespace removed)
    pa.field("encoding", pa.string()),  # utf-8, or the fallback that decoded the file
    pa.field("grammar", pa.string()),  # tree-sitter grammar that parsed it
    pa.field("manifest_index", pa.int32()),  # position of the repository in the manifest
]
PARSED_MODULES_SCHEMA = pa.schema(PARSED_MODULE_FIELDS)

MODULES_SCHEMA = pa.schema(
    PARSED_MODULE_FIELDS
    + [
        pa.field("dup_cluster", pa.string()),  # id of the cluster's representative row
        pa.field("dup_kind", pa.string()),  # unique | exact | near
        pa.field("keep", pa.bool_()),  # True for exactly one row per cluster
        # benchmark problem id the module copies (corpus.decontam; null: clean or not checked)
        pa.field("contaminated_by", pa.string()),
    ]
)

DOCS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # sha256 of url|section_path|text
        pa.field("source", pa.string(), nullable=False),  # config source name, e.g. "yosys"
        pa.field("tool", pa.string()),  # yosys | openroad | opensta | dreamplace | openlane | magic | ...
        pa.field("url", pa.string()),  # page URL, or file:// path for local docs
        pa.field("title", pa.string()),  # page title
        pa.field("section_path", pa.list_(pa.string())),  # headings from the page title down
        pa.field("text", pa.string()),  # cleaned chunk text (Markdown-ish: code fenced)
        pa.field("n_chars", pa.int32()),
        pa.field("has_code", pa.bool_()),
        pa.field("sha256", pa.string()),  # of ``text`` (exact dedup key)
        pa.field("license", pa.string()),
    ]
)

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
PROVENANCE = pa.struct(
    [
        ("repo", pa.string()),
        ("commit", pa.string()),
        ("path", pa.string()),
        ("start_line", pa.int32()),
        ("end_line", pa.int32()),
        ("url", pa.string()),
        ("section", pa.string()),
        ("generator", pa.string()),  # synthetic: engine/model/template version
    ]
)

EXAMPLES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # sha256 of phase|task|messages
        pa.field("phase", pa.string(), nullable=False),
        pa.field("task", pa.string()),  # e.g. write_module, explain_module, complete_module, doc_qa
        pa.field("messages", pa.list_(MESSAGE), nullable=False),  # system?, user, assistant
        pa.field("source", pa.string()),  # verilog_code | documentation | synthetic
        pa.field("provenance", PROVENANCE),
        pa.field("license", pa.string()),
        pa.field("split", pa.string(), nullable=False),  # train | validation | test
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
    ]
)


class SchemaError(ValueError):
    """A batch does not fit the schema of the stage boundary it crosses."""


def conform(batch: pa.Table | pa.RecordBatch, schema: pa.Schema, *, stage: str) -> pa.Table:
    """Return ``batch`` as a table with exactly ``schema``'s columns, in order.

    Missing nullable columns are filled with nulls; missing non-nullable columns, extra
    columns and uncastable types raise ``SchemaError`` naming ``stage``.
    """
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    if table.schema.equals(schema):  # fast path: only the nullability check is left to do
        for field in schema:
            if not field.nullable and table.column(field.name).null_count:
                raise SchemaError(f"{stage}: column {field.name!r} has {table.column(field.name).null_count} nulls")
        return table
    extra = [n for n in table.column_names if schema.get_field_index(n) < 0]
    if extra:
        raise SchemaError(f"{stage}: unexpected columns {extra}")
    arrays = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise SchemaError(f"{stage}: missing required column {field.name!r}")
            arrays.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if not field.nullable and col.null_count:
            raise SchemaError(f"{stage}: column {field.name!r} has {col.null_count} nulls")
        try:
            arrays.append(col.cast(field.type) if col.type != field.type else col)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"{stage}: column {field.name!r} is {col.type}, expected {field.type}: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, *, stage: str) -> pa.Table:
    """Build a table of ``schema`` from Python dicts (missing keys become nulls)."""
    if not rows:
        return schema.empty_table()
    try:
        table = pa.Table.from_pylist([dict(r) for r in rows], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
        raise SchemaError(f"{stage}: rows do not fit the schema: {exc}") from exc
    return conform(table, schema, stage=stage)
