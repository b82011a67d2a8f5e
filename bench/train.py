"""Training throughput: Ray Train + DeepSpeed path vs a plain single-process PyTorch loop.

    python bench/train.py                 # CPU: tiny Llama + LoRA, 1 Ray Train worker vs plain loop
    python bench/train.py --gpu           # 1 GPU: ~1B Llama (random), LoRA, bf16, ZeRO-2: tokens/s + MFU
    python bench/train.py --pack          # packing: time per example from 10k to 1M examples (linear?)

CPU mode: both sides train the same tiny random Llama + LoRA on the same packed token rows
(the bundled sample dataset prepared by ``training.data.prepare_local``, the preparation every
runner uses), same micro batch, same number of optimizer steps, same thread count. The plain
side is ``model(**batch).loss.backward(); AdamW.step()``; the Ray side is
``training.trainer.build_trainer`` (TorchTrainer, Ray Data shard, DeepSpeed ZeRO-2 engine,
gloo) with 1 worker. tokens/s on both sides counts non-pad tokens over
training-step time (set-up, evaluation and checkpoints excluded; the Ray side's end-to-end
wall time is reported as well). Target: plain/ray ≤ 1.25.

GPU mode runs ``training.loop.run_training`` in-process on one GPU (no Ray, the torchrun code
path), on random token rows; MFU = (4·N_base + 6·N_lora + attention) FLOPs per token × tokens/s
/ peak bf16 FLOPs (frozen base weights need no weight gradients). Results: bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


def plain_loop(cfg: Any, table: Any, base: str, pad_id: int, threads: int) -> dict[str, float]:
    """Single process, no Ray, no DeepSpeed: the reference."""
    import torch

    from training.data import batch_tokens, collate, iter_table_batches
    from training.model import build_lora_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_lora_model(base, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    steps_per_epoch = table.num_rows // cfg.optim.micro_batch_size
    tokens, elapsed, steps = 0, 0.0, 0
    for _ in range(cfg.optim.epochs):
        t0 = time.perf_counter()
        for k, raw in enumerate(iter_table_batches(table, cfg.optim.micro_batch_size)):
            if k >= steps_per_epoch:
                break
            b = collate(raw, pad_id, flatten=cfg.packing)  # the job's own batches
            loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += batch_tokens(raw)
            steps += 1
            elapsed += time.perf_counter() - t0
            t0 = time.perf_counter()
    return {"tokens_per_s": tokens / elapsed, "steps": steps, "tokens": tokens, "train_time_s": elapsed}


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


def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    """~1B Llama (random), LoRA, bf16, ZeRO-2 on one GPU via the no-Ray code path."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.config import FinetuneConfig
    from training.data import token_table
    from training.loop import LocalSession, Plan, init_distributed, run_training

    seq, vocab = args.gpu_seq, 32000
    mcfg = LlamaConfig(vocab_size=vocab, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=seq)
    with tempfile.TemporaryDirectory(prefix="cf-bench-gpu-") as tmp:
        torch.manual_seed(0)
        base = os.path.join(tmp, "base")
        model = LlamaForCausalLM(mcfg)
        n_base = sum(p.numel() for p in model.parameters())
        model.to(torch.bfloat16).save_pretrained(base)
        del model
        rng = np.random.default_rng(0)
        n_rows = args.gpu_steps * args.gpu_micro_batch
        rows = [(ids := rng.integers(1, vocab, seq).tolist(), ids, list(range(seq)), 1) for _ in range(n_rows)]
        table = token_table(rows)
        cfg = FinetuneConfig(
            base_model=base, output_dir=tmp, max_length=seq,
            lora={"r": 16, "alpha": 32, "dropout": 0.0,
                  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
            optim={"lr": 1e-4, "epochs": 1, "micro_batch_size": args.gpu_micro_batch, "warmup_ratio": 0.0},
            deepspeed={"zero_stage": 2, "bf16": True}, scaling={"num_workers": 1, "use_gpu": True},
            eval_every_steps=10**6, eval_max_batches=1, log_every_steps=10, tracking={"tensorboard": False},
        )
        rank, world = init_distributed(True)
        plan = Plan.make(cfg, table.num_rows, world, 0, base)
        session = LocalSession(table, table.slice(0, args.gpu_micro_batch), os.path.join(tmp, "ck"),
                               rank, world)
        state = run_training(cfg, plan, session)
    tps = state.tokens / state.train_time_s
    n_lora = sum(
        16 * (a + b) * mcfg.num_hidden_layers
        for a, b in [(2048, 2048), (2048, 512), (2048, 512), (2048, 2048), (2048, 5632), (2048, 5632), (5632, 2048)]
    )
    attn = 6 * mcfg.num_hidden_layers * seq * mcfg.hidden_size  # causal attention fwd+bwd per token (approx.)
    flops_per_token = 4 * n_base + 6 * n_lora + attn
    peak = args.peak_tflops * 1e12
    mfu = tps * flops_per_token / peak
    result = {"mode": "gpu", "device": torch.cuda.get_device_name(0), "params_base": n_base, "params_lora": n_lora,
              "seq_len": seq, "micro_batch_size": args.gpu_micro_batch, "steps": state.step,
              "tokens_per_s": round(tps, 1), "mfu": round(mfu, 4), "peak_tflops": args.peak_tflops,
              "train_time_s": round(state.train_time_s, 2)}
    print(json.dumps(result, indent=2))
    return result


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="~1B Llama LoRA bf16 ZeRO-2 on one GPU (tokens/s, MFU)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="rows = the sample's packed rows repeated N times (at least)")
    p.add_argument("--min-steps", type=int, default=400, help="repeat the rows until a run has this many steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gpu-seq", type=int, default=2048)
    p.add_argument("--gpu-micro-batch", type=int, default=4)
    p.add_argument("--gpu-steps", type=int, default=30)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    p.add_argument("--pack", action="store_true", help="packing time per example at 10k..1M examples")
    p.add_argument("--pack-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--pack-max-length", type=int, default=2048)
    p.add_argument("--results", type=Path, default=RESULTS, help=f"JSON file the result is merged into ({RESULTS})")
    args = p.parse_args()
    if args.pack:
        write_result("pack", run_pack(args), args.results)
    elif args.gpu:
        write_result("gpu", run_gpu(args), args.results)
    else:
        write_result("cpu", run_cpu(args), args.results)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
