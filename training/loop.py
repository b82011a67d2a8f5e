"""The training loop as plain functions, run by Ray Train workers or by ``torchrun`` without Ray.

``run_training`` does the work (DeepSpeed engine over a PEFT LoRA model, gradient accumulation,
warmup + cosine, eval loss/perplexity every ``eval_every_steps`` optimizer steps, a checkpoint
at every evaluation, resume from the latest checkpoint). Where data, checkpoints, reports and
log lines go is a ``Session``:

- ``RaySession`` (inside ``train_loop_per_worker``): ``get_dataset_shard``, ``get_checkpoint``,
  ``ray.train.report`` (every rank reports; per-rank DeepSpeed files merge into one checkpoint
  in ``RunConfig.storage_path``). Rank 0's log lines go to the driver through a queue
  (``training.trainer.ProgressRelay``), which prints them: worker output stays in Ray's logs.
- ``LocalSession`` (``torchrun -m jobs.train_torchrun``, :func:`run_local`): the token tables of
  ``training.data.prepare_local``, rows sharded by rank, checkpoints under
  OUTPUT/checkpoints/<run>/step_N; rank 0 prints the log lines.

Either way there is one line per logging step (rank 0 only) and one per evaluation.

A checkpoint directory holds ``ds/`` (DeepSpeed state of the trainable parameters and the
optimizer, one file per rank), ``adapter/`` (PEFT format), ``meta.json`` (step, epoch, micro
batches done in the epoch, world size, loss history, token and time counters) and
``tensorboard/``. ``meta.json`` is written last, so a checkpoint without it is unfinished.
:func:`checkpoint_problem` says what a checkpoint lacks: the torchrun path resumes from the latest
complete one (naming any it skips), and resuming from an incomplete one (Ray hands over only
checkpoints every rank finished, so only a damaged one) is a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from chipforge import fs
from chipforge.config import dump_yaml
from training.config import FinetuneConfig
from training.data import IGNORE, batch_layout, batch_tokens, collate
from training.model import (build_engine, build_lora_model, deepspeed_config, save_adapter, set_schedule_step,
                            warmup_steps)

DS_TAG = "ckpt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (incomplete, or written by another number of workers)."""


