"""``fused_lora``: PEFT's LoRA layers as one autograd function give PEFT's own loss and gradients
(with and without dropout, on packed rows), fall back to PEFT wherever it would compute
something else, and come from config."""

from __future__ import annotations

import copy

import pytest

from chipforge.config import ConfigError, validate
from tests.training._data import packing_examples
from training.config import FinetuneConfig
from training.data import collate, pack_rows
from training.fused_lora import LoraLinearFunction, fuse_lora
from training.model import build_lora_model, prepare_base

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_llama(tokenizer, dropout: float = 0.0, dtype=None, device: str = "cpu"):
    """A random 2-layer Llama with LoRA (random B, so the adapter changes the output) on all seven projections."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype or torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=TARGETS,
                                             init_lora_weights=False), autocast_adapter_dtype=dtype is None)
    model.train()
    return model


def _batch(tokenizer, device: str = "cpu") -> dict:
    seqs = packing_examples(tokenizer, 6)
    rows = [pack_rows(part, max_length=sum(len(i) for i, _ in part))[0] for part in (seqs[:3], seqs[3:])]
    cols = {"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows], "position_ids": [r[2] for r in rows]}
    return {k: v.to(device) for k, v in collate(cols, pad_id=0, layout="rows").items()}


def _loss_and_grads(model, batch, seed: int = 11) -> tuple:
    import torch

    torch.manual_seed(seed)  # the same dropout masks on both sides
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_function_gradients_are_exact(separate, bias):
    """The hand-written backward against finite differences (float64), for ``x`` alone and for a
    separate LoRA input (dropout's output)."""
    import torch

    torch.manual_seed(0)
    f64 = {"dtype": torch.float64}
    x = torch.randn(2, 5, 6, **f64, requires_grad=True)
    xd = torch.randn(2, 5, 6, **f64, requires_grad=True) if separate else None
    w, b = torch.randn(7, 6, **f64), torch.randn(7, **f64) if bias else None
    a, bb = torch.randn(3, 6, **f64, requires_grad=True), torch.randn(7, 3, **f64, requires_grad=True)
    inputs = (x, xd, a, bb) if separate else (x, a, bb)

    def f(*t):
        return LoraLinearFunction.apply(t[0], t[1] if separate else None, w, b, t[-2], t[-1], 0.7)

    assert torch.autograd.gradcheck(f, inputs)
    ref = x @ w.t() + (b if bias else 0) + 0.7 * ((xd if separate else x) @ a.t()) @ bb.t()
    assert torch.allclose(f(*inputs), ref)
    # the first layer's input needs no gradient: only the adapter's, as autograd gives them
    x0 = x.detach()
    grads = torch.autograd.grad(f(x0, *inputs[1:]).sum(), [a, bb])
    ref_grads = torch.autograd.grad((x0 @ w.t() + 0.7 * ((xd if separate else x0) @ a.t()) @ bb.t()).sum(), [a, bb])
    assert all(torch.allclose(g, r) for g, r in zip(grads, ref_grads))


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_model_has_peft_loss_and_gradients(tokenizer, dropout):
    """Every LoRA layer of a Llama fused: the loss, logits and every adapter gradient equal PEFT's on
    packed rows, dropout included (same masks); the fused path is the one that ran."""
    import torch

    ref_model = _peft_llama(tokenizer, dropout)
    model = copy.deepcopy(ref_model)
    assert fuse_lora(model) == 2 * len(TARGETS)
    assert fuse_lora(model) == 2 * len(TARGETS)  # idempotent
    import pickle

    assert type(pickle.loads(pickle.dumps(model)).base_model.model.model.layers[0].mlp.up_proj).__name__ == \
        "FusedLoraLinear"
    batch = _batch(tokenizer)
    ref_loss, ref_logits, ref_grads = _loss_and_grads(ref_model, batch)
    loss, logits, grads = _loss_and_grads(model, batch)
    assert sorted(grads) == sorted(ref_grads) and len(grads) == 4 * len(TARGETS)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    for k, g in ref_grads.items():
        assert torch.allclose(grads[k], g, rtol=1e-4, atol=1e-6), k
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q(torch.randn(3, 64)).grad_fn.name() == "LoraLinearFunctionBackward"
    model.eval()  # no dropout in eval: the same path without the separate LoRA input
    ref_model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, ref_model(**batch).logits, atol=1e-5)


