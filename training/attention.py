"""``attn_implementation: torch_varlen``: packed examples through PyTorch's own variable-length
flash attention (``torch.nn.attention.varlen.varlen_attn``, PyTorch 2.10 and later on CUDA).

Why: with ``sdpa`` a packed row gets a block-diagonal mask, and a masked kernel computes the
whole square of the row (on one H200 that was 21% of an 8B step and 31% of a 1.1B one, rows of
2,048 tokens packed from examples of a few hundred). A variable-length kernel computes only each
example's own causal square, as ``flash_attention_2`` does, but without the flash-attn package,
which has no wheel for most CUDA/torch pairs and takes an hour to build.

How: the function is registered in Transformers' ``AttentionInterface`` under ``torch_varlen``
with a mask function that builds no mask (:func:`register`). Each attention call reads the
example boundaries from ``position_ids`` (a new example wherever the position restarts at 0,
and at every row start, so a flattened micro batch and padded packed rows both work), turns the
``(batch, heads, seq, dim)`` tensors into the kernel's ``(tokens, heads, dim)`` and back. The
boundaries are computed once per forward pass and reused by every layer (one host sync for the
longest example). On CPU, where the kernel does not exist, the same boundaries drive one causal
``scaled_dot_product_attention`` per example: the tests check the plumbing there and the kernel
on a GPU. Training only: no KV cache, no attention mask, no dropout.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

NAME = "torch_varlen"

_last: dict[str, Any] = {"position_ids": None, "bounds": None}


def available() -> bool:
    """Whether this PyTorch has ``varlen_attn`` (the CUDA kernel also needs a CUDA device)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def example_bounds(position_ids: Any, seq_len: int) -> tuple[Any, int]:
    """Cumulative example starts over the flattened ``(batch·seq)`` tokens (int32, with the total
    at the end) and the longest example: a boundary wherever the position is 0 and at every row
    start. Cached for the last ``position_ids`` tensor seen (every layer of one pass)."""
    import torch

    if _last["position_ids"] is position_ids:
        return _last["bounds"]
    pos = position_ids.reshape(-1, seq_len)
    starts = pos == 0
    starts[:, 0] = True
    idx = starts.reshape(-1).nonzero().reshape(-1)
    cu = torch.cat([idx, idx.new_tensor([pos.numel()])]).to(torch.int32)
    bounds = (cu, int((cu[1:] - cu[:-1]).max()))
    _last.update(position_ids=position_ids, bounds=bounds)
    return bounds


def varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """Transformers attention function: ``query`` ``(b, h, t, d)``, ``key``/``value``
    ``(b, h_kv, t, d)``; returns ``(b, t, h, d)`` and no attention weights."""
    import torch

    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        raise ValueError(f"attn_implementation {NAME} needs position_ids (packed training rows)")
    if attention_mask is not None:
        raise ValueError(f"attn_implementation {NAME} takes no attention mask: use it with packing: true")
    b, h, t, d = query.shape
    h_kv = key.shape[1]
    cu, longest = example_bounds(position_ids, t)
    q, k, v = (x.transpose(1, 2).reshape(b * t, x.shape[1], d) for x in (query, key, value))
    if query.device.type != "cuda":  # no kernel: the same boundaries, one causal sdpa per example
        starts = cu.tolist()
        parts = []
        for a, z in zip(starts, starts[1:]):
            qa, ka, va = (x[a:z].transpose(0, 1)[None] for x in (q, k, v))
            parts.append(torch.nn.functional.scaled_dot_product_attention(
                qa, ka, va, is_causal=True, scale=scaling, enable_gqa=h != h_kv)[0].transpose(0, 1))
        out = torch.cat(parts)
    else:
        out = _varlen_kernel(q, k, v, cu, longest, scaling, h != h_kv)
    return out.reshape(b, t, h, d), None


@functools.lru_cache(maxsize=1)
def _kernel_params() -> frozenset[str]:
    """The parameters this PyTorch's ``varlen_attn`` takes (read once, not per layer)."""
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _varlen_kernel(q: Any, k: Any, v: Any, cu: Any, longest: int, scaling: float | None, gqa: bool) -> Any:
    """``varlen_attn`` across its signatures: ``is_causal`` (2.10-2.11) or ``window_size`` and
    ``enable_gqa`` (2.12 and later); key/value heads repeated when the kernel cannot group them."""
    from torch.nn.attention.varlen import varlen_attn

    params = _kernel_params()
    extra: dict[str, Any] = {}
    if "is_causal" in params:
        extra["is_causal"] = True
    else:
        extra["window_size"] = (-1, 0)
    if scaling is not None and "scale" in params:
        extra["scale"] = scaling
    elif scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-6:
        raise ValueError(f"{NAME}: this PyTorch's varlen_attn has no scale argument and the model scales "
                         f"attention by {scaling}, not 1/sqrt(head dim)")
    if gqa:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return varlen_attn(q, k, v, cu, cu, longest, longest, **extra)


def no_mask(*_: Any, attention_mask: Any = None, **__: Any) -> None:
    """The mask function registered with :data:`NAME`: the kernel reads example boundaries from
    the position ids, so Transformers builds no mask. A padding mask would be dropped silently,
    so one that masks anything is refused."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(f"attn_implementation {NAME} takes no attention mask (padding): "
                         "use it with packing: true, where position ids keep the examples apart")
    return None


def register() -> None:
    """Make ``attn_implementation="torch_varlen"`` known to Transformers (idempotent); an error
    naming the PyTorch version when it has no ``varlen_attn``."""
    if not available():
        import torch

        raise RuntimeError(f"attn_implementation: {NAME} needs torch>=2.10 (torch.nn.attention.varlen); "
                           f"this is torch {torch.__version__}")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, no_mask)
