"""The hf engine in-process: per-row adapters in one batch match PEFT's own generate."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from serving.engine import BASE_ADAPTER, EngineBusy, HFEngine, SamplingParams, stop_tokens
from tests.serving import fixtures

PROMPTS = ["The worst negative slack", "module counter(input clk", "How do I close timing?"]
ADAPTERS = [None, "timing_analysis", "rtl_design"]


@pytest.fixture(scope="module")
def engine(tiny_registry: dict[str, Any]):
    from training.tiny import quiet_hf

    with quiet_hf():
        e = HFEngine(tiny_registry["base"], dict(tiny_registry["adapters"]), max_batch_size=8, batch_wait_s=0.2,
                     max_waiting=32, torch_threads=1)
    yield e
    e.shutdown()


def submit(engine: HFEngine, prompt: str | list[int], adapter: str | None, **params: Any):
    ids = engine.prompt_ids(prompt) if isinstance(prompt, str) else prompt
    done, out, end = threading.Event(), [], {}

    def sink(ev: dict[str, Any]) -> None:
        if "text" in ev:
            out.append(ev["text"])
        if ev.get("done") or "error" in ev:
            end.update(ev)
            done.set()

    row = engine.submit(ids, adapter, SamplingParams(**{"max_tokens": 12, "temperature": 0.0, **params}), sink)
    return row, done, out, end


def result(job) -> tuple[str, dict[str, Any]]:
    _, done, out, end = job
    assert done.wait(120), "generation did not finish"
    return "".join(out), end


def test_mixed_adapter_batch_matches_peft_generate(engine, tiny_registry):
    jobs = [(p, a, submit(engine, p, a)) for p in PROMPTS for a in ADAPTERS]  # interleaved in one batch
    got = {(p, a): result(j) for p, a, j in jobs}
    assert engine.stats["max_batch"] > 1  # they really shared batches
    for (p, a), (text, end) in got.items():
        want = fixtures.peft_greedy(tiny_registry, engine.prompt_ids(p), a, 12)
        assert text == want, (p, a)
        assert end["completion_tokens"] >= 1 and end["prompt_tokens"] == len(engine.prompt_ids(p))
    for p in PROMPTS:
        assert len({got[(p, a)][0] for a in ADAPTERS}) == 3, f"outputs for {p!r} do not differ by adapter"


def test_requests_join_a_running_batch(engine, tiny_registry):
    import time

    batches = engine.stats["batches"]
    long = submit(engine, PROMPTS[2], "rtl_design", max_tokens=1000, ignore_eos=True)
    deadline = time.monotonic() + 60
    while len(long[0].out_ids) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)  # the long row is decoding; the next ones join it between two steps
    late = [(p, a, submit(engine, p, a)) for p, a in zip(PROMPTS, ADAPTERS)]
    for p, a, job in late:
        assert result(job)[0] == fixtures.peft_greedy(tiny_registry, engine.prompt_ids(p), a, 12), (p, a)
    assert not long[1].is_set()  # still decoding when they were done
    assert engine.stats["batches"] - batches == 1  # all in the long row's batch
    long[0].cancel()
    text, end = result(long)
    assert end["finish_reason"] == "cancelled" and 3 <= end["completion_tokens"] < 1000


def test_stop_strings_max_tokens_and_seeds(engine):
    text, end = result(submit(engine, PROMPTS[0], "timing_analysis", max_tokens=5))
    assert end["finish_reason"] == "length" and end["completion_tokens"] == 5
    full, _ = result(submit(engine, PROMPTS[0], "timing_analysis", max_tokens=12))
    stop = full[3:5]
    cut, end = result(submit(engine, PROMPTS[0], "timing_analysis", max_tokens=12, stop=(stop,)))
    assert end["finish_reason"] == "stop" and cut == full[:full.find(stop)] and stop not in cut
    a, _ = result(submit(engine, PROMPTS[1], None, temperature=1.0, seed=7))
    b, _ = result(submit(engine, PROMPTS[1], None, temperature=1.0, seed=7))
    c, _ = result(submit(engine, PROMPTS[1], None, temperature=1.0, seed=8))
    assert a == b and a != c
    greedy, _ = result(submit(engine, PROMPTS[1], None, max_tokens=8))
    nucleus, _ = result(submit(engine, PROMPTS[1], None, max_tokens=8, temperature=1.0, top_p=1e-6, seed=3))
    assert nucleus == greedy  # a nucleus of one token is greedy decoding
    n, end = result(submit(engine, PROMPTS[1], None, max_tokens=7, ignore_eos=True))
    assert end["completion_tokens"] == 7


def test_stop_token_ends_a_row(engine):
    # A logit bias forces the end-of-turn token first: the row stops, nothing is emitted.
    ids, names = stop_tokens(engine.tokenizer, engine.model.generation_config)
    assert "<|end|>" in names and engine.tokenizer.eos_token in names
    text, end = result(submit(engine, PROMPTS[2], "rtl_design", logit_bias=((ids[-1], 100.0),)))
    assert text == "" and end["finish_reason"] == "stop" and end["completion_tokens"] == 1


def test_cancel_and_busy(engine):
    row, done, _, end = submit(engine, PROMPTS[0], None, max_tokens=500, ignore_eos=True)
    row.cancel()
    assert done.wait(60) and end["finish_reason"] == "cancelled" and end["completion_tokens"] < 500
    small = HFEngine.__new__(HFEngine)  # the queue bound alone, without a model
    small._lock, small._waiting, small.max_waiting, small.adapters = threading.Lock(), 2, 2, ()
    with pytest.raises(EngineBusy):
        small.submit([1], None, SamplingParams(1, temperature=0.0), lambda e: None)


def test_score_matches_a_direct_forward(engine, tiny_registry):
    import torch

    prompt = engine.prompt_ids(PROMPTS[0])
    conts = [engine.prompt_ids(" slack"), engine.prompt_ids(" module x")]
    got = engine.score(prompt, conts, "timing_analysis")
    model, _ = fixtures.peft_reference(tiny_registry)
    model.set_adapter("timing_analysis")
    for c, g in zip(conts, got):
        ids = torch.tensor([prompt + c])
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        want = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(c))
        assert g == pytest.approx(want, abs=1e-4)
    assert BASE_ADAPTER == "__base__"


def test_a_row_whose_sampling_fails_does_not_fail_its_batch(engine):
    # One client's row that cannot be sampled (a NaN bias: multinomial raises) used to end every row
    # of the batch with "generation failed"; now only that row gets the error.
    good = [submit(engine, p, a, max_tokens=40, ignore_eos=True) for p, a in zip(PROMPTS, ADAPTERS)]
    bad = submit(engine, PROMPTS[0], None, temperature=1.0, logit_bias=((5, float("nan")),))
    _, end = result(bad)
    assert "error" in end and "probability" in end["error"]
    for job in good:
        _, end = result(job)
        assert end.get("finish_reason") == "length" and end["completion_tokens"] == 40, end


def test_a_vanishing_temperature_is_greedy(engine):
    # row / 1e-300 overflowed to inf and softmax gave NaNs: a 500 for the request and its whole batch.
    greedy, _ = result(submit(engine, PROMPTS[1], "rtl_design", max_tokens=8))
    for t in (1e-300, 5e-324, 1e-9):
        text, end = result(submit(engine, PROMPTS[1], "rtl_design", max_tokens=8, temperature=t, seed=1))
        assert "error" not in end and text == greedy, (t, end)


def test_an_empty_prompt_is_refused_at_submit(engine):
    # An empty row broke the batch's prefill (reshape of 0 elements) for every row in it.
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], None, SamplingParams(4, temperature=0.0), lambda e: None)
