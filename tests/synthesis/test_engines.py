"""Plain in-process engines (no Ray): OpenAI-compatible client against a canned server on
127.0.0.1, transformers generation with a tiny model (on disk, and built in-process), the vLLM
preflight and row adapters. The Ray processors are tested with the job (tests/jobs/test_synthesize.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from synthesis import engines
from synthesis.engines import GENERATION_SCHEMA, EngineUnavailable, HFGenerator, OpenAIConfig, SamplingConfig
from synthesis.seeds import PROMPT_SCHEMA
from tests.synthesis.conftest import CannedServer


def prompt_rows(topics: list[str], template: str = "synthesis/yosys_script_topic@v1") -> list[dict]:
    from synthesis.seeds import build_prompts
    from synthesis.templates import TEMPLATES
    from synthesis.validate import design_context

    return build_prompts(template.split("/")[0], len(topics), round_=0, seed=0, templates=[TEMPLATES[template]],
                         seeds={"topic": [{"kind": "topic", "topic": t} for t in topics]}, design=design_context())


# ------------------------------------------------------------------------ vLLM (no Ray here: processors are
# built in pipelines.synthesis and tested in tests/jobs/test_synthesize.py)

def test_vllm_preflight_messages() -> None:
    with pytest.raises(EngineUnavailable, match=r"0 GPU\(s\).*needs .* = 2.*vllm package is not importable"):
        engines.vllm_preflight({"CPU": 4}, False, tensor_parallel_size=2)
    with pytest.raises(EngineUnavailable, match="accelerator_type 'H100'.*A100"):
        engines.vllm_preflight({"GPU": 8, "accelerator_type:A100": 1}, True, accelerator_type="H100")
    with pytest.raises(EngineUnavailable, match="vllm package"):
        engines.vllm_preflight({"GPU": 8}, False)
    engines.vllm_preflight({"GPU": 8, "accelerator_type:H100": 1}, True, tensor_parallel_size=8,
                           accelerator_type="H100")


def test_vllm_request_and_reply_adapters() -> None:
    row = prompt_rows(["fsm recoding"])[0]
    pre = engines.vllm_request(row, {"temperature": 0.2, "max_tokens": 64})
    assert pre["messages"][0]["role"] == "system" and "fsm recoding" in pre["messages"][1]["content"]
    assert pre["sampling_params"] == {"temperature": 0.2, "max_tokens": 64}
    post = engines.vllm_reply({**row, "generated_text": "x", "num_input_tokens": 5, "num_generated_tokens": 1})
    assert post["generated_text"] == "x" and post["prompt_id"] == row["prompt_id"] and post["completion_tokens"] == 1
    assert post["engine_error"] is None
    # a reply that used every token it was allowed was cut: an engine error naming the limit
    cut = engines.vllm_reply({**row, **pre, "generated_text": '{"instruction": "q", "ans', "num_input_tokens": 5,
                              "num_generated_tokens": 64})
    assert cut["generated_text"] is None and "token limit" in cut["engine_error"] and cut["completion_tokens"] == 64
    assert engines.vllm_reply({**row, **pre, "generated_text": "x", "num_input_tokens": 5,
                               "num_generated_tokens": 63})["engine_error"] is None
    assert SamplingConfig(temperature=0.2, max_tokens=64).params() == {"temperature": 0.2, "top_p": 0.95,
                                                                       "max_tokens": 64}
    assert SamplingConfig(seed=3).params()["seed"] == 3


def test_engines_module_knows_nothing_of_ray() -> None:
    import subprocess
    import sys

    code = ("import sys, synthesis.engines, synthesis.seeds; "
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'vllm'))); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------ OpenAI

def test_openai_headers_and_url() -> None:
    cfg = OpenAIConfig(api_key_env="CF_TEST_KEY")
    assert engines.openai_headers(cfg, {"CF_TEST_KEY": "k1"}) == {"Authorization": "Bearer k1"}
    with pytest.raises(EngineUnavailable, match=r"\$CF_TEST_KEY"):
        engines.openai_headers(cfg, {})
    assert engines.openai_headers(OpenAIConfig(api_key_env=None), {}) == {}
    assert engines.chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert engines.chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


def test_openai_postprocess_error_bodies() -> None:
    meta = {"prompt_id": "p", "round": 0, "phase": "synthesis", "task": "t", "template_id": "x", "seed_json": "{}"}
    ok = engines.openai_reply({**meta, "http_response": {"choices": [{"message": {"content": "hi"}}],
                                                         "usage": {"prompt_tokens": 3, "completion_tokens": 1}}})
    assert ok["generated_text"] == "hi" and ok["engine_error"] is None and ok["prompt_tokens"] == 3
    err = engines.openai_reply({**meta, "http_response": {"error": {"message": "boom"}}})
    assert err["generated_text"] is None and err["engine_error"].startswith("http_error") and "boom" in err["engine_error"]
    assert engines.openai_reply({**meta, "http_response": {"choices": []}})["engine_error"]
    assert engines.openai_reply({**meta, "http_response": "<html>"})["engine_error"]
    odd = engines.openai_reply({**meta, "http_response": {"choices": ["not a dict"]}})  # never raises
    assert odd["engine_error"].startswith("http_error") and odd["prompt_id"] == "p"
    assert engines.openai_reply({**meta, "http_response": {"choices": [{"message": {"content": 5}}]}})["engine_error"]


def test_generation_rows_keep_the_good_rows_of_a_batch_with_a_bad_one() -> None:
    meta = {"prompt_id": "p", "round": 0, "phase": "synthesis", "task": "t", "template_id": "x", "seed_json": "{}"}
    batch = pa.Table.from_pylist([
        {**meta, "generated_text": "ok", "prompt_tokens": 3, "__inference_error__": None},
        {**meta, "prompt_id": "q", "generated_text": None, "__inference_error__": "CUDA OOM"},
    ])
    out = engines.to_generation_rows(batch).to_pylist()
    assert out[0]["generated_text"] == "ok" and out[0]["engine_error"] is None and out[0]["prompt_tokens"] == 3
    assert out[1]["engine_error"] == "CUDA OOM"
    weird = pa.Table.from_pylist([{**meta, "generated_text": "fine"}, {**meta, "prompt_id": "r", "generated_text": "x"}])
    weird = weird.set_column(weird.schema.get_field_index("generated_text"), "generated_text",
                             pa.array([["a", "list"], ["b"]]))
    assert [r["engine_error"].startswith("bad_engine_row") for r in engines.to_generation_rows(weird).to_pylist()] == [
        True, True]


def test_plain_openai_client_against_a_canned_server(canned_server: CannedServer) -> None:
    cfg = OpenAIConfig(url=canned_server.url, model="canned-model", api_key_env="CF_CANNED_KEY", max_retries=2,
                       base_retry_wait_s=0.05)
    client = engines.OpenAIChat(cfg, SamplingConfig(temperature=0.3, max_tokens=99, seed=7),
                                environ={"CF_CANNED_KEY": "sk-test"})
    rows = prompt_rows(["fsm recoding", "RATE-LIMIT-429 please", "SERVER-ERROR-500 please"])
    out = client(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA))
    assert out.schema == GENERATION_SCHEMA and out.num_rows == 3
    by_id = {r["prompt_id"]: r for r in out.to_pylist()}
    tag = {"fsm": "ok", "RATE-LIMIT-429": "429", "SERVER-ERROR-500": "500"}
    got = {tag[k]: by_id[r["prompt_id"]] for r in rows for k in tag if k in r["messages_json"]}
    ok, limited, failed = got["ok"], got["429"], got["500"]
    assert ok["engine_error"] is None and json.loads(ok["generated_text"])["answer"] and ok["prompt_tokens"] > 0
    assert limited["engine_error"] is None  # retried after the 429
    assert failed["engine_error"].startswith("http_error") and "canned internal error" in failed["engine_error"]
    assert [r["prompt_id"] for r in out.to_pylist()] == [r["prompt_id"] for r in rows]
    reqs = canned_server.requests
    assert sorted(r["status"] for r in reqs) == [200, 200, 429, 500]  # a 500 is not retried
    first = reqs[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    p = first["payload"]
    assert p["model"] == "canned-model" and p["temperature"] == 0.3 and p["max_tokens"] == 99 and p["seed"] == 7
    one = client.complete([{"role": "user", "content": "How do I flatten with Yosys?"}])
    assert one["engine_error"] is None and "answer" in json.loads(one["generated_text"])


def test_plain_openai_client_unreachable_server_is_an_engine_error() -> None:
    client = engines.OpenAIChat(OpenAIConfig(url="http://127.0.0.1:9/v1", api_key_env=None, max_retries=1,
                                             base_retry_wait_s=0.01, timeout_s=2), SamplingConfig())
    out = client(pa.Table.from_pylist(prompt_rows(["x"]), schema=PROMPT_SCHEMA)).to_pylist()
    assert out[0]["generated_text"] is None and out[0]["engine_error"].startswith("http_error")


# ------------------------------------------------------------------------ transformers

def test_hf_generator_runs_on_cpu(tiny_model: str) -> None:
    gen = HFGenerator(tiny_model, SamplingConfig(temperature=0.0, max_tokens=12).model_dump())
    rows = prompt_rows(["fsm recoding", "resource sharing"])
    out = gen(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA))
    assert out.schema == GENERATION_SCHEMA and out.num_rows == 2
    for r, src in zip(out.to_pylist(), rows):
        assert r["prompt_id"] == src["prompt_id"] and r["engine_error"] is None
        assert isinstance(r["generated_text"], str) and 0 < r["completion_tokens"] <= 12 and r["prompt_tokens"] > 50
    again = gen(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA))
    assert again.column("generated_text").to_pylist() == out.column("generated_text").to_pylist()  # greedy


def test_hf_generator_counts_a_failed_batch(tiny_model: str) -> None:
    gen = HFGenerator(tiny_model, {"max_tokens": 4})
    bad = prompt_rows(["x"])[0] | {"messages_json": "not json"}
    out = gen(pa.Table.from_pylist([bad], schema=PROMPT_SCHEMA)).to_pylist()
    assert out[0]["engine_error"].startswith("JSONDecodeError") and out[0]["generated_text"] is None


def test_tiny_model_is_built_in_process_without_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    import transformers

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub (or a from_pretrained) was used")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_hub)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_hub)
    gen = HFGenerator(engines.TINY, SamplingConfig(temperature=0.0, max_tokens=8).model_dump())
    out = gen(pa.Table.from_pylist(prompt_rows(["fsm recoding"]), schema=PROMPT_SCHEMA)).to_pylist()
    assert out[0]["engine_error"] is None and isinstance(out[0]["generated_text"], str)
    again = HFGenerator(engines.TINY, SamplingConfig(temperature=0.0, max_tokens=8).model_dump())
    assert again(pa.Table.from_pylist(prompt_rows(["fsm recoding"]), schema=PROMPT_SCHEMA)).to_pylist() == out
    assert engines.EngineConfig().random_weights and engines.engine_summary(engines.EngineConfig())["random_weights"]


def test_one_bad_row_in_a_batch_is_one_engine_error(tiny_model: str) -> None:
    gen = HFGenerator(tiny_model, {"max_tokens": 4, "temperature": 0.0})
    rows = prompt_rows(["a", "b", "c"])
    rows[1] = rows[1] | {"messages_json": "not json"}
    out = gen(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)).to_pylist()
    assert [r["prompt_id"] for r in out] == [r["prompt_id"] for r in rows]
    assert [r["engine_error"] is None for r in out] == [True, False, True]


def test_a_missing_local_model_is_named_before_anything_downloads(tmp_path) -> None:
    assert engines.local_model_problem(engines.TINY, False) is None
    assert engines.local_model_problem(str(tmp_path), False) is None
    problem = engines.local_model_problem("out/no-such-model", False)
    assert "engine.hf.model_path 'out/no-such-model'" in problem and "tiny" in problem and "allow_download" in problem
    assert engines.local_model_problem("out/no-such-model", True) is None


def test_openai_client_sends_nothing_after_the_deadline_and_cuts_what_is_in_flight(slow_server) -> None:
    """The job's deadline (``budget.max_wall_s``) bounds a batch against a server that takes 2 s a reply:
    requests paced after it are not sent, those in flight are cut at it; each such row's engine_error
    names the bound (was: every request sent and waited for, however long the server took)."""
    import time

    rows = prompt_rows([f"topic {k}" for k in range(6)])
    cfg = OpenAIConfig(url=slow_server.url, api_key_env=None, qps=2, timeout_s=30, max_retries=3)
    t0 = time.monotonic()
    client = engines.OpenAIChat(cfg, SamplingConfig(), deadline=time.time() + 1.2)
    out = client(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)).to_pylist()
    wall = time.monotonic() - t0
    assert wall < 1.2 + 1.0, wall  # not 2 s per reply, nor the 30 s attempt timeout
    assert [r["prompt_id"] for r in out] == [r["prompt_id"] for r in rows] and all(r["phase"] for r in out)
    errors = [r["engine_error"] for r in out]
    assert all(e.startswith(engines.DEADLINE_ERROR) for e in errors), errors
    sent = [e for e in errors if e.endswith("cut in flight")]
    assert len(sent) == slow_server.arrived == 3  # paced at 0, 0.5 and 1.0 s; the other three never sent
    assert sum(e.endswith("not sent") for e in errors) == 3
    late = engines.OpenAIChat(cfg, SamplingConfig(), deadline=time.time() - 1)
    assert late(pa.Table.from_pylist(rows[:2], schema=PROMPT_SCHEMA)).column("engine_error").to_pylist() == \
        [f"{engines.DEADLINE_ERROR} reached: not sent"] * 2 and slow_server.arrived == 3
    quick = engines.OpenAIChat(cfg.model_copy(update={"qps": None}), SamplingConfig(), deadline=time.time() + 30)
    assert quick.complete([{"role": "user", "content": "How do I flatten with Yosys?"}])["engine_error"] is None