@dataclass
class Plan:
    """Schedule fixed before training (identical on every rank)."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    pad_id: int
    base_path: str

    @classmethod
    def make(cls, cfg: FinetuneConfig, train_rows: int, world_size: int, pad_id: int, base_path: str) -> "Plan":
        per_step = world_size * cfg.optim.micro_batch_size * cfg.optim.grad_accum
        steps_per_epoch = train_rows // per_step
        if steps_per_epoch < 1:
            raise ValueError(
                f"{train_rows} training rows are fewer than one optimizer step needs ({per_step} = "
                f"{world_size} workers x micro_batch_size {cfg.optim.micro_batch_size} x grad_accum {cfg.optim.grad_accum})"
            )
        total = steps_per_epoch * cfg.optim.epochs
        if cfg.optim.max_steps:
            total = min(total, cfg.optim.max_steps)
        return cls(steps_per_epoch, total, warmup_steps(cfg.optim, total), pad_id, base_path)


@dataclass
class State:
    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0  # micro batches consumed in ``epoch`` (skipped on resume)
    train_loss_first: float | None = None
    train_loss_last: float | None = None
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    tokens: int = 0  # non-pad tokens trained on, all ranks
    train_time_s: float = 0.0
    data_wait_s: float = 0.0  # share of train_time_s spent waiting for the next batch
    epoch_start_wait_s: float = 0.0  # part of data_wait_s spent on each epoch's first batch (pipeline start)
    resumed_from_step: list[int] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per evaluation
    world_size: int = 0  # workers that wrote the checkpoint (0: a checkpoint from before this field)


class Session(Protocol):
    rank: int
    world_size: int

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[str | None]: ...
    def train_batches(self, batch_size: int) -> Iterator[dict[str, Any]]: ...
    def eval_batches(self, batch_size: int) -> Iterator[dict[str, Any]]: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: str) -> None: ...
    def log(self, event: dict[str, Any]) -> None: ...


def format_event(event: dict[str, Any]) -> str:
    """One progress line for a training event (``start``, ``step`` or ``eval``)."""
    kind = event.get("event")
    if kind == "start":
        resume = f"; resuming after step {event['start_step']}" if event.get("start_step") else ""
        setup = f", model + DeepSpeed set-up {event['setup_s']} s" if "setup_s" in event else ""
        kernels = (f"; {event['attn']} attention, fused LoRA in {event['fused_lora_layers']} of "
                   f"{event['lora_layers']} layers") if "lora_layers" in event else ""
        return (f"training: {event['world']} worker(s) x {event['threads']} thread(s), {event['total']} steps "
                f"({event['steps_per_epoch']} per epoch), warmup {event['warmup']}{setup}{kernels}{resume}")
    if kind == "step":
        return f"step {event['step']}/{event['total']}  loss {event['loss']:.4f}  lr {event['lr']:.2e}"
    if kind == "eval":
        return (f"step {event['step']}/{event['total']}  eval loss {event['eval_loss']:.4f}  "
                f"perplexity {event['eval_perplexity']:.1f}  (checkpoint)")
    return json.dumps(event, default=str)


class RaySession:
    """Data, checkpoints and reports of a Ray Train V2 worker; rank 0's events go to ``relay``."""

    fetch_factor = 8

    def __init__(self, relay: Any = None) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.relay = relay

    def log(self, event: dict[str, Any]) -> None:
        if self.rank != 0 or self.relay is None:
            return
        with contextlib.suppress(Exception):  # a full or gone queue must never stop training
            self.relay.put_nowait(event)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield d

    def _iter(self, name: str, batch_size: int) -> Iterator[dict[str, Any]]:
        import ray.train

        # Fetch several micro batches per Ray Data batch: the per-batch cost of the streaming
        # split is fixed, so small micro batches would otherwise wait on it every step.
        shard = ray.train.get_dataset_shard(name)
        for big in shard.iter_batches(batch_size=batch_size * self.fetch_factor, batch_format="numpy",
                                      drop_last=False, prefetch_batches=2):
            n = len(next(iter(big.values())))
            for start in range(0, n, batch_size):
                yield {k: v[start : start + batch_size] for k, v in big.items()}

    def train_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        return self._iter("train", batch_size)

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        return self._iter("validation", batch_size)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir))


class LocalSession:
    """torchrun / single-process session: pyarrow data, checkpoints in a local directory."""

    def __init__(self, train_table: Any, eval_table: Any, checkpoint_root: str, rank: int, world_size: int,
                 quiet: bool = False):
        self.train_table, self.eval_table = train_table, eval_table
        self.root = checkpoint_root
        self.rank, self.world_size = rank, world_size
        self.quiet = quiet

    def log(self, event: dict[str, Any]) -> None:
        if self.rank == 0 and not self.quiet:
            print(format_event(event), flush=True)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        say = (lambda line: print(line, flush=True)) if self.rank == 0 and not self.quiet else None
        yield latest_local_checkpoint(self.root, say)

    def train_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        from training.data import iter_table_batches

        return iter_table_batches(self.train_table, batch_size, self.rank, self.world_size)

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        from training.data import iter_table_batches

        return iter_table_batches(self.eval_table, batch_size, self.rank, self.world_size)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str) -> None:
        """Every rank copies its files into ``step_N.partial``; rank 0 renames it to ``step_N``. A
        ``.partial`` or an incomplete ``step_N`` left by an earlier, killed run is removed first."""
        import torch.distributed as dist

        step = int(metrics["step"])
        dst = os.path.join(self.root, f"step_{step:08d}")
        if self.rank == 0:
            shutil.rmtree(dst + ".partial", ignore_errors=True)
        dist.barrier()
        shutil.copytree(checkpoint_dir, dst + ".partial", dirs_exist_ok=True)
        dist.barrier()
        if self.rank == 0:
            shutil.rmtree(dst, ignore_errors=True)  # os.replace cannot replace a non-empty directory
            os.replace(dst + ".partial", dst)
        dist.barrier()


