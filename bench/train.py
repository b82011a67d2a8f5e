"""Training throughput: Ray Train + DeepSpeed path vs a plain single-process PyTorch loop.

    python bench/train.py                 # CPU: tiny Llama + LoRA, 1 Ray Train worker vs plain loop
    python bench/train.py --gpu           # 1 GPU: ~1B Llama (random), LoRA, bf16, ZeRO-2: tokens/s + MFU
    python bench/train.py --pack          # packing: time per example from 10k to 1M examples (linear?)
    python bench/train.py --lora-step     # fused_lora against PEFT's LoRA forward: one step's time

CPU mode: both sides train the same tiny random Llama + LoRA on the same packed token rows
(the bundled sample dataset prepared by ``training.data.prepare_local``, the preparation every
runner uses), same micro batch, same number of optimizer steps, same thread count. The plain
side is ``model(**batch).loss.backward(); AdamW.step()``; the Ray side is
``training.trainer.build_trainer`` (TorchTrainer, Ray Data shard, DeepSpeed ZeRO-2 engine,
gloo) with 1 worker. tokens/s on both sides counts non-pad tokens over
training-step time (set-up, evaluation and checkpoints excluded; the Ray side's end-to-end
wall time is reported as well). Target: plain/ray ≤ 1.25.

GPU mode (``--gpu``, one GPU, no Ray and no network needed: torch, transformers, peft, and
DeepSpeed + pydantic as carried wheels) runs every configuration of ``--gpu-plan`` (model ~1B or
~8B Llama shape with random weights, side, micro batch, sequence length, activation
checkpointing) in a fresh process: the project's ``training.loop.run_training`` (the torchrun
code path: DeepSpeed ZeRO-2, bf16) or a plain PEFT + fused AdamW loop, on the same rows, packed
for real from random examples (``pack_rows``; micro batches laid out as the job lays them out). Per run: tokens/s, MFU =
(4·N_matmul + 6·N_lora + 6·layers·seq·hidden) FLOPs per token × tokens/s / ``--peak-tflops``
(frozen base weights need no weight gradients), peak memory, OOM; each project run's ratio to
the plain loop's best micro batch. Results are written after every run to
bench/results/train_gpu.json. ``--gpu-device cpu`` runs the same logic on a tiny model here.
CPU mode results: bench/results/train.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

RESULTS = REPO / "bench" / "results" / "train.json"


def write_result(key: str, value: dict[str, Any], results: Path = RESULTS) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(results.read_text()) if results.exists() else {}
    data[key] = value
    tmp = results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(results)


def cpu_config(args: argparse.Namespace, output_dir: str) -> Any:
    from training.config import FinetuneConfig

    return FinetuneConfig(
        dataset_dir=str(REPO / "sample" / "dataset"), phase="rtl_design", output_dir=output_dir, base_model="tiny",
        tiny={"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": 4, "vocab_size": 512},
        max_length=args.max_length, packing=True, validation_fraction=0.1,
        lora={"r": 16, "alpha": 32, "dropout": 0.0,
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        optim={"lr": 1e-3, "epochs": args.epochs, "micro_batch_size": args.micro_batch, "warmup_ratio": 0.0},
        deepspeed={"zero_stage": 2, "bf16": False, "torch_adam": True},
        scaling={"num_workers": 1, "use_gpu": False, "cpus_per_worker": args.threads},
        eval_every_steps=10**6, eval_max_batches=1, log_every_steps=10**6, max_failures=0,
        tracking={"tensorboard": False},
    )


def token_rows(cfg: Any) -> tuple[Any, str, int]:
    from training.data import load_tokenizer, prepare_local

    data = prepare_local(cfg)
    return data.train, data.base_path, load_tokenizer(data.base_path).pad_token_id


def plain_steps(model: Any, batches: Any, pad_id: int, *, lr: float, layout: str, device: str = "cpu",
                on_step: Any = None) -> dict[str, Any]:
    """The reference loop: ``loss.backward(); clip; AdamW.step()`` per micro batch (the job's own
    ``collate``), no Ray, no DeepSpeed; fused AdamW and a synchronise per step on CUDA."""
    import torch

    from training.data import batch_tokens, collate

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=device == "cuda")
    model.train()
    tokens, elapsed, steps, step_ends = 0, 0.0, 0, []
    t0 = time.perf_counter()
    for raw in batches:
        b = {k: v.to(device) for k, v in collate(raw, pad_id, layout=layout).items()}
        model(**b).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        tokens += batch_tokens(raw)
        steps += 1
        elapsed += time.perf_counter() - t0
        t0 = time.perf_counter()
        step_ends.append(elapsed)
        if on_step is not None:
            on_step()
    return {"tokens_per_s": tokens / elapsed if elapsed else 0.0, "steps": steps, "tokens": tokens,
            "train_time_s": elapsed, "step_ends": step_ends}


def plain_loop(cfg: Any, table: Any, base: str, pad_id: int, threads: int) -> dict[str, float]:
    """Single process, no Ray, no DeepSpeed: the reference, ``cfg.optim.epochs`` epochs of whole micro batches."""
    import itertools

    import torch

    from training.data import batch_layout, iter_table_batches
    from training.model import build_lora_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_lora_model(base, cfg)
    mb = cfg.optim.micro_batch_size
    batches = itertools.chain.from_iterable(itertools.islice(iter_table_batches(table, mb), table.num_rows // mb)
                                            for _ in range(cfg.optim.epochs))
    res = plain_steps(model, batches, pad_id, lr=cfg.optim.lr, layout=batch_layout(cfg.packing, cfg.attn_implementation))
    del res["step_ends"]  # the GPU mode's steady state needs them; this result does not
    return res


def ray_path(cfg: Any, table: Any, base: str, pad_id: int, threads: int) -> tuple[dict[str, float], dict[str, float]]:
    """(plain loop re-measured while the local Ray is up and idle, Ray Train + DeepSpeed with 1 worker)."""
    import ray
    import ray.data

    from training.loop import Plan
    from training.trainer import build_trainer

    ray.init(num_cpus=max(threads, 1), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}})
    try:
        ds = {"train": ray.data.from_arrow(table).materialize(), "validation": ray.data.from_arrow(table.slice(0, 2))}
        plain_ray_up = plain_loop(cfg, table, base, pad_id, threads)
        plan = Plan.make(cfg, table.num_rows, 1, pad_id, base)
        t0 = time.perf_counter()
        result = build_trainer(cfg, ds, plan, run_name="bench").fit()
        wall = time.perf_counter() - t0
        with result.checkpoint.as_directory() as d:
            meta = json.loads(Path(d, "meta.json").read_text())
    finally:
        ray.shutdown()
    return plain_ray_up, {
        "tokens_per_s": meta["tokens"] / meta["train_time_s"], "steps": meta["step"], "tokens": meta["tokens"],
        "train_time_s": meta["train_time_s"], "data_wait_s": meta["data_wait_s"],
        "epoch_start_wait_s": meta["epoch_start_wait_s"], "fit_wall_s": wall,
        "steady_tokens_per_s": meta["tokens"] / (meta["train_time_s"] - meta["epoch_start_wait_s"])}


def run_cpu(args: argparse.Namespace) -> dict[str, Any]:
    # Ray starts workers at nice 15 by default; on a shared 2-core box that alone halves their speed.
    os.environ.setdefault("RAY_worker_niceness", "0")
    with tempfile.TemporaryDirectory(prefix="cf-bench-") as tmp:
        cfg = cpu_config(args, tmp)
        cfg = cfg.model_copy(update={"storage_path": os.path.join(tmp, "ckpt")})
        table, base, pad_id = token_rows(cfg)
        import pyarrow as pa

        # Enough rows for at least --min-steps optimizer steps, so the fixed start-up cost of an
        # epoch's pipeline does not dominate a short run.
        repeat = max(args.repeat, -(-args.min_steps * args.micro_batch // max(1, table.num_rows)))
        table = pa.concat_tables([table] * repeat)
        plain = plain_loop(cfg, table, base, pad_id, args.threads)
        plain_ray_up, ray_side = ray_path(cfg, table, base, pad_id, args.threads)
    ratio = plain_ray_up["tokens_per_s"] / ray_side["tokens_per_s"]
    ratio_cold = plain["tokens_per_s"] / ray_side["tokens_per_s"]
    ratio_steady = plain_ray_up["tokens_per_s"] / ray_side["steady_tokens_per_s"]
    result = {
        "mode": "cpu",
        "model": {"hidden_size": args.hidden, "num_layers": args.layers, "max_length": args.max_length},
        "micro_batch_size": args.micro_batch, "epochs": args.epochs, "repeat": repeat, "threads": args.threads,
        "cpu_count": os.cpu_count(), "rows": table.num_rows,
        "plain_no_ray_running": plain, "plain_with_ray_up": plain_ray_up, "ray_deepspeed_1_worker": ray_side,
        "overhead_ratio": round(ratio, 3), "overhead_ratio_vs_no_ray_running": round(ratio_cold, 3),
        "overhead_ratio_steady_state": round(ratio_steady, 3),
        "target_ratio": 1.25, "meets_target": ratio <= 1.25,
    }
    print(f"plain PyTorch loop (no Ray running) : {plain['tokens_per_s']:10.0f} tokens/s ({plain['steps']} steps)")
    print(f"plain PyTorch loop (local Ray up)   : {plain_ray_up['tokens_per_s']:10.0f} tokens/s")
    print(f"Ray Train + DeepSpeed, 1 worker     : {ray_side['tokens_per_s']:10.0f} tokens/s ({ray_side['steps']} steps, "
          f"waiting for data {ray_side['data_wait_s']:.2f} of {ray_side['train_time_s']:.2f} s, "
          f"fit() wall {ray_side['fit_wall_s']:.1f} s)")
    print(f"overhead (plain with Ray up / ray)  : {ratio:.3f}x (target <= 1.25x); vs no Ray running: {ratio_cold:.3f}x")
    print(f"  without the epoch's pipeline start ({ray_side['epoch_start_wait_s']:.2f} s): {ratio_steady:.3f}x")
    return result


# Llama-architecture shapes (random weights): hidden, intermediate, layers, heads, kv heads, vocab
SHAPES = {
    "tiny": (64, 128, 2, 4, 4, 512),  # CPU check of the benchmark itself (--gpu-device cpu)
    "1b": (2048, 5632, 22, 32, 4, 32000),  # TinyLlama-1.1B
    "8b": (4096, 14336, 32, 32, 8, 128256),  # Llama-3-8B
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# (model, side, micro batch, seq, activation checkpointing[, overrides]): "quick" fits a 15-minute
# device slot: the plain loop, the project with torch_varlen at its best micro batch, with and
# without fused LoRA (sdpa's figures are in the results already), rows of 8,192 tokens.
# The sixth element overrides spec fields: the attention kernel, DeepSpeed settings, fused_lora, the
# plain loop's batch layout (``flat`` against the default ``rows`` with sdpa), or a torch.profiler
# table of steps 4-5.
ZERO3_OFFLOAD = {"deepspeed": {"zero_stage": 3, "offload_param": True}}
VARLEN = {"attn": "torch_varlen"}
GPU_PLANS = {
    "quick": [("1b", "plain", 16, 2048, False), ("1b", "project", 32, 2048, False, VARLEN),
              ("8b", "plain", 4, 2048, False), ("8b", "project", 8, 2048, False, VARLEN),
              ("8b", "project", 8, 2048, False, {**VARLEN, "fused_lora": "off"}),
              ("8b", "project", 1, 8192, True, VARLEN), ("8b", "project", 10, 2048, False, VARLEN)],
    "full": [("1b", s, mb, 2048, False) for mb in (4, 16) for s in ("plain", "project")]
    + [("8b", s, mb, 2048, False) for mb in (2, 6) for s in ("plain", "project")]
    + [("1b", "project", mb, 2048, False, VARLEN) for mb in (16, 32)]
    + [("8b", "project", mb, 2048, False, VARLEN) for mb in (4, 8)]
    + [("8b", "project", 16, 2048, True), ("8b", "project", 1, 8192, True), ("8b", "project", 2, 8192, True),
       ("8b", "project", 4, 2048, False, ZERO3_OFFLOAD)],
    # what bounds the MFU: bigger micro batches, the flattened layout under sdpa, where the time goes
    "probe": [("8b", "project", 8, 2048, False), ("1b", "project", 32, 2048, False),
              ("1b", "plain", 16, 2048, False, {"layout": "flat"}),
              ("8b", "project", 4, 2048, False, {"profile": True}),
              ("1b", "project", 16, 2048, False, {"profile": True}),
              ("8b", "project", 8, 2048, False, {**VARLEN, "profile": True})],
}
# the quick plan where torch_varlen does not run (bench/gpu_check.sh picks it when its GPU test fails)
GPU_PLANS["quick-sdpa"] = [(*run[:5], {k: v for k, v in run[5].items() if k != "attn"}) if len(run) > 5 else run
                           for run in GPU_PLANS["quick"]]
WARMUP_STEPS = 3  # steps left out of the steady-state rate (CUDA/Triton set-up, first allocations)


def gpu_spec(model: str, side: str, micro_batch: int, seq: int, gc: bool | int, args: argparse.Namespace,
             extra: dict | None = None) -> dict:
    extra = extra or {}
    return {"model": model, "side": side, "micro_batch": micro_batch, "seq": seq, "gradient_checkpointing": gc,
            "steps": args.gpu_steps, "attn": args.gpu_attn, "fused_lora": args.gpu_fused_lora, "device": args.gpu_device,
            "peak_tflops": args.peak_tflops, **extra, "deepspeed": {"zero_stage": 2, **extra.get("deepspeed", {})}}


def packed_rows(seq: int, n_rows: int, vocab: int, seed: int = 0) -> Any:
    """``n_rows`` rows of ``seq`` tokens packed for real (``pack_rows``) from random examples of
    log-normal lengths (median seq/8), random token ids: a token table as the job trains on."""
    import numpy as np

    from training.data import pack_rows, token_table

    rng = np.random.default_rng(seed)
    rows: list = []
    while len(rows) < n_rows:
        lengths = np.clip(rng.lognormal(np.log(seq / 8), 0.9, 64 * 8).astype(int), 16, seq)
        seqs = [(ids := rng.integers(3, vocab, n).tolist(), ids) for n in lengths.tolist()]
        rows += [r for r in pack_rows(seqs, seq) if len(r[0]) >= seq * 0.9]  # full rows, as at scale
    return token_table(rows[:n_rows])


def example_square_sum(position_ids: list[int]) -> int:
    """Σ length² over a packed row's examples (a new example wherever the position restarts at 0)."""
    starts = [i for i, p in enumerate(position_ids) if p == 0 or i == 0] + [len(position_ids)]
    return sum((b - a) ** 2 for a, b in zip(starts, starts[1:]))


