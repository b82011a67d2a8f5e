"""jobs.finetune: bad rows rejected at the stage boundary, resume, skip on rerun, --force, rerun on a changed dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs import finetune
from tests.training._data import bad_rows, rows, write_dataset, write_parquet

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "jobs" / "configs" / "finetune_tiny_cpu.yaml")
TRAIN = ("examples", "phase=rtl_design", "split=train")


def test_help_names_the_flags(capsys):
    with pytest.raises(SystemExit) as done:
        finetune.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "python -m jobs.finetune" in out
    for flag in ("--dataset DATASET_DIR", "--phase PHASE", "--output OUTPUT_DIR", "--force", "--verbose"):
        assert flag in out


def test_missing_dataset_is_an_error_before_ray_starts(tmp_path, capsys):
    rc = finetune.main(["--dataset", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "--dataset" in err and "python -m jobs.build_dataset" in err
    assert not (tmp_path / "o").exists()


def test_missing_phase_fails_before_ray_starts_naming_dataset_and_phase(tmp_path, capsys, ray_forbidden):
    dataset = write_dataset(tmp_path / "ds", rows(n_train=4, n_val=0))
    rc = finetune.main(["--dataset", str(dataset), "--phase", "placement", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and str(dataset) in err and "'placement'" in err and "rtl_design" in err


@pytest.mark.integration
def test_every_row_rejected_exits_non_zero_and_reports_the_reasons(ray_session, tmp_path, capsys):
    """Issue 8: an empty ``messages`` list used to crash the job; now each bad row is named and counted."""
    ds = tmp_path / "ds"
    f = write_parquet(ds.joinpath(*TRAIN, "part-0.parquet"), bad_rows())
    write_parquet(ds.joinpath(*TRAIN, "part-1.parquet"), [
        {"id": "intcontent", "messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": 2}]}],
        raw=True)
    out = tmp_path / "o"
    assert finetune.main(["--dataset", str(ds), "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert "every input was rejected" in captured.err
    assert f"{f} row 0: empty_messages" in captured.out and f"{f} row 1: no_assistant_turn" in captured.out
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["examples"]["read"] == 3 and report["examples"]["train"] == 0
    assert report["rejected"] == {"empty_messages": 1, "no_assistant_turn": 1, "non_string_content": 1}
    assert not (out / "_chipforge" / "finetune.json").exists()  # a failed run is never "up to date"


def progress_steps(out: str) -> list[int]:
    """Optimizer steps of the training-loss lines the job printed."""
    return [int(m.group(1)) for m in re.finditer(r"\] step (\d+)/\d+  loss ", out)]


@pytest.mark.integration
@pytest.mark.slow
def test_finetune_resumes_skips_when_up_to_date_forces_and_reruns_on_a_changed_dataset(ray_session, tmp_path, capsys):
    ds = write_dataset(tmp_path / "ds", rows(n_train=40, n_val=0))  # no validation split: a share is held out
    write_parquet(ds.joinpath(*TRAIN, "part-bad.parquet"), bad_rows()[:1])
    out, registry = tmp_path / "ft", tmp_path / "registry.json"
    argv = ["--dataset", str(ds), "--output", str(out), "max_length=128", "optim.epochs=3", "eval_every_steps=4",
            "log_every_steps=2", "fail_at_step=6", "max_failures=0", f"registry={registry}"]

    # 1. a worker dies at step 6 and no restart is allowed: the job fails with one clear line
    assert finetune.main(argv) == 1
    first = capsys.readouterr()
    assert "injected failure at step 6" in first.err and "rerun the same command to resume" in first.err
    assert (out / ".fail_injected").read_text() == "6" and not (out / "report.json").exists()
    assert progress_steps(first.out) == [1, 2, 4, 6]  # rank 0 only: one line per logging step

    # 2. the same command again resumes from the step-4 checkpoint and finishes the plan
    assert finetune.main(argv) == 0
    second = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    plan = report["plan"]
    assert report["resumed_from_step"] == [4] and "resuming after step 4" in second.out
    assert progress_steps(second.out) == list(range(6, plan["total_steps"] + 1, 2))
    assert report["examples"]["validation_from"].startswith("held out") and report["eval_rows"] >= 1
    assert report["examples"]["read"] == 41 and report["rejected"] == {"empty_messages": 1}
    assert report["examples"]["train"] + report["examples"]["validation"] == 40
    assert plan["steps_per_epoch"] == report["train_rows"] // (2 * 2)  # 2 workers x micro batch 2
    assert report["optimizer_steps"] == plan["total_steps"] == plan["steps_per_epoch"] * 3
    assert [h["step"] for h in report["history"]][-1] == report["optimizer_steps"]
    assert report["train_loss_last"] < 0.8 * report["train_loss_first"]
    for key in ("train_loss_first", "train_loss_last", "eval_loss", "eval_perplexity", "tokens_per_s"):
        assert isinstance(report[key], (int, float)) and report[key] > 0, key
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "adapter").iterdir()}
    assert (out / "tokenizer" / "tokenizer.json").exists() and (out / "config.yaml").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    entry = json.loads(registry.read_text())["specialists"]["rtl_design"]
    assert entry["adapter_path"] == str(out / "adapter") and entry["metrics"]["steps"] == report["optimizer_steps"]
    # the summary is the last thing printed
    tail = second.out.rstrip().splitlines()
    assert tail[-1].startswith("registered as the rtl_design specialist") and tail[-2].startswith("adapter: ")
    assert any(line.startswith("== finetune summary (ok") for line in tail[-8:])

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base_model"), out / "adapter")
    enc = tok.apply_chat_template([{"role": "user", "content": "Write a 4-bit register named reg_2."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] == enc["input_ids"].shape[1] + 8 or tok.eos_token_id in gen[0].tolist()

    # 3. same config, same dataset: skipped
    assert finetune.main(argv) == 0
    assert "up to date, skipped" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["wall_s"] == report["wall_s"]

    # 4. --force redoes it from scratch (not from this config's final checkpoint)
    assert finetune.main(["--force", *argv]) == 0
    forced_out = capsys.readouterr().out
    forced = json.loads((out / "report.json").read_text())
    assert "--force: training from scratch" in forced_out and forced["resumed_from_step"] == []
    assert progress_steps(forced_out)[0] == 1 and forced["run_name"] == report["run_name"]

    # 5. the dataset changed: trained again, from scratch (not from the other dataset's checkpoints)
    write_dataset(ds, rows(n_train=44, n_val=0))
    assert finetune.main(argv) == 0
    assert "rerunning (inputs changed: dataset_dir)" in capsys.readouterr().out
    again = json.loads((out / "report.json").read_text())
    assert again["resumed_from_step"] == [] and again["examples"]["read"] == 45
    assert again["run_name"] != report["run_name"]


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("finetune_*.yaml"))
                         + sorted((REPO / "jobs" / "configs").glob("tune_*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate_and_name_their_launch_command(path):
    import importlib

    from chipforge.config import launch_command, read_yaml, validate

    cmd = launch_command(path)
    assert cmd and cmd.endswith(f"--config jobs/configs/{path.name}")
    module = importlib.import_module(cmd.split()[2])
    cfg = validate(module.CONFIG_CLASS, read_yaml(path), source=str(path))
    ft = cfg if path.name.startswith("finetune_") else cfg.finetune
    if "tiny" in path.name:
        assert ft.base_model == "tiny" and not ft.scaling.use_gpu and ft.scaling.num_workers == 2
        assert ft.dataset_dir == "sample/dataset" and not ft.deepspeed.offload_optimizer
    else:
        assert ft.scaling.use_gpu and ft.scaling.num_workers == 8 and ft.deepspeed.bf16
        assert ft.deepspeed.zero_stage in (2, 3) and ft.base_model != "tiny"
        if path.name.startswith("finetune_"):
            assert path.name == f"finetune_{ft.phase}.yaml"


def test_unreadable_registry_fails_before_ray_starts_naming_the_field(tmp_path, capsys, ray_forbidden):
    """A registry that cannot be read (here a directory; on a cluster config, a bucket this machine cannot reach):
    exit 2 naming ``registry``. Before: the OSError's traceback and exit 1 (the GPU configs' registry is
    s3://chipforge-runs/..., so without network or credentials that is what a user saw first)."""
    registry = tmp_path / "registry.json"
    registry.mkdir()
    dataset = write_dataset(tmp_path / "ds", rows(n_train=4, n_val=0))
    rc = finetune.main(["--dataset", str(dataset), "--output", str(tmp_path / "o"), f"registry={registry}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"registry: {str(registry)!r} cannot be read" in err and "registry=PATH" in err, err
    assert "Traceback" not in err


def test_broken_registry_fails_before_ray_starts_naming_the_file(tmp_path, capsys, ray_forbidden):
    """A hand-edited registry.json that is not JSON: exit 2 naming it at once, not a traceback after training."""
    registry = tmp_path / "registry.json"
    registry.write_text('{"version": 1, "specialists": {')
    dataset = write_dataset(tmp_path / "ds", rows(n_train=4, n_val=0))
    rc = finetune.main(["--dataset", str(dataset), "--output", str(tmp_path / "o"), f"registry={registry}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"registry {registry}: not valid JSON" in err
    assert registry.read_text() == '{"version": 1, "specialists": {'


def test_a_base_model_that_cannot_be_resolved_fails_before_ray_starts_naming_it(tmp_path, capsys, ray_forbidden):
    """The GPU configs' Hub id on an offline machine without it in the cache: exit 2 naming ``base_model``
    and what to do. Before: Ray started and Ray Data's tokeniser failed with a 119-line traceback, exit 1."""
    dataset = write_dataset(tmp_path / "ds", rows(n_train=4, n_val=0))
    rc = finetune.main(["--config", str(REPO / "jobs" / "configs" / "finetune_rtl_design.yaml"), "--dataset",
                        str(dataset), "--output", str(tmp_path / "o"), "registry=null",
                        f"storage_path={tmp_path / 'ck'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "base_model 'Qwen/Qwen2.5-Coder-7B-Instruct' is not in the local Hugging Face cache" in err
    assert "HF_HOME" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.integration
def test_use_gpu_on_a_cluster_without_gpus_fails_within_resource_wait_naming_the_fields(ray_session, tmp_path,
                                                                                      capsys, monkeypatch):
    """``scaling.use_gpu: true`` (the GPU configs) on a cluster with no GPUs (this session's Ray has none): exit 1
    after ``scaling.resource_wait_s`` naming the fields and what the cluster has. Before: Train V2 retried its
    worker-group start forever (``controller_failure_limit`` -1), a hang."""
    import time

    from training.trainer import START_TIMEOUT_ENV

    monkeypatch.setenv(START_TIMEOUT_ENV, "60")  # restored after the test (build_trainer sets it)
    ds = write_dataset(tmp_path / "ds", rows(n_train=8, n_val=0))
    t0 = time.monotonic()
    rc = finetune.main(["--dataset", str(ds), "--output", str(tmp_path / "o"), "max_length=128",
                        "scaling.use_gpu=true", "scaling.resource_wait_s=4", "max_failures=1"])
    wall = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 1 and "within scaling.resource_wait_s (4 s)" in err, err[-3000:]
    assert "scaling.num_workers=2 workers of {CPU: 1, GPU: 1}" in err and "scaling.use_gpu: true" in err
    assert "GPU: 0}" in err and "set scaling.use_gpu=false" in err and "Traceback" not in err
    assert wall < 60, wall  # 2 start attempts of 2 s each, plus reading, the tiny base model and tokenising
    assert not (tmp_path / "o" / "report.json").exists()