def checkpoint_problem(d: str) -> str | None:
    """What checkpoint directory ``d`` lacks to be resumed from (None: complete). Checks that every
    part exists and is not empty; DeepSpeed's optimizer state needs one file per rank of
    ``meta.json``'s world size."""
    meta_path = os.path.join(d, "meta.json")
    if not os.path.isfile(meta_path):
        return "no meta.json (the save did not finish)"
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        State(**meta)
    except (ValueError, TypeError) as exc:
        return f"meta.json is not a checkpoint's ({exc})"
    for part in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "ds/latest"):
        p = os.path.join(d, part)
        if not os.path.isfile(p) or os.path.getsize(p) == 0:
            return f"{part} is missing or empty"
    # DeepSpeed's names: [zero_pp_rank_R_]mp_rank_00_model_states.pt, [bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt
    ds = os.path.join(d, "ds", DS_TAG)
    if not _nonempty(glob.glob(os.path.join(ds, "*mp_rank_*_model_states.pt"))):
        return f"ds/{DS_TAG}/ holds no model states"
    for r in range(int(meta.get("world_size") or 1)):
        if not _nonempty(glob.glob(os.path.join(ds, f"*zero_pp_rank_{r}_mp_rank_*_optim_states.pt"))):
            return f"ds/{DS_TAG}/ lacks the optimizer state of rank {r} (or it is empty)"
    return None


def _nonempty(paths: list[str]) -> bool:
    return bool(paths) and all(os.path.getsize(p) > 0 for p in paths)


def latest_local_checkpoint(root: str, say: Any = None) -> str | None:
    """The newest complete ``step_N`` under ``root``: incomplete ones (killed mid-save, damaged) are
    skipped, each named through ``say`` (a print function), so the run resumes from an older one."""
    if not os.path.isdir(root):
        return None
    steps = sorted((d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".partial")),
                   reverse=True)
    for name in steps:
        d = os.path.join(root, name)
        problem = checkpoint_problem(d)
        if problem is None:
            return d
        if say is not None:
            say(f"skipping incomplete checkpoint {d}: {problem}")
    return None


class Tracker:
    """Rank-0 metrics: TensorBoard events (kept inside checkpoints) and MLflow when configured."""

    def __init__(self, cfg: FinetuneConfig, rank: int, resume_dir: str | None):
        self.enabled = rank == 0
        self.logdir = tempfile.mkdtemp(prefix="cf-tb-")
        self.writer = None
        self.mlflow = None
        if not self.enabled:
            return
        if resume_dir and os.path.isdir(os.path.join(resume_dir, "tensorboard")):
            shutil.copytree(os.path.join(resume_dir, "tensorboard"), self.logdir, dirs_exist_ok=True)
        if cfg.tracking.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(self.logdir)
        if cfg.tracking.mlflow_tracking_uri:
            import mlflow  # optional dependency: pip install mlflow

            mlflow.set_tracking_uri(cfg.tracking.mlflow_tracking_uri)
            mlflow.set_experiment(cfg.tracking.mlflow_experiment)
            mlflow.start_run(run_name=cfg.resolved_run_name())
            mlflow.log_params({k: str(v) for k, v in flatten(cfg.model_dump(mode="json")).items()})
            self.mlflow = mlflow

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in metrics.items()}, step=step)

    def snapshot(self, dst: str) -> None:
        if self.enabled and self.writer is not None:
            self.writer.flush()
            shutil.copytree(self.logdir, os.path.join(dst, "tensorboard"), dirs_exist_ok=True)

    def close(self, status: str = "FINISHED") -> None:
        """Flush and end the trackers and remove the local event directory (also when training was
        stopped or failed: ``status`` is MLflow's run status then, ``KILLED`` or ``FAILED``)."""
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run(status=status)
        shutil.rmtree(self.logdir, ignore_errors=True)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
    return t.cpu().tolist()


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_step(engine: Any, batch: dict[str, Any]) -> float:
    """One micro batch: forward, backward, ``engine.step`` (steps the optimizer at accumulation boundaries)."""
    loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()
    return float(loss.detach().float().item())


