"""Fine-tuning data preparation, once: read + validate → split → tokenise (chat template) → pack.

Every runner uses these functions: the Ray job (``pipelines.finetune``, each step a Ray Data
stage through ``chipforge.stage.map_stage``), torchrun (``jobs.train_torchrun``) and
``bench/train.py`` (both through :func:`prepare_local`, the same steps on in-process tables).

1. **Read and validate** (:func:`read_validated`, one parquet file per call): every row of
   ``DIR/{examples,synthetic}/phase=<phase>/split={train,validation}/*.parquet`` is checked at
   the stage boundary (an id; a non-empty ``messages`` list of ``{role, content}`` records with
   roles system/user/assistant, string contents, at least one non-empty assistant reply). A bad
   row is kept as a ``status`` reason naming its file and row, never a crash; the report counts
   reasons (``rejected: {reason: n}``).
2. **Split** (:func:`plan_splits` on the small status columns, then :func:`select_split`):
   the phase's validation split when it has valid rows, else a deterministic held-out share
   (``validation_fraction``) of train chosen by a hash of each example id, never empty and never
   all of train when there are at least 2 valid examples.
3. **Tokenise** (:class:`TokenizeStage` / :func:`tokenize_examples`): the tokenizer's own chat
   template; only assistant spans are labels (every other token is -100). Spans are found by
   rendering the conversation prefix by prefix, so any template works (no ``{% generation %}``
   needed), and tokens map to spans through character offsets, so BPE merges at a boundary
   never shift a label. A conversation longer than ``max_length`` keeps its reply: when the
   prompt alone would fill the window, the prompt is cut from the left.
4. **Pack** (:func:`pack_rows`): whole examples into rows of at most ``max_length`` tokens
   (best-fit decreasing, linear after the sort), each row with its ``position_ids``, which
   restart at 0 with every example, and the first label of every example ignored, so that no
   example is predicted from, or attends to, the one before it. Without packing, rows are
   single examples sorted by length inside each batch (length bucketing).

For the loop, :func:`collate` lays a micro batch out for the attention kernel
(:func:`batch_layout`). Packed rows carry no attention mask: their per-example
``position_ids`` keep the examples apart. With ``flash_attention_2`` or ``torch_varlen`` the
micro batch is flattened into one unpadded row for the variable-length kernel (as Transformers'
``DataCollatorWithFlattening`` does); with ``sdpa``/``eager`` it stays one row per packed row
and Transformers builds a block-diagonal mask per row (flattening there would make the masked
attention quadratic in the whole micro batch). Unpacked rows are padded to the batch's longest
with an attention mask.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from chipforge import fs
from corpus.schema import EXAMPLES_SCHEMA, SchemaError, conform

IGNORE = -100
ROLES = ("system", "user", "assistant")

TOKENS_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),
        # positions restart at 0 with every example packed into the row
        pa.field("position_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("n_tokens", pa.int32()),
        pa.field("n_label_tokens", pa.int32()),
        pa.field("n_examples", pa.int32()),
    ]
)

# What the read/validate stage adds to each example row: ``status`` is "ok" or a reason.
CHECK_FIELDS = [
    pa.field("status", pa.string(), nullable=False),
    pa.field("detail", pa.string()),
    pa.field("source_file", pa.string(), nullable=False),
    pa.field("source_row", pa.int64(), nullable=False),
    pa.field("source_split", pa.string(), nullable=False),
    pa.field("holdout_key", pa.uint64(), nullable=False),
]
CHECKED_SCHEMA = pa.schema([*EXAMPLES_SCHEMA, *CHECK_FIELDS])
STATUS_COLUMNS = [f.name for f in CHECK_FIELDS]  # all the driver needs to plan the split


class DatasetError(ValueError):
    """The instruction dataset has no usable rows for a phase/split."""


# --------------------------------------------------------------------------- files

# Subdirectories of a dataset directory that hold example rows: the dataset job's and the synthesis job's.
EXAMPLE_SUBDIRS = ("examples", "synthetic")
SPLITS = ("train", "validation")
DatasetDirs = str | Sequence[str]


def dataset_roots(dataset_dir: DatasetDirs) -> list[str]:
    return [dataset_dir] if isinstance(dataset_dir, str) else list(dataset_dir)


def split_dirs(dataset_dir: DatasetDirs, phase: str, split: str) -> list[str]:
    """``ROOT/{examples,synthetic}/phase=<phase>/split=<split>`` for every root."""
    return [fs.join(root, sub, f"phase={phase}", f"split={split}")
            for root in dataset_roots(dataset_dir) for sub in EXAMPLE_SUBDIRS]


def parquet_files(dataset_dir: DatasetDirs, phase: str, split: str) -> list[str]:
    """The split's parquet files as openable paths (URIs keep their scheme)."""
    out = []
    for d in split_dirs(dataset_dir, phase, split):
        out += [p for p in fs.listdir(d, recursive=True) if p.endswith(".parquet")]
    return out


