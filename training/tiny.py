"""Tiny Llama-architecture models with random weights and a BPE tokenizer trained in-process.

Used by the CPU quickstart, the tests and the synthesis ``hf`` engine: nothing is downloaded.
The tokenizer is trained with ``tokenizers`` on the given texts and carries bos/eos/pad tokens
and a small chat template (``<|role|>\\n content <|end|>``), so ``apply_chat_template`` works
exactly as with a hub model. Saved with ``save_pretrained`` so any code that loads "a Hugging
Face id or a local path" can load it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Each message: role marker, newline, content, end marker, newline. The assistant's end marker
# is followed by eos so a fine-tuned model learns to stop. ``generation`` blocks mark the
# assistant spans (``return_assistant_tokens_mask``).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>\n' + eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> "PreTrainedTokenizerFast":
    """A byte-level BPE tokenizer trained on ``texts`` (any byte sequence is encodable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 256 + len(specials) + 1),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=4096,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(
    tokenizer: Any,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    max_position_embeddings: int = 2048,
    intermediate_size: int | None = None,
    initializer_range: float = 0.1,
) -> "LlamaForCausalLM":
    """A ``LlamaForCausalLM`` with random (seeded) weights sized to ``tokenizer``'s vocabulary.

    ``initializer_range`` is larger than Llama's 0.02 so that a frozen random ``lm_head`` spans a
    useful logit range: LoRA on the attention/MLP projections can then fit small datasets.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_model(path: str, texts: Iterable[str], **kw: Any) -> str:
    """Train a tokenizer on ``texts``, build a tiny Llama, ``save_pretrained`` both to ``path``.

    ``vocab_size`` goes to the tokenizer; the other keywords to ``build_tiny_llama``.
    """
    vocab_size = int(kw.pop("vocab_size", 512))
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_llama(tokenizer, **kw)
    with quiet_hf():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Without transformers' progress bars ("Writing model shards", "Loading weights") and, on a
    machine without CUDA, without DeepSpeed's "Setting accelerator to CPU" warning (``save_pretrained``
    imports DeepSpeed through accelerate): a job prints its own progress lines."""
    import torch
    from transformers.utils import logging as hf_logging

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