def evaluate(engine: Any, batches: Iterator[dict[str, Any]], pad_id: int, max_batches: int | None,
             layout: str = "padded") -> tuple[float, float]:
    """Token-weighted eval loss over every rank's shard, and its perplexity."""
    import torch

    engine.eval()
    total, count = 0.0, 0.0
    with torch.no_grad():
        for k, raw in enumerate(batches):
            if max_batches is not None and k >= max_batches:
                break
            b = to_device(collate(raw, pad_id, layout=layout), engine.device)
            n = float((b["labels"][:, 1:] != IGNORE).sum().item())
            if n == 0:
                continue
            total += float(engine(**b).loss.float().item()) * n
            count += n
    engine.train()
    total, count = all_reduce_sum([total, count])
    loss = total / count if count else float("nan")
    return loss, math.exp(min(loss, 50.0)) if count else float("nan")


def save_checkpoint(engine: Any, d: str, state: State, *, rank: int, zero_stage: int, tracker: Tracker) -> None:
    """Collective: DeepSpeed state (trainable params + optimizer) on every rank, adapter and meta on rank 0.
    ``meta.json`` comes last (temporary name, then rename): its presence means the rest is there."""
    engine.save_checkpoint(os.path.join(d, "ds"), tag=DS_TAG, exclude_frozen_parameters=True)
    save_adapter(engine, os.path.join(d, "adapter"), rank=rank, zero_stage=zero_stage)
    if rank == 0:
        tracker.snapshot(d)
        meta = os.path.join(d, "meta.json")
        with open(meta + ".tmp", "w") as f:
            json.dump(asdict(state), f, indent=2)
        os.replace(meta + ".tmp", meta)


def load_checkpoint(engine: Any, d: str, world_size: int) -> State:
    """Trainable params and optimizer from the checkpoint; the schedule is put at its step (its own
    state is not read: the schedule is a function of the step, and older checkpoints hold another's).
    An incomplete checkpoint, or one written by another number of workers, is a :class:`CheckpointError`
    naming it (checked before DeepSpeed reads anything)."""
    problem = checkpoint_problem(d)
    if problem is not None:
        raise CheckpointError(f"checkpoint {d} is incomplete: {problem}; train from scratch (--force) "
                              f"or remove the damaged checkpoint")
    with open(os.path.join(d, "meta.json")) as f:
        state = State(**json.load(f))
    if state.world_size and state.world_size != world_size:
        raise CheckpointError(f"checkpoint {d} was written by {state.world_size} worker(s), this run has "
                              f"{world_size}: rerun with {state.world_size}, or train from scratch (--force)")
    engine.load_checkpoint(os.path.join(d, "ds"), tag=DS_TAG, load_module_strict=False,
                           load_lr_scheduler_states=False)
    if engine.lr_scheduler is not None:
        set_schedule_step(engine.lr_scheduler, state.step)
    return state


def maybe_fail(cfg: FinetuneConfig, step: int, rank: int) -> None:
    """Test hook: rank 0 raises once at ``fail_at_step`` (a marker file makes it once per run)."""
    if cfg.fail_at_step is None or step != cfg.fail_at_step or rank != 0:
        return
    marker = cfg.fail_marker or os.path.join(os.path.abspath(cfg.output_dir), ".fail_injected")
    if os.path.exists(marker):
        return
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "w") as f:
        f.write(str(step))
    raise RuntimeError(f"injected failure at step {step} (fail_at_step)")


def fused_lora_layers(model: Any) -> dict[str, int]:
    """How many LoRA layers the model has and how many of them take the fused path."""
    from peft.tuners.lora import LoraLayer

    from training.fused_lora import FusedLoraLinear

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return {"lora_layers": len(layers), "fused_lora_layers": sum(type(m) is FusedLoraLinear for m in layers)}