def profiler(cuda: bool) -> Any:
    """torch.profiler over steps 5-6 (after 3 skipped and 1 warm-up step); ``step()`` after each step."""
    import torch.profiler as tp

    acts = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if cuda else [])
    prof = tp.profile(activities=acts, schedule=tp.schedule(wait=3, warmup=1, active=2, repeat=1))
    prof.start()
    return prof


def gpu_run(spec: dict, out_dir: str) -> dict[str, Any]:
    """One configuration in this (fresh) process: the project's ``run_training`` or a plain loop.

    ``out_dir`` takes the run's checkpoint (the caller removes it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import training.model as tm
    from training.config import FinetuneConfig
    from training.data import batch_layout, iter_table_batches
    from training.loop import LocalSession, Plan, init_distributed, run_training

    hidden, inter, layers, heads, kv, vocab = SHAPES[spec["model"]]
    seq, mb, steps, cuda = spec["seq"], spec["micro_batch"], spec["steps"], spec["device"] == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    mcfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=seq,
                       tie_word_embeddings=False)
    table = packed_rows(seq, steps * mb, vocab)
    cfg = FinetuneConfig(
        base_model="random", output_dir=out_dir, max_length=seq,
        attn_implementation=spec["attn"], gradient_checkpointing=spec["gradient_checkpointing"],
        fused_lora=spec["fused_lora"],
        lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": LORA_TARGETS},
        optim={"lr": 1e-4, "epochs": 1, "micro_batch_size": mb, "warmup_ratio": 0.0},
        deepspeed={**spec["deepspeed"], "bf16": cuda}, scaling={"num_workers": 1, "use_gpu": cuda},
        eval_every_steps=10**6, eval_max_batches=1, log_every_steps=1, tracking={"tensorboard": False},
    )
    zero3 = cfg.deepspeed.zero_stage == 3

    def random_base(*_: Any, **__: Any) -> Any:  # the same random model for both sides, built on the device
        torch.manual_seed(0)  # (under ZeRO-3, Transformers builds it partitioned: deepspeed.zero.Init)
        with contextlib.nullcontext() if zero3 else torch.device("cuda" if cuda else "cpu"):
            return LlamaForCausalLM._from_config(mcfg, dtype=dtype, attn_implementation=spec["attn"])

    step_ends: list[float] = []  # project: when each optimizer step was logged
    prof = profiler(cuda) if spec.get("profile") else None
    on_step = prof.step if prof is not None else None

    class TimedSession(LocalSession):
        def log(self, event: dict[str, Any]) -> None:
            if event.get("event") == "step":
                step_ends.append(time.perf_counter())
                if on_step is not None:
                    on_step()

    project = spec["side"] == "project"
    liger, fused = project and tm.liger_wanted(cfg.liger_kernel, cuda), project and tm.fused_lora_wanted(cfg)
    t0 = time.perf_counter()
    tm.load_base_model = random_base  # build_lora_model's loader: no checkpoint on disk
    try:
        if project:
            rank, world = init_distributed(cuda)
            plan = Plan.make(cfg, table.num_rows, world, 0, "random")
            session = TimedSession(table, table.slice(0, mb), os.path.join(cfg.output_dir, "ck"), rank, world,
                                   quiet=True)
            state = run_training(cfg, plan, session)
            tokens, train_s, done = state.tokens, state.train_time_s, state.step
        else:  # plain: the same model construction without Liger or fused LoRA, a hand-written loop
            model = tm.build_lora_model("random", cfg.model_copy(update={"liger_kernel": "off", "fused_lora": "off"}))
            res = plain_steps(model, iter_table_batches(table, mb), 0, lr=1e-4,
                              layout=spec.get("layout") or batch_layout(True, spec["attn"]),
                              device="cuda" if cuda else "cpu", on_step=on_step)
            tokens, train_s, done, step_ends = res["tokens"], res["train_time_s"], res["steps"], res["step_ends"]
    except torch.OutOfMemoryError as exc:
        return {**spec, "oom": True, "fused_lora_applied": fused, "error": str(exc).splitlines()[0][:300]}
    profile = None
    if prof is not None:
        prof.stop()
        profile = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                            row_limit=25, max_name_column_width=70)
        print(profile, flush=True)
    kv_dim = hidden * kv // heads
    n_matmul = layers * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter) + hidden * vocab
    n_lora = 16 * layers * ((hidden + hidden) * 2 + (hidden + kv_dim) * 2 + (hidden + inter) * 3)
    flops_per_token = 4 * n_matmul + 6 * n_lora + 6 * layers * seq * hidden
    tps_all = tokens / train_s if train_s else 0.0
    # steady state: the steps after the first WARMUP_STEPS (step k trains rows k·mb ... (k+1)·mb - 1)
    row_tokens = table.column("n_tokens").to_pylist()
    w = WARMUP_STEPS if len(step_ends) > WARMUP_STEPS + 1 else 0
    steady_s = step_ends[-1] - step_ends[w - 1] if w else 0.0
    steady = slice(w * mb, len(step_ends) * mb)
    tps = sum(row_tokens[steady]) / steady_s if steady_s > 0 else tps_all
    # The MFU counts causal attention over the whole row (seq); a packed row's examples only
    # attend within themselves, 6·layers·hidden·Σ length² FLOPs per row: the stricter figure.
    sq = sum(example_square_sum(p) for p in table.column("position_ids").to_pylist()[steady])
    flops_examples = sum(row_tokens[steady]) * (4 * n_matmul + 6 * n_lora) + 6 * layers * hidden * sq
    mfu_examples = flops_examples / steady_s / (spec["peak_tflops"] * 1e12) if steady_s > 0 else None
    return {**spec, "oom": False, "liger_kernel": liger, "fused_lora_applied": fused, "steps_done": done,
            "tokens": tokens,
            "train_time_s": round(train_s, 2), "warmup_steps_left_out": w, "profile": profile,
            "tokens_per_s_with_warmup": round(tps_all, 1),
            "tokens_per_s": round(tps, 1), "mfu": round(tps * flops_per_token / (spec["peak_tflops"] * 1e12), 4),
            "mfu_example_attention": round(mfu_examples, 4) if mfu_examples is not None else None,
            "params_matmul": n_matmul, "params_lora": n_lora, "setup_and_run_s": round(time.perf_counter() - t0, 1),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
            "device_name": torch.cuda.get_device_name(0) if cuda else "cpu"}


def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration of ``--gpu-plan`` in a fresh process (one's memory never counts against the
    next), results written after each; then each project run against the plain loop's best micro batch."""
    plan = [("tiny", side, 2, 256, gc) for side in ("plain", "project") for gc in (False, 1)] \
        + [("tiny", "project", 2, 256, False, {"deepspeed": {"zero_stage": 3}}), ("tiny", "project", 2, 256, 1, VARLEN),
           ("tiny", "plain", 2, 256, False, {"layout": "flat", "profile": True}),
           ("tiny", "project", 2, 256, False, {"fused_lora": "off"})] \
        if args.gpu_device == "cpu" else GPU_PLANS[args.gpu_plan]
    out: dict[str, Any] = {"plan": f"cuda-{args.gpu_plan}" if args.gpu_device == "cuda" else "cpu-check", "runs": [],
                           "command": " ".join(["python", "bench/train.py", *sys.argv[1:]])}
    for model, side, mb, seq, gc, *ds in plan:
        spec = gpu_spec(model, side, mb, seq, gc, args, *ds)
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)}
        try:
            p = subprocess.run([sys.executable, __file__, "--gpu-run", json.dumps(spec)], capture_output=True,
                               text=True, timeout=args.gpu_run_timeout, env=env)
            line = next((ln for ln in p.stdout.splitlines()[::-1] if ln.startswith("RESULT ")), None)
            res = json.loads(line[7:]) if line else {**spec, "failed": True, "exit_code": p.returncode,
                                                     "stderr": p.stderr[-1500:]}
        except subprocess.TimeoutExpired:
            res = {**spec, "failed": True, "timed_out_s": args.gpu_run_timeout}
        res["process_wall_s"] = round(time.perf_counter() - t0, 1)
        out["runs"].append(res)
        strict = res.get("mfu_example_attention")
        shown = "OOM" if res.get("oom") else "FAILED" if res.get("failed") else (
            f"{res['tokens_per_s']:>9,.0f} tokens/s  MFU {res['mfu']:.1%} "
            f"({'-' if strict is None else f'{strict:.1%}'} counting attention within examples)  "
            f"peak {res['peak_memory_gib']} GiB")
        zero = f"zero{spec['deepspeed']['zero_stage']}{'+offload' if spec['deepspeed'].get('offload_param') else ''}"
        fused = res.get("fused_lora_applied")  # unknown when the run's process failed
        lora = f"lora ({spec['fused_lora']})" if fused is None else "fused lora" if fused else "lora"
        print(f"{model:>4} {side:<7} mb {mb:<2} seq {seq:<5} ckpt {str(gc):<5} {zero:<13} {spec['attn']:<12} "
              f"{lora:<10}: {shown}  ({res['process_wall_s']} s)", flush=True)
        write_result(out["plan"], out, args.gpu_results)
    for model in dict.fromkeys(r["model"] for r in out["runs"]):
        ok = [r for r in out["runs"] if r["model"] == model and r.get("tokens_per_s")]
        plain = max((r["tokens_per_s"] for r in ok if r["side"] == "plain"), default=None)
        for r in ok:
            if r["side"] == "project" and plain:
                r["ratio_vs_best_plain"] = round(r["tokens_per_s"] / plain, 3)
    write_result(out["plan"], out, args.gpu_results)
    return out


