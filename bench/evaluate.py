"""Evaluation job benchmark: simulated samples per second through the job against a plain loop.

Generates N small problems in the VerilogEval v2 layout (combinational and clocked designs of
several widths, a ``RefModule`` and a ``tb`` that counts mismatches, written by the generator
below), then:

- **plain loop**: one process, sequentially, for each sample: write the files to a temporary
  directory, ``iverilog`` (the job's command line), ``vvp -n``, check the pass line. No sandbox,
  no Ray: the floor of what one core can do;
- **parallel plain loop** (for each W > 1): the same plain loop in W processes at once, each
  taking the next sample as it finishes one (the best possible balance). It measures what this
  machine gives per core when W cores are busy (shared caches, memory bandwidth, the kernel's
  process creation); on a 2-core VM it is well under 1.0 even with no Ray and no sandbox, so the
  job at W workers is also compared with it, beside (never instead of) the one-process loop;
- **sandboxed loop**: the same samples through ``evaluation.simulate.run_problem`` in one process
  (one bubblewrap sandbox per sample, compile and simulation inside, as in the job), to show the
  sandbox's own cost;
- **job**: ``python -m jobs.evaluate --reference evaluate_models=false`` on the generated
  checkout (each problem answered with its reference, so every sample is compiled and
  simulated), in a fresh process with a local Ray, with the check stage limited to W parallel
  tasks for each W of ``--workers``. Samples/s is N over the job's ``generate + check`` step,
  Ray Data's start-up of the stage included (so a small N understates what a cluster-sized run
  gets). Each check task gets ``--batch-size`` samples; by default about N / (4 W), so every
  worker gets several tasks and the per-task cost is spread over many samples.

Reports samples/s for each, the job's samples/s per worker divided by the plain loop's (the
ratio per core; 1.0 means no overhead over a bare loop), by the parallel plain loop's with the
same W (the ratio per core with the machine's own scaling taken out), and by the sandboxed
loop's (what is left is Ray's share), and the job's wall time against W. The loops are measured right before
each job run. Writes ``bench/results/evaluate.json``.

**Real benchmark code** (``--verilog-eval PATH`` and/or ``--rtllm PATH``: local checkouts of
NVlabs/verilog-eval and hkust-zhiyao/RTLLM, read in place, never copied): instead of generated
problems, every problem of those checkouts (both VerilogEval v2 tasks; ``--max-problems N`` per
benchmark, selected as the job selects them) answered with its own reference, i.e. the job's
``--reference`` self-check (``benchmarks.verilog_eval_v2=PATH benchmarks.rtllm=PATH``). The
plain and sandboxed loops run exactly the same (testbench, reference) pairs with the same
``iverilog`` command line (each problem's ``compile_argv``); references the installed Icarus
cannot compile count as samples there as in the job (compiled, not simulated), and the three
pass counts must agree. Per-sample costs (ms) are reported beside the rates. Writes
``bench/results/evaluate_real.json`` (the generated mode's file is left alone).

``--marginal F`` also runs each job on the first F·N problems: from the two step times
t(n) = start-up + n / rate, the stage's fixed start-up (a fresh Ray's first Data stage: worker
imports, planning) and its marginal samples/s, i.e. what a run large enough to amortise the
start-up gets per worker; both are reported beside the whole-step figures, never instead.

    python bench/evaluate.py [--problems 48] [--workers 1 2] [--repeat 1] [--batch-size N]
    python bench/evaluate.py --verilog-eval /tmp/bench/verilog-eval --rtllm /tmp/bench/RTLLM [--max-problems N]

On a shared machine, wall-clock figures vary with the other load; the load average at the start
and end, and at the start of each run, is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TB = """`timescale 1 ps/1 ps
module tb();
{decls}
  integer i, mismatches = 0;
  RefModule r({conn_ref});
  TopModule d({conn_dut});
{clock}
  initial begin
    for (i = 0; i < {n}; i = i + 1) begin
{drive}
      if ({cmp}) mismatches = mismatches + 1;
    end
    $display("Mismatches: %0d in {n} samples", mismatches);
    $finish;
  end
endmodule
"""


def comb(kind: str, w: int) -> tuple[str, str, str]:
    """(prompt, RefModule, tb) of a combinational problem."""
    body = {"add": "assign y = a + b;", "xor": "assign y = a ^ b;", "mux": "assign y = s ? b : a;",
            "max": "assign y = (a > b) ? a : b;"}[kind]
    ports = f"input [{w - 1}:0] a, input [{w - 1}:0] b, input s, output [{w - 1}:0] y"
    ref = f"module RefModule ({ports});\n  {body}\nendmodule\n"
    tb = TB.format(decls=f"  reg [{w - 1}:0] a, b; reg s; wire [{w - 1}:0] y_ref, y_dut;",
                   conn_ref=".a(a), .b(b), .s(s), .y(y_ref)", conn_dut=".a(a), .b(b), .s(s), .y(y_dut)", clock="",
                   n=200, drive="      a = i * 37 + 11; b = i * 91 + 5; s = i[0]; #1;", cmp="y_ref !== y_dut")
    return f"Implement TopModule: {kind} of two {w}-bit inputs a and b (s selects for mux).", ref, tb


def seq(w: int) -> tuple[str, str, str]:
    ref = (f"module RefModule (input clk, input rst, input en, output reg [{w - 1}:0] q);\n"
           f"  always @(posedge clk) if (rst) q <= 0; else if (en) q <= q + 1;\nendmodule\n")
    tb = TB.format(decls=f"  reg clk = 0, rst = 1, en = 0; wire [{w - 1}:0] q_ref, q_dut;",
                   conn_ref=".clk(clk), .rst(rst), .en(en), .q(q_ref)",
                   conn_dut=".clk(clk), .rst(rst), .en(en), .q(q_dut)", clock="  always #5 clk = ~clk;",
                   n=300, drive="      @(negedge clk); rst = (i < 2); en = (i % 3 != 0);", cmp="q_ref !== q_dut")
    return f"Implement TopModule: a {w}-bit counter with synchronous reset and enable.", ref, tb


def write_checkout(root: Path, n: int) -> Path:
    d = root / "dataset_spec-to-rtl"
    d.mkdir(parents=True)
    kinds = ["add", "xor", "mux", "max", "seq"]
    for i in range(n):
        kind, w = kinds[i % len(kinds)], 4 + 4 * (i // len(kinds) % 8)
        prompt, ref, tb = seq(w) if kind == "seq" else comb(kind, w)
        pid = f"Prob{i + 1:03d}_{kind}{w}"
        (d / f"{pid}_prompt.txt").write_text(prompt + "\n")
        (d / f"{pid}_ref.sv").write_text(ref)
        (d / f"{pid}_test.sv").write_text(tb)
    return root


def plain_loop(problems: list[dict]) -> tuple[float, int]:
    """(seconds, passed): iverilog + vvp per sample, sequentially, in one process, no sandbox.

    The job's command lines and time limits (``SimSettings``); a sample that does not compile is
    not simulated (as in the job), and one past a limit is not a pass.
    """
    from evaluation.simulate import SimSettings

    limits = SimSettings()
    passed = 0
    t0 = time.perf_counter()
    for p in problems:
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in {**p["files"], p["answer_file"]: p["reference"]}.items():
                path = Path(tmp, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content.encode() if isinstance(content, str) else content)
            try:
                comp = subprocess.run(p["compile_argv"], cwd=tmp, capture_output=True,
                                      timeout=limits.compile_timeout_s)
                if comp.returncode != 0:
                    continue
                out = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=tmp, capture_output=True,
                                     timeout=limits.sim_timeout_s).stdout.decode("utf-8", "replace")
            except subprocess.TimeoutExpired:
                continue
            passed += bool(re.search(p["pass_regex"], out))
    return time.perf_counter() - t0, passed


def _plain_one(p: dict) -> tuple[float, int]:
    return plain_loop([p])


def parallel_plain_loop(problems: list[dict], workers: int) -> tuple[float, int]:
    """(wall seconds, passed): ``plain_loop`` over the same samples in ``workers`` processes at once.

    Each process takes the next sample when it has finished one (``imap_unordered``, one sample
    at a time), so the baseline is as well balanced as it can be; the pool is started (forked)
    before the clock starts.
    """
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(abs, range(workers))  # every process is up before timing
        t0 = time.perf_counter()
        passed = sum(r[1] for r in pool.imap_unordered(_plain_one, problems, chunksize=1))
        return time.perf_counter() - t0, passed


def sandboxed_loop(problems: list[dict]) -> tuple[float, int]:
    from evaluation.simulate import SimSettings, run_problem

    from synthesis import sandbox

    sandbox.isolation()  # the once-per-process probe (two sandbox runs) is not a sample's cost
    settings = SimSettings()
    t0 = time.perf_counter()
    passed = sum(run_problem(p, p["reference"], settings)["verdict"] == "pass" for p in problems)
    return time.perf_counter() - t0, passed


class CpuAccount:
    """CPU seconds spent while the job runs, by kind of process: where a core goes when the job is
    slower per core than the plain loop. Processes are sampled every 0.25 s (psutil; nothing when
    it is missing); the sandboxed tools are short-lived, so they are the machine's busy time
    (user + system + nice) less everything sampled."""

    KINDS = (("driver", "jobs.evaluate"), ("check tasks", "MapBatches"),
             ("ray data actors", "_StatsActor"), ("ray data actors", "_AutoscalingCoordinator"),
             ("ray system", "raylet"), ("ray system", "gcs_server"), ("ray system", "dashboard"),
             ("ray system", "Agent"), ("ray system", "log_monitor"), ("ray system", "monitor.py"),
             ("other ray workers", "ray::"), ("other ray workers", "default_worker"))

    def __enter__(self) -> "CpuAccount":
        self.result: dict[str, float] = {}
        try:
            import psutil
        except ImportError:
            self.psutil = None
            return self
        self.psutil, self.seen, self.stop = psutil, {}, threading.Event()
        self.before = {p.pid for p in psutil.process_iter()}
        self.t0 = psutil.cpu_times()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _kind(self, cmdline: list[str]) -> str | None:
        text = " ".join(cmdline)
        return next((kind for kind, needle in self.KINDS if needle in text), None)

    def _poll(self) -> None:
        while not self.stop.is_set():
            for proc in self.psutil.process_iter(["pid", "cmdline"]):
                if proc.pid in self.before:
                    continue
                try:
                    kind = self._kind(proc.info["cmdline"] or [])
                    if kind is not None:  # a worker's most specific role wins (it starts as ray::IDLE)
                        t = proc.cpu_times()
                        old = self.seen.get(proc.pid, ("other ray workers", 0.0))[0]
                        self.seen[proc.pid] = (old if kind == "other ray workers" else kind, t.user + t.system)
                except self.psutil.Error:
                    pass
            self.stop.wait(0.25)

    def __exit__(self, *exc: Any) -> None:
        if self.psutil is None:
            return
        self.stop.set()
        self.thread.join()
        t1 = self.psutil.cpu_times()
        busy = sum(getattr(t1, f) - getattr(self.t0, f) for f in ("user", "system", "nice"))
        for kind, seconds in self.seen.values():
            self.result[kind] = round(self.result.get(kind, 0.0) + seconds, 2)
        self.result["sandboxed tools and other"] = round(busy - sum(self.result.values()), 2)
        self.result["machine busy"] = round(busy, 2)
        self.result["machine idle"] = round(t1.idle - self.t0.idle, 2)


def run_job(checkout: Path | None, out: Path, workers: int, batch_size: int | None,
            max_problems: int | None = None, rtllm: Path | None = None) -> dict:
    """One ``jobs.evaluate --reference`` run; ``batch_size`` None leaves the job's own default
    (``pipelines.evaluate.check_batch_size``), so the benchmark measures what users get."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "jobs.evaluate", "--output", str(out), "--force", "--reference",
            "evaluate_models=false", "dataset_dir=null", "smoke=false", "routing.enabled=false",
            f"simulation.resources.concurrency={workers}"]
    if batch_size:
        argv.append(f"simulation.resources.batch_size={batch_size}")
    if checkout:
        argv.append(f"benchmarks.verilog_eval_v2={checkout}")
    if rtllm:
        argv.append(f"benchmarks.rtllm={rtllm}")
    if max_problems:
        argv.append(f"benchmarks.max_problems={max_problems}")
    t0 = time.perf_counter()
    with CpuAccount() as cpu:
        p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"job failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    rep = json.loads((out / "report.json").read_text())
    step = rep["steps"]["generate + check"]["wall_s"]
    cells = {name: b["reference"] for name, b in rep["benchmarks"].items() if "reference" in b}
    return {"workers": workers, "batch_size": rep["engine_info"]["check_batch_size"],
            "samples": sum(c["samples"] for c in cells.values()),
            "passed": sum(c["passed"] for c in cells.values()),
            "by_benchmark": {name: {"samples": c["samples"], "passed": c["passed"]} for name, c in cells.items()},
            "check_step_s": step, "job_wall_s": round(wall, 2), "ray_start_s": rep["steps"]["ray start"]["wall_s"],
            "isolation": rep["sandbox"]["isolation"]["mode"], "cpu_s_by_kind": cpu.result}


def wait_for_quiet(max_load: float | None, max_wait_s: float = 900.0) -> float:
    """Wait (up to ``max_wait_s``) until the 1-minute load average is at most ``max_load``; seconds waited."""
    t0 = time.perf_counter()
    while max_load is not None and os.getloadavg()[0] > max_load and time.perf_counter() - t0 < max_wait_s:
        time.sleep(10)
    return round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=48, help="generated problems (without --verilog-eval/--rtllm)")
    ap.add_argument("--verilog-eval", default=None, metavar="PATH",
                    help="a VerilogEval v2 checkout: measure on its problems (both tasks) instead of generated ones")
    ap.add_argument("--rtllm", default=None, metavar="PATH", help="an RTLLM checkout: measure on its designs too")
    ap.add_argument("--max-problems", type=int, default=None,
                    help="with real checkouts: at most N problems per benchmark (benchmarks.max_problems)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="samples per check task (simulation.resources.batch_size); default: the job's own")
    ap.add_argument("--marginal", type=float, default=0.0, metavar="F",
                    help="also run each job on the first F*N problems (0 < F < 1) to separate the stage's fixed "
                         "start-up from its marginal samples/s")
    ap.add_argument("--max-load", type=float, default=None, metavar="L",
                    help="before each measurement, wait (up to --max-wait s) for the 1-minute load average to be <= L")
    ap.add_argument("--max-wait", type=float, default=900.0, help="seconds --max-load waits at most (default 900)")
    ap.add_argument("--out", default=None, help="default bench/results/evaluate.json (generated problems) or "
                                                "bench/results/evaluate_real.json (real checkouts)")
    args = ap.parse_args()
    from evaluation.benchmarks import load_rtllm, load_verilog_eval_v2, select

    real = bool(args.verilog_eval or args.rtllm)
    out_path = args.out or str(ROOT / "bench" / "results" / ("evaluate_real.json" if real else "evaluate.json"))
    load0 = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        if real:
            checkout = Path(args.verilog_eval).resolve() if args.verilog_eval else None
            rtllm = Path(args.rtllm).resolve() if args.rtllm else None
            problems = (load_verilog_eval_v2(str(checkout)) if checkout else []) + (
                load_rtllm(str(rtllm)) if rtllm else [])
            problems = select(problems, None, args.max_problems)  # the job's own selection
            max_problems = args.max_problems
        else:
            checkout, rtllm = write_checkout(Path(tmp) / "verilog-eval", args.problems), None
            problems = load_verilog_eval_v2(str(checkout), ["spec-to-rtl"])
            max_problems = None
        n = len(problems)
        print(f"{n} problems ({'real checkouts' if real else 'generated'})", flush=True)
        for r in range(args.repeat):
            for w in args.workers:
                waited = wait_for_quiet(args.max_load, args.max_wait)
                # the loops run right before each job run: on a shared machine the load drifts
                load = os.getloadavg()
                plain, boxed = plain_loop(problems), sandboxed_loop(problems)
                par = parallel_plain_loop(problems, w) if w > 1 else plain
                if len({plain[1], boxed[1], par[1]}) != 1 or (not real and plain[1] != n):
                    raise RuntimeError(f"loops passed {plain[1]}, {boxed[1]} and {par[1]} (parallel) of {n} samples")
                load_job = os.getloadavg()
                job = run_job(checkout, Path(tmp) / f"out{w}-{r}", w, args.batch_size, max_problems, rtllm)
                if job["samples"] != n or job["passed"] != plain[1]:
                    raise RuntimeError(f"the job passed {job['passed']} of {job['samples']} samples; "
                                       f"the loops {plain[1]} of {n}")
                job.update(
                    repeat=r, waited_for_load_s=waited, loadavg_at_start=[round(x, 2) for x in load],
                    loadavg_at_job_start=[round(x, 2) for x in load_job], loadavg_at_end=[
                        round(x, 2) for x in os.getloadavg()],
                    plain_samples_per_s=round(n / plain[0], 3), sandboxed_samples_per_s=round(n / boxed[0], 3),
                    samples_per_s=round(n / job["check_step_s"], 3), plain_passed=plain[1],
                    plain_ms_per_sample=round(1000 * plain[0] / n, 2),
                    sandboxed_ms_per_sample=round(1000 * boxed[0] / n, 2),
                    job_ms_per_sample_per_worker=round(1000 * job["check_step_s"] * w / n, 2))
                job["samples_per_s_per_worker"] = round(job["samples_per_s"] / w, 3)
                job["ratio_per_core_vs_plain"] = round(job["samples_per_s_per_worker"] / job["plain_samples_per_s"], 3)
                job["parallel_plain_samples_per_s"] = round(n / par[0], 3)
                job["parallel_plain_scaling_per_core"] = round(n / par[0] / w / job["plain_samples_per_s"], 3)
                job["ratio_per_core_vs_parallel_plain"] = round(
                    job["samples_per_s"] / job["parallel_plain_samples_per_s"], 3)
                job["ratio_per_core_vs_sandboxed_loop"] = round(
                    job["samples_per_s_per_worker"] / job["sandboxed_samples_per_s"], 3)
                job["sandboxed_loop_ratio_vs_plain"] = round(job["sandboxed_samples_per_s"]
                                                             / job["plain_samples_per_s"], 3)
                if 0 < args.marginal < 1:
                    m = max(1, round((n if not real else n / max(1, len(job["by_benchmark"]))) * args.marginal))
                    small = run_job(checkout, Path(tmp) / f"out{w}-{r}-small", w, args.batch_size, m, rtllm)
                    per_sample = (job["check_step_s"] - small["check_step_s"]) / max(1, n - small["samples"])
                    if per_sample > 0:
                        job.update(
                            small_problems=small["samples"], small_check_step_s=small["check_step_s"],
                            stage_startup_s=round(job["check_step_s"] - n * per_sample, 2),
                            marginal_samples_per_s=round(1 / per_sample, 3),
                            marginal_ratio_per_core_vs_plain=round(1 / per_sample / w / job["plain_samples_per_s"], 3))
                        print(f"    marginal: {small['samples']} problems in {small['check_step_s']:.2f} s → "
                              f"start-up {job['stage_startup_s']:.2f} s, {job['marginal_samples_per_s']:.2f} "
                              f"samples/s (ratio per core {job['marginal_ratio_per_core_vs_plain']:.2f} vs plain)",
                              flush=True)
                runs.append(job)
                print(f"[{r}] load {job['loadavg_at_start'][0]:.2f}: plain loop {job['plain_ms_per_sample']:.1f} "
                      f"ms/sample ({job['plain_samples_per_s']:.2f}/s), sandboxed loop "
                      f"{job['sandboxed_ms_per_sample']:.1f} ms/sample ({job['sandboxed_samples_per_s']:.2f}/s); "
                      f"job with {w} worker(s): check step {job['check_step_s']:.2f} s → {job['samples_per_s']:.2f} "
                      f"samples/s ({job['job_ms_per_sample_per_worker']:.1f} ms/sample per worker; ratio per core "
                      f"{job['ratio_per_core_vs_plain']:.2f} vs plain, "
                      f"{job['ratio_per_core_vs_parallel_plain']:.2f} vs {w} plain loop(s) at once, which get "
                      f"{job['parallel_plain_scaling_per_core']:.2f}x per core; "
                      f"{job['ratio_per_core_vs_sandboxed_loop']:.2f} vs sandboxed loop); "
                      f"whole job {job['job_wall_s']:.1f} s (ray start {job['ray_start_s']:.1f} s); "
                      f"{job['passed']}/{job['samples']} passed", flush=True)
                if job["cpu_s_by_kind"]:
                    print("    CPU-seconds while the job ran: " + ", ".join(
                        f"{k} {v:.1f}" for k, v in job["cpu_s_by_kind"].items()), flush=True)
    best = {str(w): min((j for j in runs if j["workers"] == w), key=lambda j: j["check_step_s"])
            for w in args.workers}
    result = {
        "command": " ".join(["python", "bench/evaluate.py", *sys.argv[1:]]),
        "mode": "real checkouts (--reference self-check)" if real else "generated problems",
        "checkouts": {"verilog_eval_v2": args.verilog_eval, "rtllm": args.rtllm} if real else None,
        "problems": n, "cpus": os.cpu_count(), "batch_size": args.batch_size or "the job's default",
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(), "best_by_workers": best,
        "wall_vs_workers": {w: j["check_step_s"] for w, j in best.items()},
        "job_wall_vs_workers": {w: j["job_wall_s"] for w, j in best.items()},
        "runs": runs,
        "note": "samples/s of the job = samples / its 'generate + check' step (Ray Data tasks, each sample compiled "
                "and simulated in one bubblewrap sandbox, fixed start-up of the step included); plain loop = "
                "iverilog + vvp in one process without sandbox; ratio per core = job samples/s per worker / loop "
                "samples/s measured just before that job run. Parallel plain loop = the same loop in W processes "
                "at once (one sample at a time each): parallel_plain_scaling_per_core is its samples/s per process "
                "over the one-process loop's (what this machine gives per core with W cores busy), and "
                "ratio_per_core_vs_parallel_plain = job samples/s / parallel plain loop samples/s at the same W. "
                "With --marginal: stage_startup_s and marginal_samples_per_s from the step times at N and F*N "
                "problems (t = start-up + n / rate). "
                "*_ms_per_sample: the loops' cost per sample, and the job's step time x workers / samples.",
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {out_path}")


if __name__ == "__main__":
    main()