def run_training(cfg: FinetuneConfig, plan: Plan, session: Session) -> State:
    """Train to ``plan.total_steps`` optimizer steps, resuming from the session's latest checkpoint."""
    import torch

    t_setup = time.perf_counter()
    rank, world = session.rank, session.world_size
    torch.manual_seed(cfg.seed)
    use_gpu = cfg.scaling.use_gpu
    ds_cfg = deepspeed_config(cfg.deepspeed, cfg.optim, world_size=world, total_steps=plan.total_steps,
                              warmup_steps=plan.warmup_steps, use_gpu=use_gpu)
    model = build_lora_model(plan.base_path, cfg, ds_cfg)
    engine, scheduler = build_engine(model, ds_cfg, use_gpu=use_gpu)
    state = State(world_size=world)
    with session.latest_checkpoint() as d:
        if d is not None:
            state = load_checkpoint(engine, d, world)
            state.resumed_from_step.append(state.step)
            state.world_size = world
        tracker = Tracker(cfg, rank, d)
    session.log({"event": "start", "world": world, "threads": torch.get_num_threads(),
                 "steps_per_epoch": plan.steps_per_epoch, "total": plan.total_steps, "warmup": plan.warmup_steps,
                 "start_step": state.step, "setup_s": round(time.perf_counter() - t_setup, 1),
                 "attn": cfg.attn_implementation, **fused_lora_layers(model)})
    try:
        _train(cfg, plan, session, engine, scheduler, state, tracker)
    except BaseException as exc:  # Ctrl-C, SIGTERM (chipforge.job.Stopped) or a failure: no temporaries left
        tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.close()
    return state


def _train(cfg: FinetuneConfig, plan: Plan, session: Session, engine: Any, scheduler: Any, state: State,
           tracker: Tracker) -> None:
    """The optimizer steps of :func:`run_training` from ``state`` on (evaluating and checkpointing)."""
    rank, world = session.rank, session.world_size
    accum = cfg.optim.grad_accum
    layout = batch_layout(cfg.packing, cfg.attn_implementation)
    micro_per_epoch = plan.steps_per_epoch * accum

    def checkpoint_and_report() -> None:
        state.eval_loss, state.eval_perplexity = evaluate(
            engine, session.eval_batches(cfg.optim.micro_batch_size), plan.pad_id, cfg.eval_max_batches,
            layout=layout)
        metrics = {
            "step": state.step,
            "epoch": state.epoch,
            "train_loss": state.train_loss_last,
            "eval_loss": state.eval_loss,
            "eval_perplexity": state.eval_perplexity,
            "tokens_per_s": state.tokens / state.train_time_s if state.train_time_s else 0.0,
            "lr": float(scheduler.get_last_lr()[0]) if scheduler is not None else cfg.optim.lr,
        }
        state.history.append({k: float(v) for k, v in metrics.items() if v is not None})
        tracker.log({"eval/loss": state.eval_loss, "eval/perplexity": state.eval_perplexity}, state.step)
        session.log({"event": "eval", "step": state.step, "total": plan.total_steps, "eval_loss": state.eval_loss,
                     "eval_perplexity": state.eval_perplexity})
        with tempfile.TemporaryDirectory(prefix="cf-ckpt-") as tmp:
            save_checkpoint(engine, tmp, state, rank=rank, zero_stage=cfg.deepspeed.zero_stage, tracker=tracker)
            session.report(metrics, tmp)

    losses: list[float] = []
    tokens = 0
    while state.step < plan.total_steps:
        micro = 0
        t0 = time.perf_counter()
        t_wait = time.perf_counter()
        for raw in session.train_batches(cfg.optim.micro_batch_size):
            state.data_wait_s += time.perf_counter() - t_wait
            if micro == 0:
                state.epoch_start_wait_s += time.perf_counter() - t_wait
            if micro >= micro_per_epoch:
                break
            micro += 1
            if micro <= state.micro_in_epoch:  # consumed before the checkpoint we resumed from
                continue
            batch = collate(raw, plan.pad_id, layout=layout)
            tokens += batch_tokens(raw)
            losses.append(train_step(engine, to_device(batch, engine.device)))
            if micro % accum:
                t_wait = time.perf_counter()
                continue
            state.step += 1
            state.micro_in_epoch = micro
            if micro == micro_per_epoch:
                state.epoch, state.micro_in_epoch = state.epoch + 1, 0
            loss, n_tok = all_reduce_sum([sum(losses) / len(losses), tokens])
            loss /= world
            state.train_time_s += time.perf_counter() - t0
            state.tokens += int(n_tok)
            losses, tokens = [], 0
            if state.train_loss_first is None:
                state.train_loss_first = loss
            state.train_loss_last = loss
            if state.step % cfg.log_every_steps == 0 or state.step == 1:
                lr = float(scheduler.get_last_lr()[0]) if scheduler is not None else cfg.optim.lr
                tracker.log({"train/loss": loss, "train/lr": lr}, state.step)
                session.log({"event": "step", "step": state.step, "total": plan.total_steps, "loss": loss, "lr": lr})
            maybe_fail(cfg, state.step, rank)
            if state.step % cfg.eval_every_steps == 0 or state.step == plan.total_steps:
                checkpoint_and_report()
            if state.step >= plan.total_steps:
                break
            t0 = t_wait = time.perf_counter()
        else:
            if micro < micro_per_epoch:
                raise RuntimeError(f"rank {rank}: data shard ended after {micro} of {micro_per_epoch} micro batches")