def available_phases(dataset_dir: DatasetDirs) -> list[str]:
    return sorted({p.rsplit("phase=", 1)[1] for root in dataset_roots(dataset_dir) for sub in EXAMPLE_SUBDIRS
                   for p in fs.listdir(fs.join(root, sub)) if "phase=" in p})


def check_split(dataset_dir: DatasetDirs, phase: str, split: str) -> list[str]:
    """The split's parquet files; raises ``DatasetError`` naming paths and phase when there are none."""
    files = parquet_files(dataset_dir, phase, split)
    if not files:
        others = [f for d in split_dirs(dataset_dir, phase, split) for f in fs.listdir(d, recursive=True, files_only=True)]
        unread = (f"; {len(others)} file(s) there are not Parquet (e.g. {others[0]}): the fine-tune reads only "
                  "*.parquet files with the dataset job's columns (id, messages)") if others else ""
        raise DatasetError(
            f"dataset {', '.join(dataset_roots(dataset_dir))}: no {split} examples for phase {phase!r} "
            f"(looked in {', '.join(split_dirs(dataset_dir, phase, split))}){unread}; "
            f"phases present: {available_phases(dataset_dir) or 'none'}"
        )
    return files


def example_files(dataset_dir: DatasetDirs, phase: str) -> list[dict[str, str]]:
    """``{path, split}`` of every parquet file of the phase (train and validation); train must exist."""
    check_split(dataset_dir, phase, "train")
    return [{"path": p, "split": s} for s in SPLITS for p in parquet_files(dataset_dir, phase, s)]


# --------------------------------------------------------------------------- 1. read + validate

def holdout_key(example_id: str) -> int:
    """A stable 64-bit hash of an example id: the held-out share is the smallest keys."""
    return int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:8], "big")


def is_holdout(example_id: str, fraction: float) -> bool:
    """Hash-based held-out membership (``plan_splits`` uses the same keys with an exact count)."""
    return holdout_key(example_id) / 2**64 < fraction


def check_example(example_id: Any, messages: Any) -> tuple[str, str] | None:
    """``(reason, detail)`` when a row cannot be trained on, else None."""
    if not isinstance(example_id, str) or not example_id:
        return "missing_id", "the id is missing or empty"
    if messages is None or isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        return "bad_messages", f"messages is {type(messages).__name__}, not a list of {{role, content}}"
    if not messages:
        return "empty_messages", "the messages list is empty"
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            return "bad_messages", f"message {i} is {type(m).__name__}, not a {{role, content}} record"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return "bad_role", f"message {i} has role {role!r} (expected one of {', '.join(ROLES)})"
        if role == "system" and i:
            return "bad_role", f"message {i} is a system message after the first message"
        if not isinstance(content, str):
            return "non_string_content", f"message {i} ({role}) content is {type(content).__name__}, not a string"
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    if not replies:
        return "no_assistant_turn", "no assistant message"
    if not any(r.strip() for r in replies):
        return "empty_assistant_reply", "every assistant message is empty"
    return None


def rejection(file: str, row: int, reason: str, detail: str | None) -> str:
    """The user-facing line for a rejected row: file, row, reason."""
    return f"{file} row {row}: {reason}" + (f" ({detail})" if detail else "")