def run_pack(args: argparse.Namespace) -> dict[str, Any]:
    """``training.data.pack_rows`` at 10k, 100k and 1M examples: seconds, µs per example, rows, fill.

    Lengths are drawn from a log-normal (median 120 tokens, capped at ``--pack-max-length``), like
    chat examples; each length's token list is shared between examples so that 1M examples fit in
    memory, the rows themselves are built for real. The baseline is the same examples' bare
    concatenation into rows of arrival order (next fit): the copy any packer pays, measured in the
    same run; linear packing keeps the ratio flat from 10k to 1M.
    """
    import numpy as np

    from training.data import pack_rows

    max_len = args.pack_max_length
    shared = {n: list(range(1, n + 1)) for n in range(1, max_len + 1)}
    out: dict[str, Any] = {"max_length": max_len, "sizes": {}}
    for n in args.pack_sizes:
        lengths = np.minimum(np.random.default_rng(0).lognormal(np.log(120), 0.8, n).astype(int) + 2, max_len)
        seqs = [(shared[k], shared[k]) for k in lengths.tolist()]
        t0 = time.perf_counter()
        rows, ids, room = [], [], max_len  # next fit, no sort: the plain copy
        for a, _ in seqs:
            if len(a) > room:
                rows.append(ids)
                ids, room = [], max_len
            ids += a
            room -= len(a)
        rows.append(ids)
        plain_s = time.perf_counter() - t0
        n_plain = len(rows)
        del rows, ids
        t0 = time.perf_counter()
        packed = pack_rows(seqs, max_len)
        pack_s = time.perf_counter() - t0
        tokens = int(lengths.sum())
        out["sizes"][str(n)] = {
            "examples": n, "tokens": tokens, "pack_s": round(pack_s, 3), "us_per_example": round(1e6 * pack_s / n, 2),
            "rows": len(packed), "fill": round(tokens / (len(packed) * max_len), 4),
            "plain_next_fit_s": round(plain_s, 3), "plain_rows": n_plain, "ratio_vs_plain": round(pack_s / plain_s, 2),
        }
        print(f"{n:>9,} examples: pack {pack_s:.2f} s ({1e6 * pack_s / n:.1f} µs/example), {len(packed):,} rows "
              f"filled {tokens / (len(packed) * max_len):.1%}; plain next-fit copy {plain_s:.2f} s "
              f"({n_plain:,} rows) → ratio {pack_s / plain_s:.2f}", flush=True)
        del packed, seqs
    sizes = sorted(out["sizes"].values(), key=lambda r: r["examples"])
    out["us_per_example_growth"] = round(sizes[-1]["us_per_example"] / sizes[0]["us_per_example"], 2)
    print(f"µs per example, {sizes[-1]['examples']:,} vs {sizes[0]['examples']:,} examples: "
          f"x{out['us_per_example_growth']} (1.0 = linear)")
    return out


