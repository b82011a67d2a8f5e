"""chipforge.job: the skeleton every job runs through, on a toy job without Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chipforge import job
from chipforge.config import Config
from chipforge.job import JobError, JobSpec, Run


class ToyConfig(Config):
    input_dir: str | None = None
    output_dir: str = "out/toy"
    factor: int = 2
    workers: int = 1  # volatile: does not change the result
    mode: str = "ok"


def _body(calls: list[str]) -> Any:
    def body(cfg: ToyConfig, run: Run) -> dict[str, Any]:
        calls.append(cfg.output_dir)
        if cfg.mode == "raise":
            raise JobError("the toy input is broken")
        n_in = len(list(Path(cfg.input_dir).iterdir())) if cfg.input_dir else 1
        n_out = 0 if cfg.mode == "reject_all" else n_in * cfg.factor
        return {"n_in": n_in, "n_out": n_out}
    return body


def _spec(tmp_path: Path) -> JobSpec[ToyConfig]:
    yaml = tmp_path / "toy.yaml"
    yaml.write_text("# launch: python -m jobs.toy --config toy.yaml\nfactor: 3\n")
    return JobSpec(name="toy", config=ToyConfig, default_config=str(yaml),
                   summary=lambda r: f"  {r['n_out']} outputs from {r['n_in']} inputs",
                   flags={"--input": "input_dir", "--output": "output_dir"},
                   inputs={"input_dir": "a toy input directory"}, volatile=("workers",),
                   outputs=lambda r: r["n_out"], inputs_count=lambda r: r["n_in"], uses_ray=False)


@pytest.fixture()
def inp(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_text("a")
    return d


def test_runs_writes_report_and_skips_an_unchanged_rerun(tmp_path: Path, inp: Path, capsys) -> None:
    spec, calls, out = _spec(tmp_path), [], tmp_path / "out"
    argv = ["--input", str(inp), "--output", str(out)]
    assert job.main(spec, _body(calls), argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok" and report["n_out"] == 3 and report["config"]["factor"] == 3
    assert "3 outputs from 1 inputs" in capsys.readouterr().out
    # same config and inputs: skipped, and it says so; a volatile field does not count
    assert job.main(spec, _body(calls), [*argv, "workers=4"]) == 0
    assert len(calls) == 1
    assert "up to date, skipped" in capsys.readouterr().out
    # --force redoes it
    assert job.main(spec, _body(calls), [*argv, "--force"]) == 0
    assert len(calls) == 2


def test_a_changed_config_or_input_reruns_and_says_why(tmp_path: Path, inp: Path, capsys) -> None:
    spec, calls, out = _spec(tmp_path), [], tmp_path / "out"
    argv = ["--input", str(inp), "--output", str(out)]
    assert job.main(spec, _body(calls), argv) == 0
    assert job.main(spec, _body(calls), [*argv, "factor=5"]) == 0
    assert "rerunning (config changed)" in capsys.readouterr().out
    (inp / "b.txt").write_text("b")
    assert job.main(spec, _body(calls), [*argv, "factor=5"]) == 0
    assert "rerunning (inputs changed: input_dir)" in capsys.readouterr().out
    assert len(calls) == 3
    assert json.loads((out / "report.json").read_text())["n_out"] == 10


def test_upstream_marker_is_the_input_fingerprint(tmp_path: Path, inp: Path) -> None:
    """A downstream job keys on the upstream job's fingerprint, not on file times."""
    spec, calls = _spec(tmp_path), []
    up, down = tmp_path / "up", tmp_path / "down"
    assert job.main(spec, _body(calls), ["--input", str(inp), "--output", str(up)]) == 0
    assert job.main(spec, _body(calls), ["--input", str(up), "--output", str(down)]) == 0
    assert job.main(spec, _body(calls), ["--input", str(up), "--output", str(down)]) == 0
    assert len(calls) == 2
    # the upstream reruns with another config: the downstream reruns too
    assert job.main(spec, _body(calls), ["--input", str(inp), "--output", str(up), "factor=7"]) == 0
    assert job.main(spec, _body(calls), ["--input", str(up), "--output", str(down)]) == 0
    assert len(calls) == 4