def test_falls_back_to_peft_where_it_would_compute_something_else(tokenizer):
    """Disabled or merged adapters, two active adapters and mixed dtypes all go through PEFT's own
    forward, with PEFT's results."""
    import torch
    from peft import LoraConfig

    batch = _batch(tokenizer)
    ref_model = _peft_llama(tokenizer)
    model = copy.deepcopy(ref_model)
    fuse_lora(model)
    model.eval()
    ref_model.eval()
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        with model.disable_adapter(), ref_model.disable_adapter():
            assert q(torch.randn(3, 64)).grad_fn is None
            assert torch.allclose(model(**batch).logits, ref_model(**batch).logits, atol=1e-5)
        for m in (model, ref_model):  # a second adapter (the same random one), both active
            torch.manual_seed(2)
            m.add_adapter("two", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
            m.base_model.set_adapter(["default", "two"])
        assert torch.allclose(model(**batch).logits, ref_model(**batch).logits, atol=1e-5)
        for m in (model, ref_model):
            m.base_model.set_adapter("default")
            m.delete_adapter("two")
            m.merge_adapter()
        assert torch.allclose(model(**batch).logits, ref_model(**batch).logits, atol=1e-4)
    # hooks on the inner modules still run (the fused path would skip them), and autocast picks dtypes
    model.unmerge_adapter()
    assert q(torch.randn(3, 64, requires_grad=True)).grad_fn.name() == "LoraLinearFunctionBackward"
    seen = []
    q.base_layer.register_forward_hook(lambda *_: seen.append(1))
    assert q(torch.randn(3, 64, requires_grad=True)).grad_fn.name() != "LoraLinearFunctionBackward" and seen == [1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert q.lora_A["default"].weight.dtype == torch.float32
        y = model.base_model.model.model.layers[0].self_attn.k_proj(torch.randn(3, 64, requires_grad=True))
        assert y.dtype == torch.bfloat16 and y.grad_fn.name() != "LoraLinearFunctionBackward"
    # bf16 base with PEFT's float32 adapters: PEFT casts; the fused path needs one dtype, so it steps aside
    mixed = _peft_llama(tokenizer)
    mixed.base_model.model.to(torch.bfloat16)
    for n, p in mixed.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
    ref = copy.deepcopy(mixed)
    fuse_lora(mixed)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    q, ref_q = (m.base_model.model.model.layers[0].self_attn.q_proj for m in (mixed, ref))
    assert torch.equal(q(x), ref_q(x))


def test_comes_from_config_and_stays_out_of_zero3(tmp_path):
    """``auto`` fuses every LoRA layer of the job's model, except under ZeRO-3; ``off`` never;
    ``on`` with ZeRO-3 is a config error. The saved adapter is PEFT's format either way."""
    from training.fused_lora import FusedLoraLinear

    def fused(model) -> int:
        return sum(type(m) is FusedLoraLinear for m in model.modules())

    cfg = FinetuneConfig(output_dir=str(tmp_path), tiny={"hidden_size": 32, "num_layers": 2, "num_heads": 2},
                         lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]})
    base = prepare_base(cfg, ["module m (input a); endmodule"] * 10)
    model = build_lora_model(base, cfg)
    assert fused(model) == 6
    assert fused(build_lora_model(base, cfg.model_copy(update={"fused_lora": "off"}))) == 0
    zero3 = cfg.model_copy(update={"deepspeed": cfg.deepspeed.model_copy(update={"zero_stage": 3})})
    assert fused(build_lora_model(base, zero3)) == 0
    with pytest.raises(ConfigError, match="fused_lora: on reads the base layers' weights directly"):
        validate(FinetuneConfig, {"fused_lora": "on", "deepspeed": {"zero_stage": 3}}, source="x.yaml")
    model.save_pretrained(str(tmp_path / "adapter"))
    plain = build_lora_model(base, cfg.model_copy(update={"fused_lora": "off"}))
    plain.save_pretrained(str(tmp_path / "plain"))
    from safetensors.torch import load_file

    assert sorted(load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))) == \
        sorted(load_file(str(tmp_path / "plain" / "adapter_model.safetensors")))


@pytest.mark.gpu
def test_fused_lora_on_gpu_matches_peft_in_bf16(tokenizer):
    """On CUDA in bf16 (cuBLAS epilogues): PEFT's loss and gradients within bf16 tolerance."""
    import torch

    batch = _batch(tokenizer, "cuda")
    ref_model = _peft_llama(tokenizer, 0.0, torch.bfloat16, "cuda")
    model = copy.deepcopy(ref_model)
    fuse_lora(model)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 64, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    assert q(x).grad_fn.name() == "LoraLinearFunctionBackward"  # the fused path, not PEFT's
    ref_loss, _, ref_grads = _loss_and_grads(ref_model, batch)
    loss, _, grads = _loss_and_grads(model, batch)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-2)
    errors = {k: float((grads[k].float() - g.float()).norm() / g.float().norm()) for k, g in ref_grads.items()}
    assert max(errors.values()) < 0.05, errors  # direction and scale, within bf16 rounding


ENGINE_SCRIPT = """
import sys, torch
from training import fused_lora
from training.config import FinetuneConfig
from training.loop import init_distributed
from training.model import build_engine, build_lora_model, deepspeed_config, prepare_base

calls = []
apply = fused_lora.LoraLinearFunction.apply
fused_lora.LoraLinearFunction.apply = lambda *a: calls.append(1) or apply(*a)
init_distributed(False)
for stage in (2, 3):
    cfg = FinetuneConfig(output_dir=sys.argv[1], tiny={"hidden_size": 32, "num_layers": 2, "num_heads": 2},
                         scaling={"use_gpu": False}, deepspeed={"bf16": False, "zero_stage": stage})
    ds = deepspeed_config(cfg.deepspeed, cfg.optim, world_size=1, total_steps=4, warmup_steps=1, use_gpu=False)
    engine, _ = build_engine(build_lora_model(prepare_base(cfg, ["module m (input a); endmodule"] * 10), cfg, ds),
                             ds, use_gpu=False)
    calls.clear()
    ids = torch.randint(3, 100, (2, 16))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    print("zero", stage, "fused calls", len(calls))
"""


def test_fused_path_runs_inside_the_deepspeed_engine(tmp_path):
    """Under the job's ZeRO-2 engine every LoRA layer's forward takes the fused path (nothing DeepSpeed
    hooks in sends it back to PEFT's); under ZeRO-3 none does."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=300, cwd=repo, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "zero 2 fused calls 8" in run.stdout and "zero 3 fused calls 0" in run.stdout, run.stdout
