"""How a job ends when it is stopped (SIGTERM: ``ray job stop``, ``kill``) or collides with another run
of the same output, on a toy job without Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from chipforge import fs, job
from chipforge.config import Config
from chipforge.job import JobSpec, Run

ROOT = Path(__file__).resolve().parents[2]


class ToyConfig(Config):
    input_dir: str | None = None
    output_dir: str = "out/toy"
    value: str = "A"


def _spec(**kw: Any) -> JobSpec[ToyConfig]:
    return JobSpec(name="toy", config=ToyConfig, default_config=None, summary=lambda r: f"value {r['value']}",
                   flags={"--input": "input_dir", "--output": "output_dir"}, inputs={"input_dir": "a toy input"},
                   uses_ray=False, **kw)


def _writes_data(cfg: ToyConfig, run: Run) -> dict[str, Any]:
    with fs.atomic_dir(fs.join(cfg.output_dir, "data")) as tmp:
        fs.write_text(fs.join(tmp, "v.txt"), cfg.value)
    return {"value": cfg.value}


TOY_SCRIPT = textwrap.dedent("""
    import sys, time
    from chipforge import fs, job
    from chipforge.config import Config
    from chipforge.job import JobSpec

    class C(Config):
        output_dir: str = "o"

    def body(cfg, run):
        with fs.atomic_dir(fs.join(cfg.output_dir, "data")) as tmp:
            fs.write_text(fs.join(tmp, "v.txt"), "half")
            print("READY", flush=True)
            time.sleep(60)
        return {}

    spec = JobSpec(name="toy", config=C, default_config=None, summary=lambda r: "", flags={"--output": "output_dir"},
                   uses_ray=False)
    raise SystemExit(job.main(spec, body, sys.argv[1:]))
