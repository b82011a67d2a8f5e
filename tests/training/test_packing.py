"""Packed rows train exactly like their examples alone, and activation checkpointing changes nothing
but memory (tiny random Llama on CPU, fp32)."""

from __future__ import annotations

import pytest

from tests.training._data import packing_examples as _examples
from training.data import IGNORE, collate, pack_rows


def _model(tokenizer, attn: str):
    from training.tiny import build_tiny_llama

    model = build_tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=4)
    model.config.use_cache = False
    model.set_attn_implementation(attn)
    return model.eval()


def _nll_sum(model, batch) -> float:
    """Token-summed NLL of ``batch``: Transformers' mean loss times the label tokens it averages over."""
    import torch

    with torch.no_grad():
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        return float(model(**batch).loss) * n


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_loss_equals_the_sum_of_its_examples_alone(tokenizer, attn):
    import torch

    seqs = _examples(tokenizer)
    model = _model(tokenizer, attn)
    packed = pack_rows(seqs, max_length=sum(len(ids) for ids, _ in seqs))
    assert len(packed) == 1 and packed[0][3] == len(seqs)  # one row holding every example
    ids, labels, positions, _ = packed[0]
    batch = collate({"input_ids": [ids], "labels": [labels], "position_ids": [positions]}, pad_id=0, layout="flat")
    alone = 0.0
    for ex_ids, ex_labels in seqs:
        lab = [IGNORE, *ex_labels[1:]]
        alone += _nll_sum(model, {"input_ids": torch.tensor([ex_ids]), "labels": torch.tensor([lab])})
    got = _nll_sum(model, batch)
    assert got == pytest.approx(alone, rel=1e-4)
    # the control: the same row read as ONE sequence (examples attending to the ones before) differs
    leaky = dict(batch, position_ids=torch.arange(len(ids))[None])
    assert abs(_nll_sum(model, leaky) - alone) > 1e-3 * abs(alone)


@pytest.mark.parametrize("layout,attn", [("flat", "sdpa"), ("rows", "sdpa"), ("rows", "eager")])
def test_packed_micro_batch_equals_its_rows_alone(tokenizer, layout, attn):
    """Packed rows of different lengths in one micro batch, flattened into one row or kept as padded
    rows with their position ids: the same loss as each row on its own (the padding attends to and
    is attended by nothing, and is never a label)."""
    seqs = _examples(tokenizer, 6)
    packed = [pack_rows(part, max_length=sum(len(ids) for ids, _ in part))[0] for part in (seqs[:3], seqs[3:])]
    assert [r[3] for r in packed] == [3, 3]  # two rows of three examples each
    assert len({len(r[0]) for r in packed}) == 2  # rows of different lengths: padding
    model = _model(tokenizer, attn)
    cols = {"input_ids": [r[0] for r in packed], "labels": [r[1] for r in packed],
            "position_ids": [r[2] for r in packed]}
    batch = collate(cols, pad_id=0, layout=layout)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == (1 if layout == "flat" else len(packed))
    together = _nll_sum(model, batch)
    apart = sum(_nll_sum(model, collate({k: [v[i]] for k, v in cols.items()}, pad_id=0, layout=layout))
                for i in range(len(packed)))
    assert together == pytest.approx(apart, rel=1e-4)
    # the control: the same rows with plain positions (each row read as one sequence) differ
    import torch

    plain = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]))
    assert abs(_nll_sum(model, plain) - apart) > 1e-3 * abs(apart)


def test_batch_layout_flattens_only_for_variable_length_kernels():
    from training.data import batch_layout

    assert batch_layout(True, "flash_attention_2") == "flat" and batch_layout(True, "flash_attention_3") == "flat"
    assert batch_layout(True, "sdpa") == "rows" and batch_layout(True, "eager") == "rows"
    assert batch_layout(False, "flash_attention_2") == "padded" and batch_layout(False, "sdpa") == "padded"
    with pytest.raises(ValueError, match="layout 'wide'"):
        collate({"input_ids": [[1]], "labels": [[1]]}, pad_id=0, layout="wide")


