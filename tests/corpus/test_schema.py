import pyarrow as pa
import pytest

from corpus.schema import (
    DOCS_SCHEMA,
    EXAMPLES_SCHEMA,
    FILES_SCHEMA,
    MODULES_SCHEMA,
    PARSED_MODULES_SCHEMA,
    SchemaError,
    conform,
    from_rows,
)


def test_conform_orders_fills_and_casts() -> None:
    t = pa.table({"path": ["a.v"], "repo": ["r"], "n_bytes": pa.array([3], pa.int32())})
    out = conform(t, FILES_SCHEMA, stage="s")
    assert out.schema == FILES_SCHEMA
    assert out.to_pylist()[0] == {**dict.fromkeys(FILES_SCHEMA.names), "repo": "r", "path": "a.v", "n_bytes": 3}


def test_conform_fast_path_returns_the_same_table_and_still_checks_nulls() -> None:
    t = from_rows([{"repo": "r", "path": "a.v"}], FILES_SCHEMA, stage="s")
    assert conform(t, FILES_SCHEMA, stage="s") is t
    nulls = pa.Table.from_arrays([pa.array([None], f.type) for f in FILES_SCHEMA], schema=FILES_SCHEMA)
    with pytest.raises(SchemaError, match="s: column 'repo' has 1 nulls"):
        conform(nulls, FILES_SCHEMA, stage="s")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"repo": ["r"], "path": ["p"], "bogus": [1]}), r"parse: unexpected columns \['bogus'\]"),
        (pa.table({"path": ["p"]}), "parse: missing required column 'repo'"),
        (pa.table({"repo": ["r"], "path": [None]}, schema=pa.schema([("repo", pa.string()), ("path", pa.string())])),
         "parse: column 'path' has 1 nulls"),
        (pa.table({"repo": ["r"], "path": ["p"], "n_bytes": [[1]]}), "parse: column 'n_bytes' is list<item: int64>"),
    ],
)
def test_conform_rejects_with_the_stage_named(table: pa.Table, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        conform(table, FILES_SCHEMA, stage="parse")


def test_from_rows_empty_and_bad_rows() -> None:
    assert from_rows([], MODULES_SCHEMA, stage="s").schema == MODULES_SCHEMA
    with pytest.raises(SchemaError, match="dedup: rows do not fit"):
        from_rows([{"id": "x", "repo": "r", "path": "p", "start_line": "not a number"}], MODULES_SCHEMA, stage="dedup")


def test_modules_extend_parsed_modules_and_every_schema_has_unique_names() -> None:
    assert MODULES_SCHEMA.names[: len(PARSED_MODULES_SCHEMA)] == PARSED_MODULES_SCHEMA.names
    assert {"dup_cluster", "dup_kind", "keep"} <= set(MODULES_SCHEMA.names)
    for schema in (FILES_SCHEMA, PARSED_MODULES_SCHEMA, MODULES_SCHEMA, DOCS_SCHEMA, EXAMPLES_SCHEMA):
        assert len(set(schema.names)) == len(schema.names)
