"""``fused_lora``: PEFT's LoRA linear layers computed as one autograd function, without their
separate elementwise passes.

Why: PEFT computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``. The scaling and the sum
are two more passes over a ``(tokens, out_features)`` tensor in the forward pass, and in the
backward pass there is one more of each, plus the sum of the two gradients of ``x``. On one H200
these elementwise kernels took about 15% of a 1.1B step and 10% of an 8B one (seven LoRA
projections per layer, bench/results/train_gpu.json, ``cuda-probe`` profiles).

How: :class:`LoraLinearFunction` does the same algebra with matrix products whose epilogue does
the adding and scaling (``addmm_(h, Bᵀ, alpha=scaling)``: cuBLAS's ``C = αAB + βC``):

- forward: ``out = x Wᵀ (+ bias)``; ``h = x_d Aᵀ``; ``out += scaling · h Bᵀ``
- backward: ``g_h = scaling · g B``; ``grad_A = g_hᵀ x_d``; ``grad_B = scaling · gᵀ h``;
  ``grad_x = g W (+ g_h A`` in the same product when the LoRA input is ``x`` itself)

where ``x_d`` is ``dropout(x)`` (computed outside by PEFT's own dropout module, so masks and
random numbers are the same as PEFT's) or ``x`` when there is no dropout. It saves the same
tensors PEFT's path does (``x_d``, the small ``h``), so memory does not grow.

Where: :func:`fuse_lora` swaps the class of each PEFT ``lora.Linear`` over a plain
``torch.nn.Linear`` for a subclass whose forward takes this path whenever it computes exactly
what PEFT would: one active vanilla LoRA adapter (no DoRA or other variant, no LoRA bias),
not merged, adapters enabled, frozen base weights, one dtype throughout, no per-call adapter
names, no autocast, no forward hooks on the three inner modules (the fused path does not call
them). Anything else goes to PEFT's own forward, unchanged. Not under ZeRO-3: its parameters
are gathered only when their own module runs, and this reads the base layer's weight directly.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear


class LoraLinearFunction(torch.autograd.Function):
    """``x Wᵀ + b + scaling · (x_d Aᵀ) Bᵀ`` with frozen ``W``, ``b``; ``x_d`` None means ``x``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, x_lora: torch.Tensor | None, weight: torch.Tensor,
                bias: torch.Tensor | None, lora_a: torch.Tensor, lora_b: torch.Tensor,
                scaling: float) -> torch.Tensor:
        d_in = x.shape[-1]
        x2 = x.reshape(-1, d_in)
        xl = x2 if x_lora is None else x_lora.reshape(-1, d_in)
        h = xl @ lora_a.t()
        out = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        out.addmm_(h, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(weight, lora_a, lora_b, xl, h)
        ctx.scaling, ctx.separate, ctx.shape = scaling, x_lora is not None, x.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, lora_a, lora_b, xl, h = ctx.saved_tensors
        need_x, need_xl, _, _, need_a, need_b, _ = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1])
        g_h = (g @ lora_b).mul_(ctx.scaling)  # (tokens, r): small
        grad_a = g_h.t() @ xl if need_a else None
        grad_b = (g.t() @ h).mul_(ctx.scaling) if need_b else None
        grad_x = grad_xl = None
        if need_x:
            grad_x = g @ weight
            if not ctx.separate:
                grad_x.addmm_(g_h, lora_a)
            grad_x = grad_x.view(ctx.shape)
        if ctx.separate and need_xl:
            grad_xl = (g_h @ lora_a).view(ctx.shape)
        return grad_x, grad_xl, None, None, grad_a, grad_b, None


def _hooked(*modules: torch.nn.Module) -> bool:
    """Whether calling these modules would run forward hooks (theirs or global ones)."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _fused_args(layer: Any, x: torch.Tensor) -> tuple | None:
    """The function's arguments when ``layer`` (a PEFT ``lora.Linear``) would compute exactly
    ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` for this call; None otherwise."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}) or layer.use_dora.get(name):
        return None
    base, lora_a, lora_b = layer.base_layer, layer.lora_A[name], layer.lora_B[name]
    if torch.is_autocast_enabled(x.device.type) or _hooked(base, lora_a, lora_b):
        return None  # autocast would pick the products' dtypes; hooks expect their modules to run
    weight, bias = base.weight, base.bias
    if lora_b.bias is not None or weight.requires_grad or (bias is not None and bias.requires_grad):
        return None
    if not (x.dtype == weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype) or x.shape[-1] != weight.shape[1]:
        return None
    dropout = layer.lora_dropout[name]
    x_lora = None if isinstance(dropout, torch.nn.Identity) or not dropout.training else dropout(x)
    return x, x_lora, weight, bias, lora_a.weight, lora_b.weight, float(layer.scaling[name])


class FusedLoraLinear(LoraLinear):
    """PEFT's ``lora.Linear`` whose forward is :class:`LoraLinearFunction` when that computes what
    PEFT's would, and PEFT's own forward otherwise (same state, same saved adapter)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        fused = None if args or kwargs else _fused_args(self, x)
        if fused is None:
            return super().forward(x, *args, **kwargs)
        return LoraLinearFunction.apply(*fused)


def fuse_lora(model: Any) -> int:
    """Give every PEFT ``lora.Linear`` over a ``torch.nn.Linear`` in ``model`` the fused forward
    (in place, by swapping its class; idempotent). Returns how many layers have it."""
    n = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear:
            module.__class__ = FusedLoraLinear
        n += type(module) is FusedLoraLinear
    return n