""")


def test_sigterm_ends_a_job_like_ctrl_c_exit_143_without_temporaries(tmp_path: Path) -> None:
    """`ray job stop` sends SIGTERM to the entrypoint (then SIGKILL after 3 s): the job unwinds, its
    atomic_dir temporary is removed, nothing is marked finished, one line and exit 143 (Python's
    default would end it on the spot: exit -15 and a ``data.tmp-xxxxxxxx`` left in the output)."""
    script, out = tmp_path / "toy.py", tmp_path / "out"
    script.write_text(TOY_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), "--output", str(out)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    for line in proc.stdout:
        if "READY" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM
    assert "error: toy: stopped (SIGTERM)" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == []
    assert not Path(job.marker_path(str(out), "toy")).exists()


def test_sigterm_after_ray_init_replaced_the_handler_is_still_a_stop(tmp_path: Path, monkeypatch) -> None:
    """ray.init installs its own SIGTERM handler (``sys.exit(15)``, or a local node's ``sys.exit(1)``):
    the job takes SIGTERM back after it, an exit with the signal's number during ray.init is a stop, and
    so is the plain KeyboardInterrupt ray.get raises when the stop lands while it waits."""
    previous = signal.getsignal(signal.SIGTERM)

    def fake_init_ray(verbose: bool = False) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init does

    def stopped_inside(cfg: ToyConfig, run: Run) -> dict[str, Any]:
        with fs.atomic_dir(fs.join(cfg.output_dir, "data")):
            os.kill(os.getpid(), signal.SIGTERM)
        return {"value": "never"}

    def exits_like_ray(cfg: ToyConfig, run: Run) -> dict[str, Any]:
        raise SystemExit(signal.SIGTERM)

    def stopped_in_ray_get(cfg: ToyConfig, run: Run) -> dict[str, Any]:
        try:  # ray.get, interrupted by a signal handler's exception, raises a plain KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None
        return {"value": "never"}

    monkeypatch.setattr(job, "init_ray", fake_init_ray)
    monkeypatch.setattr(job, "_ray_started", lambda: False)
    spec = JobSpec(name="toy", config=ToyConfig, default_config=None, summary=lambda r: "",
                   flags={"--output": "output_dir"}, uses_ray=True)
    try:
        for body in (stopped_inside, exits_like_ray, stopped_in_ray_get):
            out = tmp_path / body.__name__
            assert job.main(spec, body, ["--output", str(out), "--verbose"]) == 143
            assert [p.name for p in out.glob("*")] == []  # no data.tmp-*, no marker
        assert signal.getsignal(signal.SIGTERM) == previous  # the caller's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_second_run_of_the_same_output_is_refused_while_the_first_runs(tmp_path: Path, capsys) -> None:
    """A re-submitted job writing the same --output while the first still runs used to replace the
    first one's data under it; the marker of one config could end over the data of the other, and a
    rerun of that config was then skipped over the wrong data."""
    out, seen = tmp_path / "out", {}

    def first(cfg: ToyConfig, run: Run) -> dict[str, Any]:
        seen["second"] = job.main(_spec(), _writes_data, ["--output", str(out), "value=B"])
        return _writes_data(cfg, run)

    assert job.main(_spec(), first, ["--output", str(out), "value=A"]) == job.EXIT_OK
    assert seen["second"] == job.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"output {str(out)!r} is being written by another run now" in err
    assert (out / "data" / "v.txt").read_text() == "A"
    marker = json.loads(Path(job.marker_path(str(out), "toy")).read_text())
    assert marker["summary"] == "value A"
    # the lock is given back: the next run goes ahead
    assert job.main(_spec(), _writes_data, ["--output", str(out), "value=B"]) == job.EXIT_OK
    assert (out / "data" / "v.txt").read_text() == "B"


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(tmp_path: Path, capsys) -> None:
    """A run killed with SIGKILL (after `ray job stop`'s grace period, the OOM killer) cannot clean up:
    the next run of that output removes its ``*.tmp-xxxxxxxx`` instead of letting them pile up."""
    out = tmp_path / "out"
    left = [out / "data.tmp-0123abcd", out / "report.json.tmp-89abcdef", out / "_chipforge" / "toy.json.tmp-deadbeef",
            tmp_path / "out.tmp-feedf00d"]
    kept = [out / "notes.tmp-draft", tmp_path / "other.tmp-feedf00d", out / "keep" / "x.tmp-0123abcd"]
    for p in left + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if p.name.startswith(("data", "out")) else p.write_text("x")
    assert job.main(_spec(), _writes_data, ["--output", str(out)]) == job.EXIT_OK
    assert [p for p in left if p.exists()] == [] and all(p.exists() for p in kept)
    assert "removed 4 temporaries of an earlier run that was killed" in capsys.readouterr().out


def test_an_output_that_is_an_input_lies_inside_one_or_below_a_file_is_refused(tmp_path: Path, capsys) -> None:
    """Refused before any work (exit 2): an output equal to an input (the job replaces what it reads),
    inside an input (a rerun reads its own output; its input fingerprint changes with every report)
    or below a file (it failed after the whole run, writing its report, with a traceback)."""
    inp, a_file, calls = tmp_path / "in", tmp_path / "file.txt", []
    inp.mkdir()
    (inp / "a.txt").write_text("a")
    a_file.write_text("x")

    def body(cfg: ToyConfig, run: Run) -> dict[str, Any]:
        calls.append(cfg.output_dir)
        return {"value": "x"}

    docs = _spec(extra_inputs=lambda cfg: {"source:mine": str(inp)})
    cases = [(_spec(), ["--input", str(inp), "--output", str(inp)], "is also the input of --input"),
             (_spec(), ["--input", str(inp), "--output", str(inp / "out")], "lies inside the input of --input"),
             (_spec(), ["--input", str(inp), "--output", f"{tmp_path}/x/../in/out"], "lies inside the input"),
             (docs, ["--output", str(inp / "out")], "lies inside the input of input source:mine"),
             (_spec(), ["--output", str(a_file / "sub" / "out")], f"{str(a_file)!r} is a file, not a directory")]
    for spec, argv, message in cases:
        assert job.main(spec, body, argv) == job.EXIT_USAGE, argv
        err = capsys.readouterr().err
        assert message in err and "--output" in err and "Traceback" not in err, err
    assert calls == [] and sorted(p.name for p in inp.iterdir()) == ["a.txt"]
    # an input inside the output is a fine layout
    assert job.main(_spec(), body, ["--input", str(inp), "--output", str(tmp_path)]) == job.EXIT_OK


def test_a_failed_atomic_file_write_leaves_no_temporary(tmp_path: Path) -> None:
    """fs.write_bytes (report.json, markers) removes its temporary file when the write or the rename
    fails or is interrupted."""
    target = tmp_path / "report.json"
    target.mkdir()
    (target / "x").write_text("x")  # a file cannot be renamed over a non-empty directory
    with pytest.raises(OSError):
        fs.write_bytes(str(target), b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_dir_stopped_while_replacing_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    """A stop that lands after the body, while atomic_dir removes the old output, removes the new one's
    temporary directory too (the job has written no marker: its rerun writes the output again)."""
    out = tmp_path / "out"
    out.mkdir()
    real_delete = fs.delete

    def stopped_while_replacing(path: str) -> None:
        if path == str(out):
            raise KeyboardInterrupt  # Ctrl-C, or a stop (job.Stopped is one)
        real_delete(path)

    monkeypatch.setattr(fs, "delete", stopped_while_replacing)
    with pytest.raises(KeyboardInterrupt):
        with fs.atomic_dir(str(out)) as tmp:
            fs.write_text(fs.join(tmp, "v.txt"), "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
