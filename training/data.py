"""Chat examples → token rows for causal-LM fine-tuning: chat template, assistant-only labels, packing.

- ``tokenize_messages`` renders ``messages`` with the tokenizer's own chat template and labels
  only the assistant spans (every other token is -100). Spans are found by rendering the
  conversation prefix by prefix, so any template works (no ``{% generation %}`` needed), and
  tokens are mapped to spans through character offsets, so BPE merges at a boundary never
  shift a label.
- ``pack_rows`` puts whole examples into rows of at most ``max_length`` tokens (first-fit
  decreasing); examples longer than ``max_length`` are truncated first. Examples in a packed row
  attend to each other (plain concatenation, as most SFT packers do); labels never cross
  examples because each one's labels come from its own spans.
- Without packing, rows are single examples sorted by length inside each batch (length
  bucketing): the collate function pads to the longest row of a batch only.

``TokenizeStage`` is the pure pyarrow stage; ``jobs.finetune`` runs it with ``map_batches`` on
Ray Data CPU workers (so GPU workers never tokenise, and the token count is known before
training to size the schedule), and ``training.loop`` runs it directly on the no-Ray path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from chipforge import fs
from corpus.schema import EXAMPLES_SCHEMA, conform

IGNORE = -100

TOKENS_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),
        pa.field("n_tokens", pa.int32()),
        pa.field("n_label_tokens", pa.int32()),
        pa.field("n_examples", pa.int32()),
    ]
)


class DatasetError(ValueError):
    """The instruction dataset has no usable rows for a phase/split."""


# Subdirectories of a dataset directory that hold example rows: the dataset job's and the synthesis job's.
EXAMPLE_SUBDIRS = ("examples", "synthetic")
DatasetDirs = str | Sequence[str]


def dataset_roots(dataset_dir: DatasetDirs) -> list[str]:
    return [dataset_dir] if isinstance(dataset_dir, str) else list(dataset_dir)


def split_dirs(dataset_dir: DatasetDirs, phase: str, split: str) -> list[str]:
    """``ROOT/{examples,synthetic}/phase=<phase>/split=<split>`` for every root."""
    return [fs.join(root, sub, f"phase={phase}", f"split={split}")
            for root in dataset_roots(dataset_dir) for sub in EXAMPLE_SUBDIRS]


def parquet_files(dataset_dir: DatasetDirs, phase: str, split: str) -> list[str]:
    return [p for d in split_dirs(dataset_dir, phase, split) for p in fs.listdir(d, recursive=True)
            if p.endswith(".parquet")]


def available_phases(dataset_dir: DatasetDirs) -> list[str]:
    return sorted({p.rsplit("phase=", 1)[1] for root in dataset_roots(dataset_dir) for sub in EXAMPLE_SUBDIRS
                   for p in fs.listdir(fs.join(root, sub)) if "phase=" in p})


def check_split(dataset_dir: DatasetDirs, phase: str, split: str) -> list[str]:
    """The split's parquet files; raises ``DatasetError`` naming paths and phase when there are none."""
    files = parquet_files(dataset_dir, phase, split)
    if not files:
        raise DatasetError(
            f"dataset {', '.join(dataset_roots(dataset_dir))}: no {split} examples for phase {phase!r} "
            f"(looked in {', '.join(split_dirs(dataset_dir, phase, split))}); "
            f"phases present: {available_phases(dataset_dir) or 'none'}"
        )
    return files


def read_examples(dataset_dir: DatasetDirs, phase: str, split: str) -> pa.Table:
    """All rows of one phase/split as an ``EXAMPLES_SCHEMA`` table (empty when absent)."""
    import pyarrow.dataset as pads

    files = parquet_files(dataset_dir, phase, split)
    if not files:
        return EXAMPLES_SCHEMA.empty_table()
    filesystem, _ = fs.resolve(dataset_roots(dataset_dir)[0])
    table = pads.dataset(files, format="parquet", filesystem=filesystem).to_table()
    return conform(table, EXAMPLES_SCHEMA, stage=f"finetune.read[{phase}/{split}]")


def is_holdout(example_id: str, fraction: float) -> bool:
    """Deterministic held-out membership (used when a phase has no validation split)."""
    h = int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def holdout_mask(ids: Sequence[str], fraction: float) -> np.ndarray:
    mask = np.array([is_holdout(i, fraction) for i in ids], dtype=bool)
    if len(ids) > 1 and not mask.any():  # tiny datasets: hold out at least one example
        mask[0] = True
    if mask.all():
        mask[-1] = False
    return mask


