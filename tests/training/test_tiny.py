from __future__ import annotations

import torch

from training.tiny import build_tiny_llama, save_tiny_model, train_tokenizer


def test_tokenizer_has_special_tokens_and_chat_template(tokenizer):
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "module m; endmodule"}], tokenize=False
    )
    assert text.startswith("<s><|user|>\nhi<|end|>\n<|assistant|>\nmodule m; endmodule")
    assert text.endswith("</s>")
    ids = tokenizer("module reg_1 (input wire clk);", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "module reg_1 (input wire clk);"  # byte-level: lossless


def test_tiny_llama_is_seeded_and_sized_to_vocab(tokenizer):
    a = build_tiny_llama(tokenizer, seed=3)
    b = build_tiny_llama(tokenizer, seed=3)
    assert a.config.vocab_size == len(tokenizer)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    out = a(input_ids=torch.tensor([[1, 5, 9]]))
    assert out.logits.shape == (1, 3, len(tokenizer))


def test_save_tiny_model_loads_back_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = save_tiny_model(str(tmp_path / "m"), ["always @(posedge clk) q <= d;"] * 5, hidden_size=32, num_layers=1)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template and model.config.hidden_size == 32
    enc = tok.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 3