def quiet_library_warnings() -> None:
    """Deprecation notices of torch/transformers/peft internals, once per rank, tell the user nothing."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train V2 entry: ``config = {"cfg": FinetuneConfig dump, "plan": Plan fields, "relay": queue or None}``."""
    import torch

    cfg = FinetuneConfig.model_validate(config["cfg"])
    plan = Plan(**config["plan"])
    quiet_library_warnings()
    if cfg.scaling.use_gpu:
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    else:  # intra-op threads = the CPUs this worker holds
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    run_training(cfg, plan, RaySession(config.get("relay")))


# ----------------------------------------------------------------------------- outputs


def upload_dir(local: str, dest: str) -> None:
    for root, _, files in os.walk(local):
        for name in files:
            src = os.path.join(root, name)
            rel = os.path.relpath(src, local).replace(os.sep, "/")
            with open(src, "rb") as f:
                fs.write_bytes(fs.join(dest, rel), f.read())


def write_outputs(cfg: FinetuneConfig, checkpoint_dir: str, base_path: str, extra: dict[str, Any]) -> dict[str, Any]:
    """OUTPUT/adapter (PEFT), OUTPUT/tokenizer, OUTPUT/config.yaml, OUTPUT/tensorboard; returns the report's
    training fields (the caller writes OUTPUT/report.json: the job skeleton, or ``run_local``).

    An earlier run's OUTPUT/report.json is removed first and each directory is replaced whole
    (``fs.atomic_dir``): a run stopped here leaves the earlier adapter or the new one, never a mix of
    their files, and no report describing outputs it did not finish."""
    from training.data import load_tokenizer

    with open(os.path.join(checkpoint_dir, "meta.json")) as f:
        meta = json.load(f)
    out = cfg.output_dir
    fs.delete(fs.join(out, "report.json"))
    with fs.atomic_dir(fs.join(out, "adapter")) as tmp:
        upload_dir(os.path.join(checkpoint_dir, "adapter"), tmp)
    if os.path.isdir(os.path.join(checkpoint_dir, "tensorboard")):
        with fs.atomic_dir(fs.join(out, "tensorboard")) as tmp:
            upload_dir(os.path.join(checkpoint_dir, "tensorboard"), tmp)
    with tempfile.TemporaryDirectory() as local, fs.atomic_dir(fs.join(out, "tokenizer")) as tmp:
        load_tokenizer(base_path, cfg.trust_remote_code).save_pretrained(local)
        upload_dir(local, tmp)
    fs.write_text(fs.join(out, "config.yaml"), dump_yaml(cfg))
    report = {
        "phase": cfg.phase,
        "base_model": base_path,
        "adapter_path": fs.join(out if fs.is_uri(out) else os.path.abspath(out), "adapter"),
        "train_loss_first": meta["train_loss_first"],
        "train_loss_last": meta["train_loss_last"],
        "eval_loss": meta["eval_loss"],
        "eval_perplexity": meta["eval_perplexity"],
        "optimizer_steps": meta["step"],
        "epochs_done": meta["epoch"],
        "tokens": meta["tokens"],
        "train_time_s": round(meta["train_time_s"], 3),
        "tokens_per_s": round(meta["tokens"] / meta["train_time_s"], 2) if meta["train_time_s"] else 0.0,
        "resumed_from_step": meta["resumed_from_step"],
        "history": meta["history"],
        **extra,
    }
    return report


