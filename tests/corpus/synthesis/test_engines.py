"""Engines: vLLM processor built (never run) without vllm, OpenAI against a canned server on
127.0.0.1, transformers generation with a tiny in-process model."""

from __future__ import annotations

import importlib.util
import json
import time

import pyarrow as pa
import pytest

from corpus.synthesis import engines
from corpus.synthesis.engines import (GENERATION_SCHEMA, EngineUnavailable, HFConfig, HFGenerator, OpenAIConfig,
                                      SamplingConfig, VLLMConfig)
from corpus.synthesis.seeds import PROMPT_SCHEMA
from tests.corpus.synthesis.conftest import CannedServer


def prompt_rows(topics: list[str], template: str = "synthesis/yosys_script_topic@v1") -> list[dict]:
    from corpus.synthesis.seeds import build_prompts
    from corpus.synthesis.templates import TEMPLATES
    from corpus.synthesis.validate import design_context

    return build_prompts(template.split("/")[0], len(topics), round_=0, seed=0, templates=[TEMPLATES[template]],
                         seeds={"topic": [{"kind": "topic", "topic": t} for t in topics]}, design=design_context())


# ------------------------------------------------------------------------ vLLM

def test_vllm_processor_builds_without_vllm(ray_session, tiny_model: str) -> None:
    assert importlib.util.find_spec("vllm") is None  # the point of this test: no vllm here
    cfg = VLLMConfig(model_source=tiny_model, concurrency=3, batch_size=8, accelerator_type="H100",
                     max_model_len=1024, engine_kwargs={"gpu_memory_utilization": 0.8})
    proc = engines.build_vllm_processor(cfg, SamplingConfig(temperature=0.2, max_tokens=64, seed=1))
    assert proc.list_stage_names() == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    stage = proc.get_stage_by_name("vLLMEngineStage")
    kw = stage.map_batches_kwargs
    assert kw["num_gpus"] == 1 and kw["accelerator_type"] == "H100"
    assert kw["compute"].max_size == 3 and kw["max_concurrency"] == 8
    ctor = stage.fn_constructor_kwargs
    assert ctor["model"] == tiny_model and ctor["batch_size"] == 8
    assert ctor["engine_kwargs"]["max_model_len"] == 1024 and ctor["engine_kwargs"]["gpu_memory_utilization"] == 0.8
    assert ctor["engine_kwargs"]["distributed_executor_backend"] == "uni"
    assert ctor["should_continue_on_error"] is True
    summary = engines.stage_summary(proc)
    assert summary[2]["stage"] == "vLLMEngineStage" and summary[2]["num_gpus"] == 1
    # our preprocess feeds the chat-template stage: messages + sampling params
    row = prompt_rows(["fsm recoding"])[0]
    pre = engines._vllm_pre(row, {"temperature": 0.2, "max_tokens": 64})
    assert pre["messages"][0]["role"] == "system" and "fsm recoding" in pre["messages"][1]["content"]
    assert pre["sampling_params"] == {"temperature": 0.2, "max_tokens": 64}
    post = engines._vllm_post({**row, "generated_text": "x", "num_input_tokens": 5, "num_generated_tokens": 1})
    assert post["generated_text"] == "x" and post["prompt_id"] == row["prompt_id"] and post["completion_tokens"] == 1


def test_vllm_tensor_parallel_uses_placement_groups(ray_session, tiny_model: str) -> None:
    proc = engines.build_vllm_processor(VLLMConfig(model_source=tiny_model, tensor_parallel_size=2,
                                                   pipeline_parallel_size=2), SamplingConfig())
    kw = proc.get_stage_by_name("vLLMEngineStage").map_batches_kwargs
    assert kw["num_gpus"] == 0 and "ray_remote_args_fn" in kw  # Ray executor: one PG of tp*pp GPU bundles
    assert kw["ray_remote_args_fn"].args[0] == 4


