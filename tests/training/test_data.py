from __future__ import annotations

import pyarrow as pa
import pytest

from corpus.schema import EXAMPLES_SCHEMA, from_rows
from tests.training._data import example, rows, write_dataset
from training.data import (
    available_phases,
    IGNORE,
    TOKENS_SCHEMA,
    DatasetError,
    TokenizeStage,
    check_split,
    collate,
    holdout_mask,
    iter_table_batches,
    pack_rows,
    read_examples,
    tokenize_messages,
)

MSGS = [
    {"role": "system", "content": "You write Verilog."},
    {"role": "user", "content": "Write a 4-bit register named reg_9."},
    {"role": "assistant", "content": "module reg_9 (input wire clk); endmodule"},
]


def labelled_text(tok, ids, labels) -> str:
    return tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE])


def test_prompt_tokens_are_masked_and_assistant_tokens_are_labels(tokenizer):
    ids, labels = tokenize_messages(tokenizer, MSGS, max_length=512)
    assert len(ids) == len(labels)
    text = labelled_text(tokenizer, ids, labels)
    assert text == "module reg_9 (input wire clk); endmodule<|end|>\n</s>"
    prompt_len = len(tokenizer.apply_chat_template(MSGS[:2], tokenize=False, add_generation_prompt=True))
    n_prompt = len(tokenizer(tokenizer.apply_chat_template(MSGS[:2], tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"])
    assert prompt_len > 0 and all(lab == IGNORE for lab in labels[:n_prompt])
    assert all(lab == i for i, lab in zip(ids[n_prompt:], labels[n_prompt:]))


def test_multi_turn_labels_every_assistant_turn(tokenizer):
    msgs = [MSGS[1], {"role": "assistant", "content": "first answer"}, {"role": "user", "content": "again"},
            {"role": "assistant", "content": "second answer"}]
    ids, labels = tokenize_messages(tokenizer, msgs, 512)
    text = labelled_text(tokenizer, ids, labels)
    assert "first answer" in text and "second answer" in text and "again" not in text


def test_template_without_generation_blocks(tokenizer):
    """Hub templates (e.g. ChatML) have no {% generation %}: spans come from prefix rendering."""
    chatml = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    import copy

    t = copy.deepcopy(tokenizer)
    t.chat_template = chatml
    ids, labels = tokenize_messages(t, MSGS, 512)
    assert labelled_text(t, ids, labels) == "module reg_9 (input wire clk); endmodule<|end|>"


def test_truncation_and_examples_without_assistant_tokens(tokenizer):
    prompt = tokenizer.apply_chat_template(MSGS[:2], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids, labels = tokenize_messages(tokenizer, MSGS, max_length=n_prompt + 4)
    assert len(ids) == n_prompt + 4 and sum(lab != IGNORE for lab in labels) == 4
    assert tokenize_messages(tokenizer, MSGS, max_length=n_prompt) is None  # only prompt tokens left
    assert tokenize_messages(tokenizer, MSGS[:2], max_length=512) is None


def test_pack_rows_keeps_every_example_whole_and_within_max_length():
    seqs = [([k] * n, [k] * n) for k, n in enumerate([5, 9, 3, 7, 2, 6, 10])]
    rows_ = pack_rows(seqs, max_length=12)
    assert all(len(ids) <= 12 for ids, _, _ in rows_)
    assert sum(n for _, _, n in rows_) == len(seqs)
    assert sorted(x for ids, _, _ in rows_ for x in ids) == sorted(x for ids, _ in seqs for x in ids)
    assert len(rows_) == 4  # 42 tokens need at least 4 rows of 12


def test_tokenize_stage_packs_and_buckets(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    table = from_rows(rows(n_train=10, n_val=0), EXAMPLES_SCHEMA, stage="test")
    packed = TokenizeStage(str(tmp_path / "tok"), max_length=256, packing=True)(table)
    assert packed.schema == TOKENS_SCHEMA
    assert sum(packed.column("n_examples").to_pylist()) == 10
    assert packed.num_rows < 10 and max(packed.column("n_tokens").to_pylist()) <= 256
    single = TokenizeStage(str(tmp_path / "tok"), max_length=256, packing=False)(table)
    lengths = single.column("n_tokens").to_pylist()
    assert single.num_rows == 10 and lengths == sorted(lengths)
    assert sum(lengths) == sum(packed.column("n_tokens").to_pylist())


def test_collate_pads_with_ignore_labels_and_mask():
    b = collate({"input_ids": [[1, 2, 3], [4]], "labels": [[-100, 2, 3], [4]]}, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_iter_table_batches_gives_equal_disjoint_shards():
    table = pa.table({"input_ids": [[i] for i in range(7)], "labels": [[i] for i in range(7)]})
    shards = [[x[0] for b in iter_table_batches(table, 2, r, 2) for x in b["input_ids"]] for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3 and not set(shards[0]) & set(shards[1])


def test_read_and_missing_split_errors_name_path_and_phase(tmp_path):
    root = write_dataset(tmp_path / "ds", rows(n_train=4, n_val=2) + [example("routing", "train", "q", "a")])
    assert read_examples(str(root), "rtl_design", "validation").num_rows == 2
    assert read_examples(str(root), "placement", "train").num_rows == 0
    with pytest.raises(DatasetError) as err:
        check_split(str(root), "placement", "train")
    msg = str(err.value)
    assert str(root) in msg and "'placement'" in msg and "rtl_design" in msg and "routing" in msg


def test_examples_and_synthetic_dirs_merge(tmp_path):
    real = write_dataset(tmp_path / "ds", rows(n_train=4, n_val=2))
    synth = [dict(r, source="synthetic") for r in rows("routing", n_train=3, n_val=1)]
    write_dataset(tmp_path / "synth", synth, subdir="synthetic")
    write_dataset(real, [example("routing", "train", "real routing q", "a")])
    both = [str(real), str(tmp_path / "synth")]
    got = read_examples(both, "routing", "train")
    assert got.num_rows == 4 and sorted(got.column("source").to_pylist()).count("synthetic") == 3
    assert read_examples(str(real), "routing", "train").num_rows == 1
    assert read_examples(both, "rtl_design", "validation").num_rows == 2
    assert available_phases(both) == ["routing", "rtl_design"]
    with pytest.raises(DatasetError, match="synthetic/phase=placement/split=train"):
        check_split(both, "placement", "train")


def test_holdout_is_deterministic_and_never_empty():
    ids = [f"id{i}" for i in range(50)]
    m1, m2 = holdout_mask(ids, 0.2), holdout_mask(ids, 0.2)
    assert (m1 == m2).all() and 0 < m1.sum() < 50
    assert holdout_mask(["a", "b"], 0.01).sum() == 1