def run_lora_step(args: argparse.Namespace) -> dict[str, Any]:
    """One forward + backward of a random Llama with LoRA on all seven projections: PEFT's own
    forward against ``fused_lora`` (the same weights), for each ``--lora-dropout``, all sides
    alternated ``--lora-repeats`` times in one process; the best time of each and the ratios.
    CPU: 4 layers, 512 wide, 4 rows of 512 tokens, ``--threads`` threads; CUDA (``--lora-device
    cuda``): the 1.1B shape in bf16, 4 rows of 2,048."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.fused_lora import fuse_lora

    cuda = args.lora_device == "cuda"
    torch.set_num_threads(args.threads)
    hidden, inter, layers, heads, kv, vocab = SHAPES["1b"] if cuda else (512, 1408, 4, 8, 8, 1000)
    seq = 2048 if cuda else 512
    torch.manual_seed(0)
    mcfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=seq)
    with torch.device(args.lora_device):
        base = LlamaForCausalLM._from_config(mcfg, dtype=torch.bfloat16 if cuda else torch.float32)
    base.config.use_cache = False
    models = {}
    for p in args.lora_dropout:
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=p, target_modules=LORA_TARGETS)
        models[("peft", p)] = get_peft_model(copy.deepcopy(base), lora, autocast_adapter_dtype=False)
        models[("fused", p)] = copy.deepcopy(models[("peft", p)])
        fuse_lora(models[("fused", p)])
    del base
    ids = torch.randint(3, vocab, (4, seq), device=args.lora_device)
    times: dict[tuple, list[float]] = {k: [] for k in models}
    for _ in range(args.lora_repeats):
        for key, model in models.items():
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            if cuda:
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    best = {k: min(v[1:] or v) for k, v in times.items()}  # the first step of each warms up
    runs = []
    for p in args.lora_dropout:
        peft_s, fused_s = best[("peft", p)], best[("fused", p)]
        runs.append({"lora_dropout": p, "peft_s": round(peft_s, 4), "fused_s": round(fused_s, 4),
                     "fused_over_peft": round(fused_s / peft_s, 3),
                     "peft_over_peft_no_dropout": round(peft_s / best[("peft", 0.0)], 3)
                     if ("peft", 0.0) in best else None})
        print(f"forward + backward, {layers} layers x {hidden} wide, 4 x {seq} tokens on {args.lora_device}, "
              f"LoRA dropout {p}: PEFT {peft_s * 1e3:.1f} ms, fused_lora {fused_s * 1e3:.1f} ms -> "
              f"{fused_s / peft_s:.3f} of PEFT's time", flush=True)
    return {"device": args.lora_device, "shape": {"hidden": hidden, "layers": layers, "rows": 4, "seq": seq},
            "threads": args.threads, "repeats": args.lora_repeats, "runs": runs,
            "command": " ".join(["python", "bench/train.py", *sys.argv[1:]])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true",
                   help="~1B and ~8B Llama LoRA bf16 on one GPU: project vs plain loop (tokens/s, MFU, memory)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="rows = the sample's packed rows repeated N times (at least)")
    p.add_argument("--min-steps", type=int, default=400, help="repeat the rows until a run has this many steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gpu-plan", choices=sorted(GPU_PLANS), default="quick",
                   help="configurations (model, side, micro batch, seq, checkpointing); each in a fresh process")
    p.add_argument("--gpu-steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--gpu-attn", default="sdpa",
                   help="attn_implementation (sdpa, flash_attention_2, torch_varlen, eager)")
    p.add_argument("--gpu-fused-lora", choices=["auto", "off"], default="auto",
                   help="fused_lora of the project's runs that do not set it (training/fused_lora.py)")
    p.add_argument("--gpu-device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: run the benchmark's own logic on a tiny model (no GPU needed)")
    p.add_argument("--gpu-run-timeout", type=int, default=900, help="seconds one configuration may take")
    p.add_argument("--gpu-results", type=Path, default=REPO / "bench" / "results" / "train_gpu.json")
    p.add_argument("--gpu-run", default=None, help=argparse.SUPPRESS)  # internal: one configuration (JSON)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    p.add_argument("--pack", action="store_true", help="packing time per example at 10k..1M examples")
    p.add_argument("--pack-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--pack-max-length", type=int, default=2048)
    p.add_argument("--lora-step", action="store_true", help="fused_lora against PEFT's forward: one step's time")
    p.add_argument("--lora-device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--lora-repeats", type=int, default=6)
    p.add_argument("--lora-dropout", type=float, nargs="+", default=[0.0, 0.05],
                   help="LoRA dropout values, each measured on both sides (the YAMLs use 0.05)")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"JSON file the result is merged into ({RESULTS})")
    args = p.parse_args()
    if args.gpu_run:
        with tempfile.TemporaryDirectory(prefix="cf-bench-gpu-") as out_dir:
            result = gpu_run(json.loads(args.gpu_run), out_dir)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    if args.pack:
        write_result("pack", run_pack(args), args.results)
    elif args.lora_step:
        write_result(f"fused_lora_{args.lora_device}", run_lora_step(args), args.results)
    elif args.gpu:
        run_gpu(args)
        print(f"wrote {args.gpu_results}")
        return 0
    else:
        write_result("cpu", run_cpu(args), args.results)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