def read_validated(path: str, split: str, phase: str) -> pa.Table:
    """One parquet file → ``CHECKED_SCHEMA`` rows: the examples plus a status per row.

    Valid rows keep their columns (``EXAMPLES_SCHEMA``); a rejected row keeps its id where it
    has one, an empty message list, and its reason in ``status``/``detail``.
    """
    import pyarrow.parquet as pq

    filesystem, inner = fs.resolve(path)
    raw = pq.read_table(inner, filesystem=filesystem)
    n = raw.num_rows
    ids = raw.column("id").to_pylist() if "id" in raw.column_names else [None] * n
    if "messages" not in raw.column_names:
        checks = [("bad_schema", f"no 'messages' column (columns: {raw.column_names})")] * n
    else:
        checks = [check_example(i, m) for i, m in zip(ids, raw.column("messages").to_pylist())]
    ok = np.array([c is None for c in checks], dtype=bool)
    good = raw.filter(pa.array(ok)).select([c for c in raw.column_names if c in EXAMPLES_SCHEMA.names])
    for name, value in (("phase", phase), ("split", split)):  # implied by the file's directory
        if name not in good.column_names:
            good = good.append_column(name, pa.array([value] * good.num_rows, pa.string()))
    try:
        good = conform(good, EXAMPLES_SCHEMA, stage=f"finetune.read[{path}]")
    except SchemaError as exc:  # a column of the wrong type: nothing in this file is usable
        checks = [c or ("bad_schema", str(exc)) for c in checks]
        ok[:] = False
        good = EXAMPLES_SCHEMA.empty_table()
    bad_rows = [i for i in range(n) if not ok[i]]
    bad = pa.Table.from_pydict({
        "id": [ids[i] if isinstance(ids[i], str) else "" for i in bad_rows],
        "phase": [phase] * len(bad_rows),
        "messages": [[] for _ in bad_rows],
        "split": [split] * len(bad_rows),
    }, schema=pa.schema([EXAMPLES_SCHEMA.field(c) for c in ("id", "phase", "messages", "split")]))
    bad = conform(bad, EXAMPLES_SCHEMA, stage="finetune.read")
    good_rows = [i for i in range(n) if ok[i]]
    rows = good_rows + bad_rows
    examples = pa.concat_tables([good, bad])
    extra = {
        "status": ["ok"] * len(good_rows) + [checks[i][0] for i in bad_rows],
        "detail": [None] * len(good_rows) + [checks[i][1] for i in bad_rows],
        "source_file": [path] * n,
        "source_row": rows,
        "source_split": [split] * n,
        "holdout_key": [holdout_key(i) if isinstance(i, str) else 0 for i in examples.column("id").to_pylist()],
    }
    for f in CHECK_FIELDS:
        examples = examples.append_column(f, pa.array(extra[f.name], f.type))
    return examples


def read_files(batch: pa.Table, *, phase: str) -> pa.Table:
    """Ray Data stage (``map_stage``, one file per batch): ``{path, split}`` rows → ``CHECKED_SCHEMA`` rows."""
    tables = [read_validated(p, s, phase) for p, s in zip(batch.column("path").to_pylist(),
                                                         batch.column("split").to_pylist())]
    return pa.concat_tables(tables) if tables else CHECKED_SCHEMA.empty_table()


def read_local(dataset_dir: DatasetDirs, phase: str) -> pa.Table:
    """Every file of the phase read and validated in this process (``CHECKED_SCHEMA``)."""
    tables = [read_validated(f["path"], f["split"], phase) for f in example_files(dataset_dir, phase)]
    return pa.concat_tables(tables) if tables else CHECKED_SCHEMA.empty_table()


# --------------------------------------------------------------------------- 2. split

@dataclass
class SplitPlan:
    """Which valid examples train and which evaluate, and what was rejected (for the report)."""

    read: int
    train: int  # valid examples that train
    validation: int  # valid examples that evaluate
    validation_from: str  # "validation split" or "held out N% of train (no validation split)"
    threshold: int | None = None  # held out: train rows with holdout_key <= threshold
    rejected: dict[str, int] = field(default_factory=dict)
    rejected_examples: list[str] = field(default_factory=list)  # the first few, with file and row

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_splits(status: pa.Table, fraction: float, *, max_messages: int = 10) -> SplitPlan:
    """The split from the status columns of every row (``STATUS_COLUMNS``; the examples are not needed).

    The phase's validation split evaluates when it has a valid row; otherwise the
    ``round(fraction * n)`` valid train examples with the smallest id hashes do, at least one
    and at most ``n - 1`` (so neither side is empty when there are 2 or more).
    """
    statuses = status.column("status").to_pylist()
    ok = pc.equal(status.column("status"), "ok")
    is_val = pc.equal(status.column("source_split"), "validation")
    n_val = int(pc.sum(pc.and_(ok, is_val).cast(pa.int64())).as_py() or 0)
    train_keys = status.filter(pc.and_(ok, pc.invert(is_val))).column("holdout_key").to_numpy()
    rejected = Counter(s for s in statuses if s != "ok")
    bad = status.filter(pc.invert(ok)).slice(0, max_messages).to_pylist()
    messages = [rejection(r["source_file"], r["source_row"], r["status"], r["detail"]) for r in bad]
    common = {"read": status.num_rows, "rejected": dict(sorted(rejected.items())), "rejected_examples": messages}
    n = len(train_keys)
    if n_val:
        return SplitPlan(train=n, validation=n_val, validation_from="validation split", **common)
    if n < 2:
        return SplitPlan(train=n, validation=0, validation_from="none (fewer than 2 valid examples)", **common)
    k = min(max(1, round(fraction * n)), n - 1)
    keys = np.sort(train_keys)
    threshold = int(keys[k - 1])
    held = int((train_keys <= threshold).sum())
    if held >= n:  # every id hashes alike (duplicated ids): nothing left to train on
        raise DatasetError(f"{n} valid train examples share one id: cannot hold out a validation share")
    return SplitPlan(train=n - held, validation=held, threshold=threshold,
                     validation_from=f"held out {held} of {n} train examples (no validation split)", **common)


