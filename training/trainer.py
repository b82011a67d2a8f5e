"""The Ray Train side of a fine-tune: the ``TorchTrainer`` and the relay that prints its progress.

``build_trainer`` wraps ``training.loop.train_loop_per_worker`` (the same plain functions the
torchrun entry runs) in a Train V2 ``TorchTrainer`` with the run's checkpoint storage and
failure policy; ``pipelines.finetune``, ``pipelines.tune`` and ``bench/train.py`` use it.

Jobs start Ray with ``log_to_driver=False``, so what workers print stays in Ray's log files.
:class:`ProgressRelay` is how the user still sees training progress: rank 0 puts one event per
logging step and per evaluation on a Ray queue and a driver thread prints each as one line,
through the job's own ``progress`` function, before the job's summary.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from chipforge import fs
from training.config import FinetuneConfig
from training.loop import Plan, format_event


def scaling_config(cfg: FinetuneConfig) -> Any:
    from ray.train import ScalingConfig

    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **s.resources_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker or 1
    return ScalingConfig(
        num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources, accelerator_type=s.accelerator_type
    )


START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # read by Train V2's controller (propagated)


def start_attempt_timeout_s(cfg: FinetuneConfig) -> float:
    """Seconds one worker-group start waits for its placement group: ``scaling.resource_wait_s``
    shared by the 1 + ``max_failures`` attempts Train V2 makes (``controller_failure_limit``)."""
    return cfg.scaling.resource_wait_s / (cfg.max_failures + 1)


def resource_wait_message(cfg: FinetuneConfig, exc: BaseException) -> str | None:
    """The error of a run whose workers never got their resources (Train V2's
    ``WorkerGroupStartupTimeoutError``, alone or wrapped), naming the fields and what the cluster has;
    None for any other failure."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    found = False
    while todo and not found:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        found = type(e).__name__ == "WorkerGroupStartupTimeoutError"
        todo += [getattr(e, "controller_failure", None), e.__cause__, e.__context__]
    if not found:
        return None
    s = cfg.scaling
    per_worker = dict(scaling_config(cfg).resources_per_worker)
    if s.accelerator_type:
        per_worker[f"accelerator_type:{s.accelerator_type}"] = 0.001
    try:
        import ray

        total = ray.cluster_resources()
        has = ", ".join(f"{k}: {total.get(k, 0):g}" for k in per_worker)
    except Exception:  # noqa: BLE001 - Ray already gone: the message still names the fields
        has = "unknown"
    wanted = ", ".join(f"{k}: {v:g}" for k, v in per_worker.items())
    return (f"the cluster did not provide the training workers' resources within scaling.resource_wait_s "
            f"({s.resource_wait_s:g} s): scaling.num_workers={s.num_workers} workers of {{{wanted}}} each "
            f"(scaling.use_gpu: {str(s.use_gpu).lower()}); the cluster has {{{has}}} in all. Add nodes (an "
            f"autoscaling cluster: raise scaling.resource_wait_s), lower scaling.num_workers, "
            f"{'set scaling.use_gpu=false, ' if s.use_gpu else ''}or lower the per-worker resources")


def build_trainer(cfg: FinetuneConfig, datasets: dict[str, Any], plan: Plan, *, run_name: str,
                  callbacks: list[Any] | None = None, relay: Any = None) -> Any:
    """A ``TorchTrainer`` running ``train_loop_per_worker`` on ``datasets`` (``train``, ``validation``).

    Checkpoints go to ``storage_path/run_name``: a new ``fit()`` with the same name resumes from
    the latest one there (Train V2 restores its checkpoint manager from storage). Workers that
    cannot be placed (``use_gpu`` on a cluster without GPUs) fail ``fit()`` after
    ``scaling.resource_wait_s`` (:func:`resource_wait_message` says why), never wait forever:
    Ray Train's start timeout, which it propagates to its controller from this process's
    environment, with a finite ``controller_failure_limit`` (Ray's default retries forever).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from training.loop import train_loop_per_worker

    os.environ[START_TIMEOUT_ENV] = f"{start_attempt_timeout_s(cfg):g}"
    storage = cfg.resolved_storage_path()
    storage_filesystem = None
    if fs.is_uri(storage):
        storage_filesystem, storage = fs.resolve(storage)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "plan": plan.__dict__, "relay": relay},
        scaling_config=scaling_config(cfg),
        datasets=datasets,
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
            callbacks=callbacks or [],
        ),
    )


class ProgressRelay:
    """``with ProgressRelay(say) as relay: build_trainer(..., relay=relay.queue).fit()``.

    ``relay.queue`` is a Ray queue (an actor with no CPU) that rank 0 fills; a daemon thread on
    the driver prints each event with ``say``. Leaving the block prints what is still queued, so
    every progress line comes before whatever the caller prints next.
    """

    def __init__(self, say: Callable[[str], None], poll_s: float = 0.5) -> None:
        self.say = say
        self.poll_s = poll_s
        self.queue: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "ProgressRelay":
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
        self._thread = threading.Thread(target=self._pump, name="chipforge-progress", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                event = self.queue.get(timeout=self.poll_s)
            except (Empty, queue.Empty):
                continue
            except Exception:  # noqa: BLE001 - the queue actor went away: stop relaying
                return
            self.say(format_event(event))

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            for event in self.queue.get_nowait_batch(self.queue.qsize()):
                self.say(format_event(event))
        with contextlib.suppress(Exception):
            self.queue.shutdown()