@pytest.mark.parametrize("every,expected", [(False, 0), (True, 4), (2, 2), (3, 2)])
def test_activation_checkpointing_every_k_layers_keeps_loss_and_gradients(tokenizer, every, expected):
    import torch
    from peft import get_peft_model

    from training.config import LoraSettings
    from training.model import checkpointed_layers, lora_config
    from training.tiny import build_tiny_llama

    seqs = _examples(tokenizer)
    packed = pack_rows(seqs, max_length=sum(len(ids) for ids, _ in seqs))[0]
    batch = collate({"input_ids": [packed[0]], "labels": [packed[1]], "position_ids": [packed[2]]}, pad_id=0,
                    layout="flat")

    def loss_and_grads(gc):
        model = build_tiny_llama(tokenizer, hidden_size=32, num_layers=4, num_heads=4, seed=1)
        model.config.use_cache = False
        n = checkpointed_layers(model, gc)
        torch.manual_seed(0)
        model = get_peft_model(model, lora_config(LoraSettings(r=4, dropout=0.0)))
        for name, p in model.named_parameters():  # non-zero B so every adapter gets a gradient
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        model.train()
        loss = model(**batch).loss
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        return n, float(loss.detach()), grads

    _, ref_loss, ref_grads = loss_and_grads(False)
    n, loss, grads = loss_and_grads(every)
    assert n == expected
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref_grads.keys() and all(torch.allclose(grads[k], ref_grads[k], atol=1e-6)
                                                     for k in grads)