def select_split(batch: pa.Table, *, split: str, threshold: int | None) -> pa.Table:
    """Ray Data stage / plain function: the valid examples of one side of the plan (``EXAMPLES_SCHEMA``).

    ``threshold`` None: train = the train split, validation = the validation split; otherwise
    both come from the train split, divided at ``threshold`` of ``holdout_key``.
    """
    ok = pc.equal(batch.column("status"), "ok")
    from_train = pc.equal(batch.column("source_split"), "train")
    if threshold is None:
        keep = pc.and_(ok, from_train if split == "train" else pc.invert(from_train))
    else:
        held = pc.less_equal(batch.column("holdout_key"), pa.scalar(threshold, pa.uint64()))
        keep = pc.and_(pc.and_(ok, from_train), pc.invert(held) if split == "train" else held)
    return batch.filter(keep).select(EXAMPLES_SCHEMA.names)


def tokenizer_texts(examples: pa.Table | Sequence[Mapping[str, Any]], limit: int = 20000) -> list[str]:
    """Message contents of (up to ``limit``) examples: the tiny model's tokenizer is trained on them."""
    rows = examples.column("messages").to_pylist() if isinstance(examples, pa.Table) else \
        [r["messages"] for r in examples]
    return [m["content"] for msgs in rows[:limit] for m in (msgs or []) if m.get("content")]


# --------------------------------------------------------------------------- 3. tokenise + 4. pack

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


def special_token_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex of the tokenizer's special tokens (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ...), longest
    first; None when it has none."""
    names = sorted({t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                    if getattr(t, "special", False) and t.content}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, names))) if names else None


def literal_spans(tokenizer: Any, text: str, messages: Sequence[Mapping[str, str]]) -> list[tuple[int, int]]:
    """Character spans of ``text`` (the rendered conversation) where a message's *content* spells a
    special token: corpus text such as a comment holding ``<|im_end|>`` or ``</s>``.

    Tokenised as usual, that text would become the real token: a fake end of turn or role header in
    the prompt (the model is trained on a conversation nobody wrote), or, in a reply, a label that
    teaches the model to stop mid-answer. The content's place in ``text`` comes from rendering the
    conversation with a unique placeholder per content (the template's own special tokens stay
    outside every content); a template that rewrites contents falls back to finding each content in
    turn. Empty (the common case) when no content holds a special token."""
    pattern = special_token_pattern(tokenizer)
    if pattern is None or not any(pattern.search(m["content"]) for m in messages):
        return []
    marks = [f"\x00chipforge-content-{i}\x00" for i in range(len(messages))]
    skeleton = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": mark} for m, mark in zip(messages, marks)], tokenize=False)
    where: list[tuple[int, int]] = []  # (start of the content in text, message index)
    rebuilt, pos = [], 0
    for part in re.split("(" + "|".join(map(re.escape, marks)) + ")", skeleton):
        if part in marks:
            i = marks.index(part)
            where.append((pos, i))
            part = messages[i]["content"]
        rebuilt.append(part)
        pos += len(part)
    if "".join(rebuilt) != text or len(where) != len(messages):  # the template changes contents
        where, cursor = [], 0
        for i, m in enumerate(messages):
            at = text.find(m["content"], cursor) if m["content"] else -1
            if at >= 0:
                where.append((at, i))
                cursor = at + len(m["content"])
    return sorted((at + x.start(), at + x.end()) for at, i in where for x in pattern.finditer(messages[i]["content"]))


def encode_text(tokenizer: Any, text: str, literal: Sequence[tuple[int, int]] = ()) -> tuple[list[int], list[tuple[int, int]]]:
    """(token ids, character offsets) of ``text``; the ``literal`` spans are encoded as plain text
    (``split_special_tokens``), everything else as the tokenizer does (the template's special tokens)."""
    if not literal:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    pos = 0
    for a, b in [*literal, (len(text), len(text))]:
        for start, end, plain in ((pos, a, False), (a, b, True)):
            if end > start:
                enc = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True,
                                split_special_tokens=plain)
                ids += enc["input_ids"]
                offsets += [(s + start, e + start) for s, e in enc["offset_mapping"]]
        pos = b
    return ids, offsets