def test_config_errors_name_the_flag_override_or_file_before_any_work(tmp_path: Path, inp: Path, capsys) -> None:
    spec, calls = _spec(tmp_path), []
    out = tmp_path / "out"
    assert job.main(spec, _body(calls), ["--output", str(out), "factor=abc"]) == 2
    assert "command-line override 'factor=abc'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("factor: [1]\n")
    assert job.main(spec, _body(calls), ["--config", str(bad), "--output", str(out)]) == 2
    assert f"{bad}: factor" in capsys.readouterr().err
    assert job.main(spec, _body(calls), ["--input", str(tmp_path / "missing"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--input" in err and "does not exist" in err and "a toy input directory" in err
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert job.main(spec, _body(calls), ["--output", str(a_file)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert calls == [] and not out.exists()


def test_every_input_rejected_is_a_failure_without_marker(tmp_path: Path, inp: Path, capsys) -> None:
    spec, calls, out = _spec(tmp_path), [], tmp_path / "out"
    argv = ["--input", str(inp), "--output", str(out), "mode=reject_all"]
    assert job.main(spec, _body(calls), argv) == 1
    assert "every input was rejected" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["status"] == "failed"
    assert not Path(job.marker_path(str(out), "toy")).exists()
    assert job.main(spec, _body(calls), argv) == 1  # not skipped: nothing was finished
    assert len(calls) == 2


def test_a_job_error_is_one_line_and_exit_1(tmp_path: Path, capsys) -> None:
    spec, calls = _spec(tmp_path), []
    assert job.main(spec, _body(calls), ["--output", str(tmp_path / "o"), "mode=raise"]) == 1
    err = capsys.readouterr().err
    assert "error: toy: the toy input is broken" in err and "Traceback" not in err


def test_ctrl_c_is_one_line_exit_130_and_marks_nothing_finished(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path)

    def interrupted(cfg, run):
        raise KeyboardInterrupt

    assert job.main(spec, interrupted, ["--output", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert "error: toy: interrupted" in err and "Traceback" not in err
    assert not Path(job.marker_path(str(tmp_path / "o"), "toy")).exists()


def test_help_shows_field_names_not_internal_dests(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        job.main(_spec(tmp_path), _body([]), ["--help"])
    text = capsys.readouterr().out
    assert "--output OUTPUT_DIR" in text and "--force" in text and "FLAG__" not in text


def test_native_log_keeps_ray_lines_out_of_the_terminal(tmp_path: Path, capfd) -> None:
    import os
    import sys

    log = tmp_path / "native.log"
    with job.NativeLog(str(log)):
        os.write(2, b"core_worker.cc:1 native noise\n")
        print("(raylet) WARNING: python-side noise", file=sys.stderr, flush=True)
        print("progress line", flush=True)
    print("error after the job", file=sys.stderr, flush=True)
    captured = capfd.readouterr()
    assert "noise" not in captured.err and "progress line" in captured.out
    assert "error after the job" in captured.err
    assert "native noise" in log.read_text() and "python-side noise" in log.read_text()


def test_a_local_ray_starts_without_dashboard_unless_asked(monkeypatch) -> None:
    """The job's own local Ray has no dashboard (its processes cost a 2-core laptop a share of a core);
    a caller can still ask for one, and a Ray Client address (which takes no such argument) gets none."""
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(job, "quiet_ray_loggers", lambda verbose: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    job.init_ray()
    job.init_ray(include_dashboard=True)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    job.init_ray()
    assert [c.get("include_dashboard", "unset") for c in calls] == [False, True, "unset"]


def test_each_job_names_its_own_command_whoever_runs_it(monkeypatch, tmp_path: Path, capsys) -> None:
    """`python -m jobs.<module>` in usage text and hints is the job's own, also when the quickstart (another
    ``__main__``) runs it in-process or the ``chipforge`` command does."""
    import importlib
    import sys

    from chipforge.cli import COMMANDS

    monkeypatch.setitem(sys.modules, "__main__", importlib.import_module("jobs.quickstart"))
    for module, _ in COMMANDS.values():
        spec = getattr(importlib.import_module(module), "SPEC", None)
        if spec is not None:
            assert f"jobs.{job._module_name(spec)}" == module
    # a finetune YAML run as the quickstart's finetune step is not "for another job"
    from pipelines import finetune

    bad = tmp_path / "ft.yaml"
    bad.write_text("# launch: python -m jobs.finetune --config ft.yaml\noptim: {lr: -1}\n")
    assert job.main(finetune.SPEC, finetune.run, ["--config", str(bad)]) == job.EXIT_USAGE
    err = capsys.readouterr().err
    assert "optim" in err and "another job" not in err


def test_unusable_storage_is_a_usage_error_naming_the_path(s3_env, tmp_path: Path, capsys) -> None:
    from chipforge import fs
    from tests.conftest import make_bucket

    spec = JobSpec(name="toy", config=ToyConfig, default_config=None, summary=lambda r: "",
                   flags={"--output": "output_dir", "--input": "input_dir"}, inputs={"input_dir": "toy input"},
                   uses_ray=False)
    bucket = make_bucket(s3_env, "cf-job-paths")
    cases = {("--output", "s3://cf-no-such-bucket/out"): "its bucket 'cf-no-such-bucket' cannot be used: ",
             ("--output", bucket): f"an output needs a folder inside the bucket (e.g. {bucket}/out)",
             ("--output", "nosuchscheme://x/y"): "storage cannot be used: Unrecognized filesystem type",
             ("--input", f"{bucket}/missing"): "does not exist (expected toy input)"}
    for (flag, value), message in cases.items():
        argv = [flag, value] + ([] if flag == "--output" else ["--output", str(tmp_path / "o")])
        assert job.main(spec, _body([]), argv) == job.EXIT_USAGE
        err = capsys.readouterr().err
        assert f"{flag} {value}" in err and message in err, err
    assert "The specified bucket does not exist" in job._probe("s3://cf-no-such-bucket/out", output=True)[1]
    assert job.main(spec, _body([]), ["--output", f"{bucket}/out"]) == job.EXIT_OK
    assert fs.exists(f"{bucket}/out/report.json")


def test_an_endpoint_that_never_answers_is_a_usage_error_in_seconds(monkeypatch, tmp_path: Path, capsys) -> None:
    """pyarrow waits minutes on a store that accepts connections and never replies (and the process
    cannot exit meanwhile): the configured endpoint is asked first, with a short timeout."""
    import socket
    import time

    spec = JobSpec(name="toy", config=ToyConfig, default_config=None, summary=lambda r: "",
                   flags={"--output": "output_dir"}, uses_ray=False)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setattr(job, "ENDPOINT_TIMEOUT_S", 1.0)
        job._endpoint_silence.cache_clear()
        t0 = time.monotonic()
        assert job.main(spec, _body([]), ["--output", "s3://cf-any/out"]) == job.EXIT_USAGE
        assert time.monotonic() - t0 < 10
    job._endpoint_silence.cache_clear()
    assert f"storage endpoint {endpoint} did not answer within 1 s" in capsys.readouterr().err


def test_credentials_in_a_config_url_never_reach_the_report(tmp_path: Path, inp: Path) -> None:
    """A key in an endpoint URL of the config (``user:key@``, ``?api-key=``) is redacted in report.json."""
    out = tmp_path / "out"
    url = "https://me:s3cr3t-pw@llm.example.invalid:8443/v1?api-key=s3cr3t-key&model=m"
    assert job.main(_spec(tmp_path), _body([]), ["--input", str(inp), "--output", str(out), f"mode={url}"]) == 0
    text = (out / "report.json").read_text()
    assert "s3cr3t" not in text
    assert json.loads(text)["config"]["mode"] == "https://llm.example.invalid:8443/v1?api-key=REDACTED&model=m"


def test_storage_options_in_an_output_uri_are_a_usage_error_before_any_work(s3_env, capsys) -> None:
    """``--output s3://…?endpoint_override=…`` crashed with a traceback (the marker path joined onto it
    put ``/_chipforge/…`` inside the options); it is exit 2 naming the flag, and the plain URI runs."""
    from chipforge import fs
    from tests.conftest import make_bucket

    spec = JobSpec(name="toy", config=ToyConfig, default_config=None, summary=lambda r: "",
                   flags={"--output": "output_dir"}, uses_ray=False)
    bucket = make_bucket(s3_env, "cf-job-options")
    endpoint = s3_env["AWS_ENDPOINT_URL"].split("://", 1)[1]
    calls: list[str] = []
    assert job.main(spec, _body(calls), ["--output", f"{bucket}/out?endpoint_override={endpoint}&scheme=http"]) == \
        job.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"output_dir: Value error, {bucket}/out?endpoint_override, scheme: storage options" in err
    assert f"AWS_ENDPOINT_URL=http://{endpoint}" in err and "(set by --output " in err
    assert not calls and fs.listdir(bucket) == []
    assert job.main(spec, _body(calls), ["--output", f"{bucket}/out"]) == job.EXIT_OK
    assert fs.exists(f"{bucket}/out/report.json") and fs.exists(f"{bucket}/out/_chipforge/toy.json")
