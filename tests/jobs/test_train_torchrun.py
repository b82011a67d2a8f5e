"""``jobs.train_torchrun`` stopped and collided with, as real processes on the tiny CPU model: SIGTERM (what
torchrun sends every rank when one fails or on Ctrl-C, and Kubernetes on eviction) is exit 143 with one
line, complete checkpoints only, no half-written output and no report; the same command resumes. A second
run into a held output is exit 2 before it writes anything; an output inside the dataset is exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.training._data import rows, write_dataset
from tests.training.test_loop import tiny_config
from training.loop import checkpoint_problem

REPO = Path(__file__).resolve().parents[2]

# A run stopped from inside at a chosen point, as a signal from outside would land there: SIGTERM to itself
# half way through copying the step-10 checkpoint ("checkpoint") or the final adapter ("outputs").
STOPPING = """
import os, shutil, signal, sys
import training.loop as loop
from jobs import train_torchrun

mode, real_report, real_upload = sys.argv[1], loop.LocalSession.report, loop.upload_dir

def report(self, metrics, d):
    if mode == "checkpoint" and metrics["step"] == 10:
        shutil.copytree(os.path.join(d, "adapter"), os.path.join(self.root, "step_00000010.partial", "adapter"))
        os.kill(os.getpid(), signal.SIGTERM)
    return real_report(self, metrics, d)

def upload_dir(local, dest):
    if mode == "outputs" and os.path.isfile(os.path.join(local, "adapter_config.json")):
        name = "adapter_config.json"
        shutil.copy(os.path.join(local, name), os.path.join(dest, name))
        os.kill(os.getpid(), signal.SIGTERM)
    return real_upload(local, dest)

loop.LocalSession.report, loop.upload_dir = report, upload_dir
raise SystemExit(train_torchrun.main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), rows())


def env(tmp: Path) -> dict[str, str]:
    """One process (no torchrun variables), its temporary files in ``tmp`` (checked for leftovers)."""
    tmp.mkdir(exist_ok=True)
    out = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", TMPDIR=str(tmp))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(k, None)
    return out


def config(tmp_path: Path, dataset: Path, out: Path, *, epochs: int, eval_every: int) -> Path:
    path = tiny_config(tmp_path / "ft.yaml", dataset, out, eval_every_steps=eval_every, log_every_steps=eval_every)
    raw = yaml.safe_load(path.read_text())
    raw["optim"]["epochs"] = epochs
    path.write_text(yaml.safe_dump(raw))
    return path