def test_vllm_preflight_messages() -> None:
    with pytest.raises(EngineUnavailable, match=r"0 GPU\(s\).*needs .* = 2.*vllm package is not importable"):
        engines.vllm_preflight({"CPU": 4}, False, tensor_parallel_size=2)
    with pytest.raises(EngineUnavailable, match="accelerator_type 'H100'.*A100"):
        engines.vllm_preflight({"GPU": 8, "accelerator_type:A100": 1}, True, accelerator_type="H100")
    with pytest.raises(EngineUnavailable, match="vllm package"):
        engines.vllm_preflight({"GPU": 8}, False)
    engines.vllm_preflight({"GPU": 8, "accelerator_type:H100": 1}, True, tensor_parallel_size=8,
                           accelerator_type="H100")


def test_asking_to_run_vllm_here_fails_fast(ray_session) -> None:
    t0 = time.perf_counter()
    with pytest.raises(EngineUnavailable, match="cannot run on this cluster.*--engine hf"):
        engines.check_vllm_runnable(VLLMConfig())
    assert time.perf_counter() - t0 < 5


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
    ok = engines._openai_post({**meta, "http_response": {"choices": [{"message": {"content": "hi"}}],
                                                         "usage": {"prompt_tokens": 3, "completion_tokens": 1}}})
    assert ok["generated_text"] == "hi" and ok["engine_error"] is None and ok["prompt_tokens"] == 3
    err = engines._openai_post({**meta, "http_response": {"error": {"message": "boom"}}})
    assert err["generated_text"] is None and err["engine_error"].startswith("http_error") and "boom" in err["engine_error"]
    assert engines._openai_post({**meta, "http_response": {"choices": []}})["engine_error"]
    assert engines._openai_post({**meta, "http_response": "<html>"})["engine_error"]


def test_openai_engine_against_a_canned_server(ray_session, canned_server: CannedServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("CF_CANNED_KEY", "sk-test")
    cfg = OpenAIConfig(url=canned_server.url, model="canned-model", api_key_env="CF_CANNED_KEY", max_retries=2,
                       base_retry_wait_s=0.05, qps=50, concurrency=1, batch_size=8)
    proc = engines.build_openai_processor(cfg, SamplingConfig(temperature=0.3, max_tokens=99, seed=7))
    assert proc.list_stage_names() == ["HttpRequestStage"]
    rows = prompt_rows(["fsm recoding", "RATE-LIMIT-429 please", "SERVER-ERROR-500 please"])
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA))
    out = {r["prompt_id"]: r for r in proc(ds).map_batches(engines.to_generation_rows, batch_format="pyarrow")
           .take_all()}
    assert len(out) == 3
    tag = {"fsm": "ok", "RATE-LIMIT-429": "429", "SERVER-ERROR-500": "500"}
    by_topic = {tag[k]: out[r["prompt_id"]] for r in rows for k in tag if k in r["messages_json"]}
    assert by_topic["ok"]["engine_error"] is None and json.loads(by_topic["ok"]["generated_text"])["answer"]
    assert by_topic["429"]["engine_error"] is None  # retried after the 429
    assert by_topic["500"]["engine_error"].startswith("http_error") and "canned internal error" in \
        by_topic["500"]["engine_error"]
    assert by_topic["ok"]["phase"] == "synthesis" and by_topic["ok"]["template_id"] == rows[0]["template_id"]
    # what we sent
    reqs = canned_server.requests
    assert len(reqs) == 4 and sorted(r["status"] for r in reqs) == [200, 200, 429, 500]
    first = reqs[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["content_type"] == "application/json"
    p = first["payload"]
    assert p["model"] == "canned-model" and p["temperature"] == 0.3 and p["max_tokens"] == 99 and p["seed"] == 7
    assert [m["role"] for m in p["messages"]] == ["system", "user"]


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


def test_hf_map_kwargs() -> None:
    kw = engines.hf_map_kwargs(HFConfig(model_path="m", concurrency=2, batch_size=3, num_gpus=0.5),
                               SamplingConfig(max_tokens=10))
    assert kw["compute"].min_size == kw["compute"].max_size == 2 and kw["batch_size"] == 3 and kw["num_gpus"] == 0.5
    assert kw["fn_constructor_kwargs"]["model_path"] == "m" and kw["fn_constructor_kwargs"]["sampling"]["max_tokens"] == 10
    auto = engines.hf_map_kwargs(HFConfig(model_path="m", concurrency=(1, 4)), SamplingConfig())["compute"]
    assert (auto.min_size, auto.max_size) == (1, 4)