# ----------------------------------------------------------------------------- torchrun path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(use_gpu: bool) -> tuple[int, int]:
    """torchrun env (or a 1-process default) → a process group DeepSpeed reuses."""
    if not use_gpu:  # what DeepSpeed would detect, without its warning on every rank
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch

    from training.model import no_jit_ops

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if use_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    no_jit_ops(use_gpu)
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def hold_output_rank0(output_dir: str, rank: int) -> Any:
    """Collective: rank 0 holds the output for the run (``chipforge.job.hold_output``, the lock the Ray
    jobs take, so a second torchrun or ``jobs.finetune`` into it is refused) and removes the temporaries
    a killed run left there (``remove_leftovers``). Returns rank 0's lock (None elsewhere); when the
    output is held by another run, every rank raises the same ConfigError (no rank trains alone)."""
    import torch.distributed as dist

    from chipforge.config import ConfigError
    from chipforge.job import hold_output, remove_leftovers

    lock, problem = None, [None]
    if rank == 0:
        try:
            lock = hold_output(output_dir)
            gone = remove_leftovers(output_dir)
            if gone:
                print(f"removed {len(gone)} temporaries of an earlier run that was killed: "
                      + ", ".join(os.path.basename(p) for p in gone[:5]), flush=True)
        except ConfigError as exc:
            problem = [str(exc)]
    dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        dist.destroy_process_group()
        raise ConfigError(problem[0])
    return lock


def run_local(cfg: FinetuneConfig, run_id: str | None = None,
              finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The whole fine-tune without Ray (every rank calls it; rank 0 writes the outputs and returns the report).

    Checkpoints go to OUTPUT/checkpoints/<run_id>/step_N (``run_id`` defaults to the run name):
    the same command again resumes from the latest one. Rank 0 holds OUTPUT for the whole call
    (:func:`hold_output_rank0`); ``finish`` (rank 0, after training, still holding it: the registry
    entry) completes the report before OUTPUT/report.json, written last, marks the outputs complete.
    A stop (SIGTERM as ``chipforge.job.Stopped``, Ctrl-C) unwinds from anywhere: complete checkpoints
    stay, a half-copied ``step_N.partial`` is ignored and removed by the next run, no report is written.
    """
    import torch.distributed as dist

    from training.data import load_tokenizer, prepare_local

    t0 = time.perf_counter()
    quiet_library_warnings()
    rank, world = init_distributed(cfg.scaling.use_gpu)
    lock = hold_output_rank0(cfg.output_dir, rank)
    try:
        data = prepare_local(cfg, is_builder=rank == 0, wait=dist.barrier)
        pad_id = load_tokenizer(data.base_path, cfg.trust_remote_code).pad_token_id
        plan = Plan.make(cfg, data.train.num_rows, world, pad_id, data.base_path)
        root = os.path.join(os.path.abspath(cfg.output_dir), "checkpoints", run_id or cfg.resolved_run_name())
        if rank == 0:  # copies a stopped run left half done (held: no other run is writing them)
            for partial in glob.glob(os.path.join(glob.escape(root), "step_*.partial")):
                shutil.rmtree(partial, ignore_errors=True)
        run_training(cfg, plan, LocalSession(data.train, data.validation, root, rank, world))
        dist.barrier()
        report = None
        if rank == 0:
            latest = latest_local_checkpoint(root)
            assert latest is not None
            report = write_outputs(cfg, latest, data.base_path, {
                "runner": "torchrun", "world_size": world, **data.info, "plan": asdict(plan),
                "checkpoint": latest, "wall_s": round(time.perf_counter() - t0, 2)})
        dist.barrier()
        dist.destroy_process_group()
        if report is not None:
            if finish is not None:
                report = finish(report)
            fs.write_json(fs.join(cfg.output_dir, "report.json"), report)
        return report
    finally:
        if lock is not None:
            lock.release()