def train(cfg: Path, tmp: Path, *args: str, script: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["-c", STOPPING, *args] if script else ["-m", "jobs.train_torchrun"]
    return subprocess.run([sys.executable, *cmd, "--config", str(cfg)], cwd=REPO, env=env(tmp), capture_output=True,
                          text=True, timeout=300)


def steps(out: Path) -> dict[str, str | None]:
    """Each checkpoint directory of the run (``step_N`` and ``step_N.partial``) → what it lacks (None: complete)."""
    return {d.name: checkpoint_problem(str(d)) for d in sorted(out.glob("checkpoints/*/step_*"))}


def leftovers(out: Path, tmp: Path) -> list[str]:
    """Temporaries of a stopped run: ``*.tmp-*`` in or beside OUTPUT, the loop's own temporary directories."""
    found = [str(p) for p in [*out.rglob("*.tmp-*"), *out.parent.glob(f"{out.name}.tmp-*")]]
    return found + [p.name for p in tmp.iterdir() if p.name.startswith(("cf-ckpt-", "cf-tb-"))]


def stopped_cleanly(run: subprocess.CompletedProcess, code: int = 143) -> None:
    assert run.returncode == code, run.stderr[-3000:]
    assert "stopped (SIGTERM)" in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_mid_training_keeps_checkpoints_refuses_a_second_run_and_resumes(tiny_dataset, tmp_path):
    """SIGTERM after the first checkpoint: exit 143 (was: killed, -15, its temporary directories left in
    /tmp), complete checkpoints only, no adapter or report; a second run into the same output while the
    first trains is exit 2 at once (was: both trained into the same checkpoint directories); the same
    command again resumes from the latest checkpoint and finishes."""
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    cfg = config(tmp_path, tiny_dataset, out, epochs=30, eval_every=40)  # 480 steps, a checkpoint every 40
    first = subprocess.Popen([sys.executable, "-m", "jobs.train_torchrun", "--config", str(cfg)], cwd=REPO,
                             env=env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("checkpoints/*/step_00000040/meta.json")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        t0 = time.monotonic()
        second = train(cfg, tmp_path / "tmp2")
        assert second.returncode == 2, second.stderr[-3000:]
        assert "is being written by another run" in second.stderr and time.monotonic() - t0 < 60
        assert first.poll() is None, "the first run must still be training (the second one did not stop it)"
        first.send_signal(signal.SIGTERM)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    stopped_cleanly(subprocess.CompletedProcess(first.args, first.returncode, stdout, stderr))
    done = {name: problem for name, problem in steps(out).items() if not name.endswith(".partial")}
    assert done and all(problem is None for problem in done.values()), done
    assert not (out / "report.json").exists() and not (out / "adapter").exists()
    assert leftovers(out, tmp) == []

    again = train(cfg, tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    last = int(max(done).removeprefix("step_"))
    assert report["resumed_from_step"] == [last] and f"resuming after step {last}" in again.stdout
    assert report["optimizer_steps"] == 480 and (out / "adapter" / "adapter_model.safetensors").exists()
    assert not [name for name in steps(out) if name.endswith(".partial")] and leftovers(out, tmp) == []


@pytest.mark.integration
@pytest.mark.slow
def test_stops_while_writing_a_checkpoint_or_the_outputs_leave_nothing_half_written(tiny_dataset, tmp_path):
    """Stopped half way through copying a checkpoint: the earlier checkpoint is the latest, the half copy is
    never taken for one and the rerun removes it. Stopped half way through replacing the adapter of a
    finished run: the old adapter is whole (was: the new adapter_config.json beside the old weights) and
    no report claims the outputs are complete."""
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    cfg = config(tmp_path, tiny_dataset, out, epochs=1, eval_every=5)  # 16 steps: checkpoints 5, 10, 15, 16
    stopped_cleanly(train(cfg, tmp, "checkpoint", script=STOPPING))
    assert steps(out) == {"step_00000005": None, "step_00000010.partial": "no meta.json (the save did not finish)"}
    assert not (out / "report.json").exists() and leftovers(out, tmp) == []

    finished = train(cfg, tmp)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming after step 5" in finished.stdout and "skipping" not in finished.stdout
    assert set(steps(out)) == {f"step_{n:08d}" for n in (5, 10, 15, 16)} and not any(steps(out).values())
    adapter = {p.name: p.read_bytes() for p in (out / "adapter").iterdir()}
    (out / "adapter" / "adapter_config.json").write_text(json.dumps({"marker": "the old adapter"}))
    adapter["adapter_config.json"] = (out / "adapter" / "adapter_config.json").read_bytes()

    stopped_cleanly(train(cfg, tmp, "outputs", script=STOPPING))  # resumes at the end: only the outputs
    assert {p.name: p.read_bytes() for p in (out / "adapter").iterdir()} == adapter
    assert not (out / "report.json").exists() and leftovers(out, tmp) == []
    again = train(cfg, tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["optimizer_steps"] == 16
    assert "marker" not in json.loads((out / "adapter" / "adapter_config.json").read_text())


def test_an_output_that_is_or_lies_inside_the_dataset_is_exit_2(tiny_dataset, tmp_path, capsys, monkeypatch):
    """As for ``jobs.finetune``: the output would overwrite or be read as the dataset; refused before training."""
    import training.loop
    from jobs import train_torchrun

    monkeypatch.setattr(training.loop, "run_local", lambda *a, **k: pytest.fail("training must not start"))
    for output, problem in ((tiny_dataset, "is also the input of"), (tiny_dataset / "ft", "lies inside the input")):
        assert train_torchrun.main(["--dataset", str(tiny_dataset), "--output", str(output)]) == 2
        assert problem in capsys.readouterr().err


def test_a_base_model_that_cannot_be_resolved_is_exit_2_before_training(tiny_dataset, tmp_path, capsys, monkeypatch):
    """The torchrun entry shares ``check_inputs``: a Hub id not in the cache offline is exit 2 naming
    ``base_model`` (before: every rank failed loading the tokenizer in ``prepare_local``)."""
    import training.loop
    from jobs import train_torchrun

    monkeypatch.setattr(training.loop, "run_local", lambda *a, **k: pytest.fail("training must not start"))
    rc = train_torchrun.main(["--dataset", str(tiny_dataset), "--output", str(tmp_path / "o"),
                              "base_model=chipforge-nobody/not-a-model-7B"])
    err = capsys.readouterr().err
    assert rc == 2 and "base_model 'chipforge-nobody/not-a-model-7B' is not in the local Hugging Face cache" in err