def test_activation_checkpointing_on_transformers_without_every_n_layers(tokenizer, monkeypatch):
    """Older Transformers (before 5.17): only ``gradient_checkpointing_enable(kwargs)``, every layer;
    every k-th layer is then kept by hand."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    from transformers.modeling_utils import PreTrainedModel

    from training.model import checkpointed_layers
    from training.tiny import build_tiny_llama

    calls = []
    new_api = getattr(PreTrainedModel, "activation_checkpointing_enable", None)  # 5.2x
    every_n = PreTrainedModel.gradient_checkpointing_enable  # 5.17: takes every_n_layers

    def legacy(self, gradient_checkpointing_kwargs=None):  # every layer, and no other argument
        calls.append(gradient_checkpointing_kwargs)
        if new_api is not None:
            new_api(self, activation_checkpointing_kwargs=gradient_checkpointing_kwargs, every_n_layers=1)
        else:
            every_n(self, gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, every_n_layers=1)

    monkeypatch.delattr(PreTrainedModel, "activation_checkpointing_enable", raising=False)
    monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable", legacy)
    model = build_tiny_llama(tokenizer, hidden_size=32, num_layers=5, num_heads=4)
    assert checkpointed_layers(model, 2) == 3 and calls == [{"use_reentrant": False}]
    flags = [m.gradient_checkpointing for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert flags == [True, False, True, False, True]


def _flash_attention_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def _example_logits(model, ids, positions, device="cpu", leak=False):
    """Logits of every example of a packed row: (from the packed row, from the example alone).
    ``leak``: the row read as one sequence (positions 0..n-1), as without per-example positions."""
    import torch

    def run(i, p):
        with torch.no_grad():
            return model(input_ids=torch.tensor([i], device=device),
                         position_ids=torch.tensor([p], device=device)).logits[0].float()

    packed = run(ids, list(range(len(ids))) if leak else positions)
    starts = [k for k, p in enumerate(positions) if p == 0] + [len(ids)]
    return [(packed[a:b], run(ids[a:b], list(range(b - a)))) for a, b in zip(starts, starts[1:])]


def test_packed_examples_get_the_logits_they_get_alone(tokenizer):
    seqs = _examples(tokenizer)
    ids, _, positions, n = pack_rows(seqs, max_length=sum(len(i) for i, _ in seqs))[0]
    model = _model(tokenizer, "sdpa")
    pairs = _example_logits(model, ids, positions)
    assert len(pairs) == n == len(seqs)
    assert max(float((a - b).abs().max()) for a, b in pairs) < 1e-4
    leaky = _example_logits(model, ids, positions, leak=True)  # one long sequence: context leaks in
    assert max(float((a - b).abs().max()) for a, b in leaky[1:]) > 0.1


@pytest.mark.gpu
@pytest.mark.parametrize("attn", ["sdpa", pytest.param("flash_attention_2", marks=pytest.mark.skipif(
    not _flash_attention_installed(), reason="flash-attn is not installed"))])
def test_packed_examples_are_kept_apart_on_gpu_in_bf16(tokenizer, attn):
    """The GPU kernels the fine-tune uses, in bf16: each packed example's logits are its logits alone
    (a bf16 tolerance), the one-sequence reading is far off, and the summed loss matches."""
    import torch

    seqs = _examples(tokenizer)
    model = _model(tokenizer, attn).to("cuda", torch.bfloat16)
    ids, labels, positions, _ = pack_rows(seqs, max_length=sum(len(i) for i, _ in seqs))[0]
    pairs = _example_logits(model, ids, positions, device="cuda")
    assert max(float((a - b).abs().max()) for a, b in pairs) < 0.1
    leaky = _example_logits(model, ids, positions, device="cuda", leak=True)
    assert max(float((a - b).abs().max()) for a, b in leaky[1:]) > 0.5
    batch = {k: v.cuda() for k, v in collate({"input_ids": [ids], "labels": [labels], "position_ids": [positions]},
                                              pad_id=0, layout="flat").items()}
    alone = sum(_nll_sum(model, {"input_ids": torch.tensor([i]).cuda(),
                                 "labels": torch.tensor([[IGNORE, *lab[1:]]]).cuda()}) for i, lab in seqs)
    assert _nll_sum(model, batch) == pytest.approx(alone, rel=2e-2)


def test_liger_kernel_setting(monkeypatch):
    """auto: only on GPU and when installed; on: an error naming the extra when it is missing, and a
    config error on CPU; off: never."""
    import importlib.util

    from chipforge.config import ConfigError, validate
    from training.config import FinetuneConfig
    from training.model import liger_wanted

    real = importlib.util.find_spec

    def installed(yes: bool):
        return lambda name, *a: (object() if yes else None) if name == "liger_kernel" else real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", installed(False))
    assert not liger_wanted("auto", True) and not liger_wanted("auto", False) and not liger_wanted("off", True)
    with pytest.raises(RuntimeError, match=r"chipforge\[liger\]"):
        liger_wanted("on", True)
    monkeypatch.setattr(importlib.util, "find_spec", installed(True))
    assert liger_wanted("auto", True) and liger_wanted("on", True)
    assert not liger_wanted("auto", False) and not liger_wanted("off", True)
    with pytest.raises(ConfigError, match="liger_kernel: on needs GPU"):
        validate(FinetuneConfig, {"liger_kernel": "on"}, source="x.yaml")


@pytest.mark.gpu
def test_liger_kernels_give_the_unfused_loss_and_gradients_on_gpu(tokenizer):
    """Fused linear cross-entropy, RMSNorm, SwiGLU and RoPE from Liger: the same loss and LoRA
    gradients as Transformers' own path, on a packed, flattened micro batch (bf16 tolerance)."""
    pytest.importorskip("liger_kernel")
    import torch
    from peft import get_peft_model

    from training.config import LoraSettings
    from training.model import apply_liger, lora_config
    from training.tiny import build_tiny_llama

    seqs = _examples(tokenizer)
    ids, labels, positions, _ = pack_rows(seqs, max_length=sum(len(i) for i, _ in seqs))[0]
    batch = {k: v.cuda() for k, v in collate({"input_ids": [ids], "labels": [labels], "position_ids": [positions]},
                                              pad_id=0, layout="flat").items()}

    def loss_and_grads(liger: bool):
        model = build_tiny_llama(tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=2)
        model = model.to("cuda", torch.bfloat16)
        model.config.use_cache = False
        if liger:
            assert apply_liger(model)
        torch.manual_seed(0)
        model = get_peft_model(model, lora_config(LoraSettings(r=4, dropout=0.0)))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        loss = model(**batch).loss
        loss.backward()
        return float(loss.detach()), {k: p.grad.float() for k, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref = loss_and_grads(False)
    loss, got = loss_and_grads(True)
    assert loss == pytest.approx(ref_loss, rel=2e-2)
    assert all(torch.allclose(got[k], ref[k], rtol=0.1, atol=1e-2) for k in ref)
