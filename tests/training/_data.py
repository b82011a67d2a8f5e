"""Tiny instruction datasets for the training tests, in the dataset job's on-disk layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

from corpus.schema import EXAMPLES_SCHEMA, from_rows

SYSTEM = "You write small synthesizable Verilog modules."


def example(phase: str, split: str, user: str, assistant: str, system: str | None = SYSTEM) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]
    eid = hashlib.sha256(f"{phase}|t|{json.dumps(msgs)}".encode()).hexdigest()
    return {"id": eid, "phase": phase, "task": "write_module", "messages": msgs, "source": "verilog_code",
            "split": split, "license": "MIT"}


def register_module(k: int) -> tuple[str, str]:
    w = 2 + k % 6
    name = f"reg_{k}"
    code = (f"module {name} (input wire clk, input wire [{w - 1}:0] d, output reg [{w - 1}:0] q);\n"
            f"  always @(posedge clk) q <= d;\nendmodule")
    return f"Write a {w}-bit register named {name}.", code


def rows(phase: str = "rtl_design", n_train: int = 32, n_val: int = 6) -> list[dict]:
    out = []
    for k in range(n_train + n_val):
        user, code = register_module(k)
        out.append(example(phase, "train" if k < n_train else "validation", user, code))
    return out


def write_dataset(root: Path, examples: list[dict], subdir: str = "examples") -> Path:
    """DIR/<subdir>/phase=<p>/split=<s>/part-00000.parquet, full EXAMPLES_SCHEMA rows (subdir: examples or synthetic)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in examples:
        groups.setdefault((r["phase"], r["split"]), []).append(r)
    for (phase, split), rs in groups.items():
        d = root / subdir / f"phase={phase}" / f"split={split}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(from_rows(rs, EXAMPLES_SCHEMA, stage="test"), d / "part-00000.parquet")
    return root


def write_parquet(path: Path, table_rows: list[dict], *, raw: bool = False) -> Path:
    """One parquet file of example rows (``raw``: as given, no schema, e.g. non-string contents)."""
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(table_rows) if raw else from_rows(table_rows, EXAMPLES_SCHEMA, stage="test")
    pq.write_table(table, path)
    return path


def bad_rows(phase: str = "rtl_design", split: str = "train") -> list[dict]:
    """Rows the fine-tune must reject: an empty message list and a conversation with no assistant turn."""
    base = example(phase, split, "q", "a")
    return [dict(base, id=f"empty-{split}", messages=[]),
            dict(base, id=f"noreply-{split}", messages=[{"role": "user", "content": "Write a counter."}])]


def packing_examples(tokenizer, n: int = 4) -> list[tuple[list[int], list[int]]]:
    """``n`` conversations of different lengths from the test rows (replies cut or repeated)."""
    from training.data import tokenize_messages

    out = []
    for k, r in enumerate(rows(n_train=n, n_val=0)[:n]):
        msgs = [dict(m) for m in r["messages"]]
        words = msgs[-1]["content"].split()
        msgs[-1]["content"] = " ".join((words * 3)[: 4 + 7 * k])
        seq = tokenize_messages(tokenizer, msgs, max_length=160)
        assert seq is not None
        out.append(seq)
    assert len({len(ids) for ids, _ in out}) == n  # examples of different lengths
    return out