def tokenize_messages(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], max_length: int
) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with labels = -100 outside assistant spans; None if nothing to learn.

    At most ``max_length`` tokens: the end is cut, unless that would leave no reply token, in
    which case the prompt is cut from the left so the reply starts half way through the window.
    """
    text, spans = assistant_spans(tokenizer, messages)
    ids, offsets = encode_text(tokenizer, text, literal_spans(tokenizer, text, messages))
    labels = [IGNORE] * len(ids)
    for k, (a, b) in enumerate(offsets):
        if b > a and any(s <= a < e for s, e in spans):
            labels[k] = ids[k]
    first = next((k for k in range(1, len(labels)) if labels[k] != IGNORE), None)  # causal LM: shift by one
    if first is None:
        return None
    start = 0
    if first >= max_length:
        start = min(first - max_length // 2, len(ids) - max_length)
    return ids[start : start + max_length], labels[start : start + max_length]


Row = tuple[list[int], list[int], list[int], int]  # input_ids, labels, position_ids, n_examples


def pack_rows(seqs: Sequence[tuple[list[int], list[int]]], max_length: int) -> list[Row]:
    """Best-fit-decreasing bins of whole examples: (input_ids, labels, position_ids, n_examples) per row.

    Each example goes to the fullest row it still fits in. Rows are found by their free space
    (one bucket per free-space value and a bit set of the non-empty buckets), so each example
    costs a few big-integer operations whatever the number of rows: linear after the sort. In a
    row, positions restart at 0 and the first label is ignored for every example (a causal LM
    would otherwise learn to predict an example's first token from the previous example).
    The cyclic garbage collector is paused meanwhile: the rows are millions of new lists (no
    cycles), and its full passes over them made packing superlinear (x3 per example at 1M).
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        return _pack_rows(seqs, max_length)
    finally:
        if paused:
            gc.enable()


def _pack_rows(seqs: Sequence[tuple[list[int], list[int]]], max_length: int) -> list[Row]:
    lengths = np.fromiter((len(s[0]) for s in seqs), dtype=np.int64, count=len(seqs))
    if len(lengths) and lengths.max() > max_length:
        raise ValueError(f"an example of {int(lengths.max())} tokens exceeds max_length {max_length}")
    order = np.argsort(-lengths, kind="stable")
    members: list[list[int]] = []
    buckets: list[list[int]] = [[] for _ in range(max_length + 1)]  # free space -> rows with it
    free_bits = 0  # bit c set: some row has exactly c tokens free
    for i in order.tolist():
        n = int(lengths[i])
        fits = free_bits >> n
        if fits:
            c = n + (fits & -fits).bit_length() - 1  # least free space that still fits
            b = buckets[c].pop()
            if not buckets[c]:
                free_bits &= ~(1 << c)
            members[b].append(i)
        else:
            b, c = len(members), max_length
            members.append([i])
        left = c - n
        if left:
            buckets[left].append(b)
            free_bits |= 1 << left
    ranges: dict[int, list[int]] = {}  # one position list per length, shared: no new ints per row
    rows: list[Row] = []
    for row in members:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in row:
            a, lab = seqs[i]
            labels += lab
            labels[len(ids)] = IGNORE
            ids += a
            n = len(a)
            positions += ranges[n] if n in ranges else ranges.setdefault(n, list(range(n)))
        rows.append((ids, labels, positions, len(row)))
    return rows


def single_rows(seqs: Sequence[tuple[list[int], list[int]]]) -> list[Row]:
    """Unpacked rows (one example each), sorted by length (length bucketing)."""
    return [(ids, labels, list(range(len(ids))), 1) for ids, labels in sorted(seqs, key=lambda s: len(s[0]))]


def token_table(rows: Sequence[Row]) -> pa.Table:
    return pa.table(
        {
            "input_ids": pa.array([r[0] for r in rows], pa.list_(pa.int32())),
            "labels": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
            "position_ids": pa.array([r[2] for r in rows], pa.list_(pa.int32())),
            "n_tokens": pa.array([len(r[0]) for r in rows], pa.int32()),
            "n_label_tokens": pa.array([sum(1 for x in r[1] if x != IGNORE) for r in rows], pa.int32()),
            "n_examples": pa.array([r[3] for r in rows], pa.int32()),
        },
        schema=TOKENS_SCHEMA,
    )


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def hub_offline() -> bool:
    """Whether Hugging Face downloads are off (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``, as the hub reads them)."""
    from huggingface_hub import constants

    truthy = {"1", "on", "yes", "true"}
    return bool(constants.HF_HUB_OFFLINE) or any(os.environ.get(v, "").strip().lower() in truthy
                                                 for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def base_model_problem(base_model: str, trust_remote_code: bool = False) -> str | None:
    """Why the workers could not load ``base_model`` (None when they can), checked before Ray starts.

    Resolved as training resolves it (``AutoConfig``/:func:`load_tokenizer` on the same string): a
    local directory needs config.json, a tokenizer and weights; a Hugging Face id needs its config
    and tokenizer, from the local cache when downloads are off (``HF_HUB_OFFLINE=1``, which then
    also needs its weights there) or from the hub (only those small files: training fetches the
    weights). ``tiny`` is built in-process and needs nothing.
    """
    from training.config import TINY

    if base_model == TINY:
        return None
    name = f"base_model {base_model!r}"
    use_local = ("use a local directory holding config.json, the tokenizer files and the weights, "
                 "or base_model=tiny for a random tiny model built in-process")
    if fs.is_uri(base_model):
        return (f"{name}: training loads the base model from a local directory or the Hugging Face Hub, not "
                f"object storage; copy it to the same local path on every node, or {use_local}")
    path = os.path.expanduser(base_model)
    is_path = base_model.startswith(("/", ".", "~")) or base_model.count("/") > 1 or os.path.exists(path)
    if is_path:
        if not os.path.isdir(path):
            return f"{name} is not a directory (a local base model is a directory; or give a Hugging Face id)"
        files = set(os.listdir(path))
        missing = [what for what, names in (("config.json", ("config.json",)), ("a tokenizer", TOKENIZER_FILES),
                                            ("weights", WEIGHT_FILES)) if not files.intersection(names)]
        if missing:
            return (f"{name}: the directory lacks {', '.join(missing)} (a base model directory is what "
                    "save_pretrained writes for the model and its tokenizer)")
    offline = hub_offline()
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
        load_tokenizer(base_model, trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - OSError/ValueError/HTTP errors: one line naming the field
        if is_path:
            return f"{name}: its config or tokenizer cannot be loaded: {_first_line(exc)}"
        if offline:
            return (f"{name} is not in the local Hugging Face cache ({_hub_cache()}) and downloads are off "
                    f"(HF_HUB_OFFLINE=1): download it first (`hf download {base_model}` where there is network, "
                    f"with the same HF_HOME), set HF_HOME to a cache that holds it, or {use_local}")
        return (f"{name} cannot be loaded from the Hugging Face Hub: {_first_line(exc)} (check the id; a gated "
                f"model needs HF_TOKEN or `hf auth login`; or {use_local})")
    if offline and not is_path and not _weights_cached(base_model):
        return (f"{name}: its config and tokenizer are in the local Hugging Face cache ({_hub_cache()}) but not its "
                f"weights ({' or '.join(WEIGHT_FILES)}), and downloads are off (HF_HUB_OFFLINE=1): download it "
                f"(`hf download {base_model}`), set HF_HOME to a cache that holds it, or {use_local}")
    return None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _weights_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in WEIGHT_FILES)


class TokenizeStage:
    """EXAMPLES_SCHEMA batch → TOKENS_SCHEMA batch; the tokenizer is loaded once per instance."""

    name = "tokenize"
    input_columns = ("messages",)
    output_schema = TOKENS_SCHEMA

    def __init__(self, tokenizer_path: str, max_length: int, packing: bool = True, trust_remote_code: bool = False,
                 row_tokens: int | None = None):
        self.tokenizer = load_tokenizer(tokenizer_path, trust_remote_code)
        self.max_length = max_length  # per example
        self.row_tokens = row_tokens or max_length  # per packed row (a token-budget micro batch when larger)
        self.packing = packing

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        table = conform(table.select(EXAMPLES_SCHEMA.names), EXAMPLES_SCHEMA, stage="finetune.tokenize")
        seqs = []
        for messages in table.column("messages").to_pylist():
            out = tokenize_messages(self.tokenizer, messages or [], self.max_length)
            if out is not None:
                seqs.append(out)
        return token_table(pack_rows(seqs, self.row_tokens) if self.packing else single_rows(seqs))


@functools.lru_cache(maxsize=4)
def _stage(tokenizer_path: str, max_length: int, packing: bool, trust_remote_code: bool,
           row_tokens: int | None) -> TokenizeStage:
    return TokenizeStage(tokenizer_path, max_length, packing, trust_remote_code, row_tokens)


def tokenize_examples(batch: pa.Table, *, tokenizer_path: str, max_length: int, packing: bool = True,
                      trust_remote_code: bool = False, row_tokens: int | None = None) -> pa.Table:
    """Ray Data stage (tasks): :class:`TokenizeStage` with its tokenizer loaded once per worker process."""
    return _stage(tokenizer_path, max_length, packing, trust_remote_code, row_tokens)(batch)


def token_counts(tokens: pa.Table) -> dict[str, int]:
    """Rows, examples, tokens and label tokens of a ``TOKENS_SCHEMA`` table."""
    def total(name: str) -> int:
        return int(pc.sum(tokens.column(name)).as_py() or 0) if tokens.num_rows else 0

    return {"rows": tokens.num_rows, "examples": total("n_examples"), "tokens": total("n_tokens"),
            "label_tokens": total("n_label_tokens")}


# --------------------------------------------------------------------------- all steps, in process

@dataclass
class Prepared:
    """Token rows of both sides, the base model path and the facts the report needs."""

    train: pa.Table
    validation: pa.Table
    base_path: str
    plan: SplitPlan
    info: dict[str, Any]


def prepare_local(cfg: Any, *, is_builder: bool = True, wait: Callable[[], None] | None = None) -> Prepared:
    """Every step in this process (torchrun, bench): the same functions the Ray job runs as stages.

    With several processes (torchrun ranks), every rank prepares the same tables; only the one
    with ``is_builder`` builds a ``tiny`` base model, the others ``wait()`` for it first.
    """
    from training.model import prepare_base

    checked = read_local(cfg.dataset_dirs(), cfg.phase)
    plan = plan_splits(checked.select(STATUS_COLUMNS), cfg.validation_fraction)
    check_plan(plan, cfg)
    train = select_split(checked, split="train", threshold=plan.threshold)
    if cfg.max_train_examples:
        train = train.slice(0, cfg.max_train_examples)
    evals = select_split(checked, split="validation", threshold=plan.threshold)
    texts = tokenizer_texts(train)
    if is_builder:
        base_path = prepare_base(cfg, texts)
    if wait is not None:
        wait()
    if not is_builder:
        base_path = prepare_base(cfg, texts)
    stage = TokenizeStage(base_path, cfg.max_length, cfg.packing, cfg.trust_remote_code, cfg.row_tokens())
    size = cfg.tokenize.batch_size or 256
    sides = {}
    for name, table in (("train", train), ("validation", evals)):
        parts = [stage(table.slice(i, size)) for i in range(0, table.num_rows, size)]
        sides[name] = pa.concat_tables(parts) if parts else TOKENS_SCHEMA.empty_table()
    info = split_info(plan, train.num_rows, token_counts(sides["train"]), token_counts(sides["validation"]))
    return Prepared(sides["train"], sides["validation"], base_path, plan, info)


def check_plan(plan: SplitPlan, cfg: Any) -> None:
    """Raise ``DatasetError`` when the plan cannot train (some valid rows, but too few for two sides)."""
    if plan.train and not plan.validation:
        raise DatasetError(
            f"dataset {', '.join(dataset_roots(cfg.dataset_dirs()))}, phase {cfg.phase!r}: only {plan.train} valid "
            f"example(s) and no validation split; at least 2 are needed (one to train on, one to evaluate)")


def split_info(plan: SplitPlan, train_examples: int, train: dict[str, int], validation: dict[str, int]) -> dict[str, Any]:
    """The report's ``examples``/``rejected``/``rows`` section (same on every runner)."""
    return {
        "examples": {"read": plan.read, "valid": plan.read - sum(plan.rejected.values()),
                     "train": train_examples, "validation": plan.validation,
                     "validation_from": plan.validation_from,
                     "dropped_in_tokenisation": (train_examples - train["examples"])
                     + (plan.validation - validation["examples"])},
        "rejected": plan.rejected,
        "rejected_examples": plan.rejected_examples,
        "train_rows": train["rows"], "eval_rows": validation["rows"],
        "tokens": {"train": train["tokens"], "validation": validation["tokens"],
                   "train_labels": train["label_tokens"]},
    }


# --------------------------------------------------------------------------- batches for the loop

LAYOUTS = ("padded", "rows", "flat")


def batch_layout(packing: bool, attn_implementation: str) -> str:
    """How :func:`collate` lays out a micro batch for this training config.

    Packed rows are flattened into one row only for a variable-length kernel
    (``flash_attention_*``, ``torch_varlen``), which attends within each example and nowhere else. Any other
    attention (``sdpa``, ``eager``) computes the whole square of its sequence under a mask, so
    flattening ``b`` rows of ``L`` tokens would cost ``b`` times the attention of ``b`` rows of
    ``L`` (and a mask of ``(b·L)²``): those keep one row per packed row (``"rows"``).
    """
    from training.attention import NAME as TORCH_VARLEN

    if not packing:
        return "padded"
    varlen = attn_implementation.startswith("flash_attention") or attn_implementation == TORCH_VARLEN
    return "flat" if varlen else "rows"


def collate(batch: Mapping[str, Any], pad_id: int, *, layout: str = "padded") -> dict[str, Any]:
    """Model inputs (torch tensors) for a numpy batch of token rows, in one of three layouts.

    - ``"flat"``: the rows concatenated into ONE row (shape ``1 x total tokens``) with their
      ``position_ids`` (restarting at 0 with every example; a row without them counts as one
      example) and no attention mask: nothing is padded, and Transformers keeps the examples
      apart from the position ids (the variable-length flash-attention kernel). The first label
      of each row is ignored.
    - ``"rows"``: packed rows padded to the longest, with their ``position_ids`` and no attention
      mask; the padding is a block of its own (positions from 0, labels ignored), so Transformers
      builds a block-diagonal mask per row from the position ids (``sdpa``, ``eager``).
    - ``"padded"``: rows (one example each) padded to the longest, with an ``attention_mask``.
    """
    import torch

    if layout not in LAYOUTS:
        raise ValueError(f"collate layout {layout!r}: expected one of {LAYOUTS}")
    ids = [np.asarray(x, dtype=np.int64) for x in batch["input_ids"]]
    labels = [np.asarray(x, dtype=np.int64) for x in batch["labels"]]
    positions = batch.get("position_ids") if layout != "padded" else None
    pos = [np.asarray(p, dtype=np.int64) for p in positions] if positions is not None else [
        np.arange(len(a), dtype=np.int64) for a in ids]
    if layout == "flat":
        flat_labels = np.concatenate(labels)
        starts = np.cumsum([0] + [len(a) for a in ids[:-1]])
        flat_labels[starts] = IGNORE
        return {
            "input_ids": torch.from_numpy(np.concatenate(ids))[None],
            "labels": torch.from_numpy(flat_labels)[None],
            "position_ids": torch.from_numpy(np.concatenate(pos))[None],
        }
    n = max(len(x) for x in ids)
    out_ids = np.full((len(ids), n), pad_id, dtype=np.int64)
    out_labels = np.full((len(ids), n), IGNORE, dtype=np.int64)
    extra = np.zeros((len(ids), n), dtype=np.int64)  # "rows": position ids; "padded": the attention mask
    for k, (a, b) in enumerate(zip(ids, labels)):
        out_ids[k, : len(a)] = a
        out_labels[k, : len(b)] = b
        if layout == "rows":
            extra[k, : len(a)] = pos[k]
            extra[k, len(a):] = np.arange(n - len(a))  # the padding: a block of its own
        else:
            extra[k, : len(a)] = 1
    return {
        "input_ids": torch.from_numpy(out_ids),
        "labels": torch.from_numpy(out_labels),
        "position_ids" if layout == "rows" else "attention_mask": torch.from_numpy(extra),
    }


def batch_tokens(batch: Mapping[str, Any]) -> int:
    """Real (unpadded) tokens in a numpy batch of token rows."""
    return int(sum(len(x) for x in batch["input_ids"]))


def iter_table_batches(table: pa.Table, batch_size: int, rank: int = 0, world_size: int = 1):
    """No-Ray sharding: rank's rows of ``table`` (equal counts on every rank) as numpy batches."""
    n = (table.num_rows // world_size) * world_size
    part = table.slice(0, n).take(pa.array(range(rank, n, world_size), pa.int64())) if world_size > 1 else table
    for start in range(0, part.num_rows, batch_size):
        chunk = part.slice(start, batch_size)
        yield {name: np.array(chunk.column(name).to_pylist(), dtype=object)
               for name in ("input_ids", "labels", "position_ids") if name in chunk.schema.names}


def worker_path(path: str) -> str:
    """A local path as Ray workers should see it: relative to the driver's cwd when below it
    (the working directory every node gets under ``ray job submit --working-dir .``)."""
    if fs.is_uri(path) or path.startswith("file://"):
        return path
    full = os.path.abspath(os.path.expanduser(path))
    cwd = os.getcwd().rstrip(os.sep) + os.sep
    return os.path.relpath(full) if full.startswith(cwd) else full
