"""``attn_implementation: torch_varlen``: example boundaries from position ids, the same loss and
gradients as ``sdpa`` on packed rows (CPU: one causal sdpa per example; GPU: PyTorch's
variable-length flash kernel)."""

from __future__ import annotations

import pytest

from tests.training._data import packing_examples as _examples
from training import attention
from training.data import IGNORE, collate, pack_rows


def _llama(tokenizer, attn: str, kv_heads: int = 2, seed: int = 3):
    """A random Llama with grouped key/value heads (4 query heads, ``kv_heads`` key/value heads)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    attention.register()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=512,
                      initializer_range=0.1)
    model = LlamaForCausalLM(cfg)
    model.config.use_cache = False
    model.set_attn_implementation(attn)
    return model


def _packed_batch(tokenizer, layout: str) -> dict:
    """Two packed rows of three examples each (rows of different lengths), in ``layout``."""
    seqs = _examples(tokenizer, 6)
    packed = [pack_rows(part, max_length=sum(len(i) for i, _ in part))[0] for part in (seqs[:3], seqs[3:])]
    cols = {"input_ids": [r[0] for r in packed], "labels": [r[1] for r in packed],
            "position_ids": [r[2] for r in packed]}
    return collate(cols, pad_id=0, layout=layout)


def _loss_and_grads(model, batch) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return float(loss.detach()), {k: p.grad.detach().clone() for k, p in model.named_parameters()
                                  if p.grad is not None}


def test_example_bounds_split_at_position_zero_and_at_every_row_start():
    import torch

    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2],  # three examples
                        [0, 1, 2, 3, 0, 1, 2, 3]])  # one example, then padding as a block of its own
    cu, longest = attention.example_bounds(pos, 8)
    assert cu.tolist() == [0, 3, 5, 8, 12, 16] and cu.dtype == torch.int32 and longest == 4
    # a row that does not start at position 0 still starts a new example
    cu, _ = attention.example_bounds(torch.tensor([[0, 1, 2, 3], [4, 5, 0, 1]]), 4)
    assert cu.tolist() == [0, 4, 6, 8]


@pytest.mark.parametrize("layout", ["flat", "rows"])
def test_varlen_gives_the_loss_and_gradients_of_sdpa_on_packed_rows(tokenizer, layout):
    batch = _packed_batch(tokenizer, layout)
    ref_loss, ref_grads = _loss_and_grads(_llama(tokenizer, "sdpa"), batch)
    loss, grads = _loss_and_grads(_llama(tokenizer, attention.NAME), batch)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    worst = max(float((grads[k] - ref_grads[k]).abs().max() / (ref_grads[k].abs().max() + 1e-12)) for k in grads)
    assert worst < 1e-4


def test_varlen_keeps_examples_apart(tokenizer):
    """The summed loss of the packed rows equals the examples' losses alone; the same rows read
    as single sequences (no restarting positions) do not."""
    import torch

    seqs = _examples(tokenizer, 6)
    model = _llama(tokenizer, attention.NAME).eval()
    batch = _packed_batch(tokenizer, "flat")

    def nll_sum(b):
        with torch.no_grad():
            return float(model(**b).loss) * int((b["labels"][:, 1:] != IGNORE).sum())

    model.set_attn_implementation("sdpa")
    alone = sum(nll_sum({"input_ids": torch.tensor([i]), "labels": torch.tensor([[IGNORE, *lab[1:]]])})
                for i, lab in seqs)
    model.set_attn_implementation(attention.NAME)
    assert nll_sum(batch) == pytest.approx(alone, rel=1e-4)
    one_sequence = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    assert abs(nll_sum(one_sequence) - alone) > 1e-3 * alone


def test_varlen_refuses_what_it_cannot_do(tokenizer, monkeypatch):
    import torch

    from chipforge.config import ConfigError, validate
    from training.config import FinetuneConfig
    from training.model import build_lora_model

    with pytest.raises(ConfigError, match="needs packing: true"):
        validate(FinetuneConfig, {"attn_implementation": "torch_varlen", "packing": False}, source="x.yaml")
    model = _llama(tokenizer, attention.NAME)
    with pytest.raises(ValueError, match="takes no attention mask"):
        model(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.tensor([[1, 1, 0]]),
              position_ids=torch.tensor([[0, 1, 2]]))
    monkeypatch.setattr(attention, "available", lambda: False)
    with pytest.raises(RuntimeError, match=r"torch_varlen needs torch>=2\.10"):
        build_lora_model("unused", FinetuneConfig(attn_implementation="torch_varlen"))


@pytest.mark.gpu
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_varlen_kernel_on_gpu_matches_sdpa_in_bf16(tokenizer, kv_heads):
    """PyTorch's variable-length flash kernel, forward and backward, in bf16: the loss and
    gradients of the masked sdpa path on the same packed rows (bf16 tolerance)."""
    import torch

    if not attention.available():
        pytest.fail(f"torch {torch.__version__} has no torch.nn.attention.varlen")
    batch = {k: v.cuda() for k, v in _packed_batch(tokenizer, "flat").items()}
    rows = {k: v.cuda() for k, v in _packed_batch(tokenizer, "rows").items()}
    ref_loss, ref_grads = _loss_and_grads(_llama(tokenizer, "sdpa", kv_heads).to("cuda", torch.bfloat16), rows)
    loss, grads = _loss_and_grads(_llama(tokenizer, attention.NAME, kv_heads).to("cuda", torch.bfloat16), batch)
    assert loss == pytest.approx(ref_loss, rel=2e-2)
    cos = [float(torch.nn.functional.cosine_similarity(grads[k].float().flatten(), ref_grads[k].float().flatten(),
                                                       dim=0)) for k in grads]
    assert min(cos) > 0.99