def assistant_spans(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Rendered conversation and the character spans of assistant replies (end marker included)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not text.startswith(upto) or not upto.startswith(prefix):
            # A template that rewrites earlier turns (e.g. drops reasoning): label the reply text only.
            start = text.find(m["content"], spans[-1][1] if spans else 0)
            if start < 0:
                continue
            spans.append((start, start + len(m["content"])))
            continue
        spans.append((len(prefix), len(upto)))
    return text, spans


def tokenize_messages(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], max_length: int
) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with labels = -100 outside assistant spans; None if nothing to learn."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for k, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(s <= a < e for s, e in spans):
            labels[k] = ids[k]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE for x in labels[1:]):  # causal LM shifts labels by one
        return None
    return ids, labels


def pack_rows(seqs: Sequence[tuple[list[int], list[int]]], max_length: int) -> list[tuple[list[int], list[int], int]]:
    """First-fit-decreasing bins of whole examples: (input_ids, labels, n_examples) per row."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(seqs[i][0])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_length - n)
    rows = []
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        for i in members:
            ids += seqs[i][0]
            labels += seqs[i][1]
        rows.append((ids, labels, len(members)))
    return rows


def token_table(rows: Sequence[tuple[list[int], list[int], int]]) -> pa.Table:
    return pa.table(
        {
            "input_ids": pa.array([r[0] for r in rows], pa.list_(pa.int32())),
            "labels": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
            "n_tokens": pa.array([len(r[0]) for r in rows], pa.int32()),
            "n_label_tokens": pa.array([sum(1 for x in r[1] if x != IGNORE) for r in rows], pa.int32()),
            "n_examples": pa.array([r[2] for r in rows], pa.int32()),
        },
        schema=TOKENS_SCHEMA,
    )


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


class TokenizeStage:
    """EXAMPLES_SCHEMA batch → TOKENS_SCHEMA batch; the tokenizer is loaded once per actor/process."""

    def __init__(self, tokenizer_path: str, max_length: int, packing: bool = True, trust_remote_code: bool = False):
        self.tokenizer = load_tokenizer(tokenizer_path, trust_remote_code)
        self.max_length = max_length
        self.packing = packing

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        table = conform(batch, EXAMPLES_SCHEMA, stage="finetune.tokenize")
        seqs = []
        for messages in table.column("messages").to_pylist():
            out = tokenize_messages(self.tokenizer, messages or [], self.max_length)
            if out is not None:
                seqs.append(out)
        if self.packing:
            rows = pack_rows(seqs, self.max_length)
        else:
            rows = [(ids, labels, 1) for ids, labels in sorted(seqs, key=lambda s: len(s[0]))]
        return token_table(rows)


def collate(batch: Mapping[str, Any], pad_id: int) -> dict[str, Any]:
    """Pad a numpy batch of token rows to its longest row: input_ids, labels, attention_mask tensors."""
    import torch

    ids = [np.asarray(x, dtype=np.int64) for x in batch["input_ids"]]
    labels = [np.asarray(x, dtype=np.int64) for x in batch["labels"]]
    n = max(len(x) for x in ids)
    out_ids = np.full((len(ids), n), pad_id, dtype=np.int64)
    out_labels = np.full((len(ids), n), IGNORE, dtype=np.int64)
    mask = np.zeros((len(ids), n), dtype=np.int64)
    for k, (a, b) in enumerate(zip(ids, labels)):
        out_ids[k, : len(a)] = a
        out_labels[k, : len(b)] = b
        mask[k, : len(a)] = 1
    return {
        "input_ids": torch.from_numpy(out_ids),
        "labels": torch.from_numpy(out_labels),
        "attention_mask": torch.from_numpy(mask),
    }


def iter_table_batches(table: pa.Table, batch_size: int, rank: int = 0, world_size: int = 1):
    """No-Ray sharding: rank's rows of ``table`` (equal counts on every rank) as numpy batches."""
    n = (table.num_rows // world_size) * world_size
    part = table.slice(0, n).take(pa.array(range(rank, n, world_size), pa.int64())) if world_size > 1 else table
    for start in range(0, part.num_rows, batch_size):
        chunk = part.slice(start, batch_size)
        yield {name: np.array(chunk.column(name).to_pylist(), dtype=object) for name in ("input_ids", "labels")}


def dataset_texts(table: pa.Table) -> list[str]:
    """Every message content of an examples table (tokenizer training text for the tiny model)."""
    return [m["content"] for msgs in table.column("messages").to_pylist() for m in (msgs or []) if m.get("content")]
