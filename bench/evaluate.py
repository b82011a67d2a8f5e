"""Evaluation job benchmark: simulated samples per second through the job against a plain loop.

Generates N small problems in the VerilogEval v2 layout (combinational and clocked designs of
several widths, a ``RefModule`` and a ``tb`` that counts mismatches, written by the generator
below), then:

- **plain loop**: one process, sequentially, for each sample: write the files to a temporary
  directory, ``iverilog`` (the job's command line), ``vvp -n``, check the pass line. No sandbox,
  no Ray: the floor of what one core can do;
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
ratio per core; 1.0 means no overhead over a bare loop) and by the sandboxed loop's (what is
left is Ray's share), and the job's wall time against W. The loops are measured right before
each job run. Writes ``bench/results/evaluate.json``.

``--marginal F`` also runs each job on the first F·N problems: from the two step times
t(n) = start-up + n / rate, the stage's fixed start-up (a fresh Ray's first Data stage: worker
imports, planning) and its marginal samples/s, i.e. what a run large enough to amortise the
start-up gets per worker; both are reported beside the whole-step figures, never instead.

    python bench/evaluate.py [--problems 48] [--workers 1 2] [--repeat 1] [--batch-size N]

On a shared machine, wall-clock figures vary with the other load; the load average at the start
and end, and at the start of each run, is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    """(seconds, passed): iverilog + vvp per sample, sequentially, in one process, no sandbox."""
    passed = 0
    t0 = time.perf_counter()
    for p in problems:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in {**p["files"], p["answer_file"]: p["reference"]}.items():
                Path(tmp, name).write_text(text)
            subprocess.run(p["compile_argv"], cwd=tmp, capture_output=True, timeout=60, check=True)
            out = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=tmp, capture_output=True, text=True, timeout=60).stdout
            passed += bool(re.search(p["pass_regex"], out))
    return time.perf_counter() - t0, passed


def sandboxed_loop(problems: list[dict]) -> tuple[float, int]:
    from evaluation.simulate import SimSettings, run_problem

    settings = SimSettings()
    t0 = time.perf_counter()
    passed = sum(run_problem(p, p["reference"], settings)["verdict"] == "pass" for p in problems)
    return time.perf_counter() - t0, passed


def auto_batch(n: int, workers: int) -> int:
    """Samples per check task: about four tasks per worker (load balance), at most 50 samples each."""
    return max(1, min(50, math.ceil(n / (4 * workers))))


def run_job(checkout: Path, out: Path, workers: int, batch_size: int, max_problems: int | None = None) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "jobs.evaluate", "--output", str(out), "--force", "--reference",
            "evaluate_models=false", "dataset_dir=null", "smoke=false", "routing.enabled=false",
            f"benchmarks.verilog_eval_v2={checkout}", f"simulation.resources.concurrency={workers}",
            f"simulation.resources.batch_size={batch_size}"]
    if max_problems:
        argv.append(f"benchmarks.max_problems={max_problems}")
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"job failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    rep = json.loads((out / "report.json").read_text())
    step = rep["steps"]["generate + check"]["wall_s"]
    cells = rep["benchmarks"]["verilog_eval_v2/spec-to-rtl"]["reference"]
    return {"workers": workers, "batch_size": batch_size, "samples": cells["samples"], "passed": cells["passed"],
            "check_step_s": step, "job_wall_s": round(wall, 2), "ray_start_s": rep["steps"]["ray start"]["wall_s"],
            "isolation": rep["sandbox"]["isolation"]["mode"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=48)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="samples per check task (simulation.resources.batch_size); default about N / (4 W)")
    ap.add_argument("--marginal", type=float, default=0.0, metavar="F",
                    help="also run each job on the first F*N problems (0 < F < 1) to separate the stage's fixed "
                         "start-up from its marginal samples/s")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "evaluate.json"))
    args = ap.parse_args()
    from evaluation.benchmarks import load_verilog_eval_v2

    load0 = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        checkout = write_checkout(Path(tmp) / "verilog-eval", args.problems)
        problems = load_verilog_eval_v2(str(checkout), ["spec-to-rtl"])
        n = len(problems)
        for r in range(args.repeat):
            for w in args.workers:
                # the loops run right before each job run: on a shared machine the load drifts
                load = os.getloadavg()
                plain, boxed = plain_loop(problems), sandboxed_loop(problems)
                if plain[1] != n or boxed[1] != n:
                    raise RuntimeError(f"loops passed {plain[1]} and {boxed[1]} of {n} samples")
                job = run_job(checkout, Path(tmp) / f"out{w}-{r}", w, args.batch_size or auto_batch(n, w))
                if job["passed"] != n:
                    raise RuntimeError(f"the job passed {job['passed']} of {n} samples")
                job.update(
                    repeat=r, loadavg_at_start=[round(x, 2) for x in load], plain_samples_per_s=round(n / plain[0], 3),
                    sandboxed_samples_per_s=round(n / boxed[0], 3), samples_per_s=round(n / job["check_step_s"], 3))
                job["samples_per_s_per_worker"] = round(job["samples_per_s"] / w, 3)
                job["ratio_per_core_vs_plain"] = round(job["samples_per_s_per_worker"] / job["plain_samples_per_s"], 3)
                job["ratio_per_core_vs_sandboxed_loop"] = round(
                    job["samples_per_s_per_worker"] / job["sandboxed_samples_per_s"], 3)
                if 0 < args.marginal < 1:
                    m = max(1, round(n * args.marginal))
                    small = run_job(checkout, Path(tmp) / f"out{w}-{r}-small", w,
                                    args.batch_size or auto_batch(m, w), max_problems=m)
                    per_sample = (job["check_step_s"] - small["check_step_s"]) / (n - m)
                    if per_sample > 0:
                        job.update(
                            small_problems=m, small_check_step_s=small["check_step_s"],
                            stage_startup_s=round(job["check_step_s"] - n * per_sample, 2),
                            marginal_samples_per_s=round(1 / per_sample, 3),
                            marginal_ratio_per_core_vs_plain=round(1 / per_sample / w / job["plain_samples_per_s"], 3))
                        print(f"    marginal: {m} problems in {small['check_step_s']:.2f} s → start-up "
                              f"{job['stage_startup_s']:.2f} s, {job['marginal_samples_per_s']:.2f} samples/s "
                              f"(ratio per core {job['marginal_ratio_per_core_vs_plain']:.2f} vs plain)", flush=True)
                runs.append(job)
                print(f"[{r}] plain loop {job['plain_samples_per_s']:.2f}/s, sandboxed loop "
                      f"{job['sandboxed_samples_per_s']:.2f}/s; job with {w} worker(s): check step "
                      f"{job['check_step_s']:.2f} s → {job['samples_per_s']:.2f} samples/s "
                      f"({job['samples_per_s_per_worker']:.2f} per worker; ratio per core "
                      f"{job['ratio_per_core_vs_plain']:.2f} vs plain, "
                      f"{job['ratio_per_core_vs_sandboxed_loop']:.2f} vs sandboxed loop); "
                      f"whole job {job['job_wall_s']:.1f} s (ray start {job['ray_start_s']:.1f} s); "
                      f"{job['passed']}/{job['samples']} passed", flush=True)
    best = {str(w): min((j for j in runs if j["workers"] == w), key=lambda j: j["check_step_s"])
            for w in args.workers}
    result = {
        "command": " ".join(["python", "bench/evaluate.py", *sys.argv[1:]]),
        "problems": n, "cpus": os.cpu_count(), "batch_size": args.batch_size or "auto", "loadavg_start": load0,
        "loadavg_end": os.getloadavg(), "best_by_workers": best,
        "wall_vs_workers": {w: j["check_step_s"] for w, j in best.items()},
        "runs": runs,
        "note": "samples/s of the job = samples / its 'generate + check' step (Ray Data tasks, each sample compiled "
                "and simulated in one bubblewrap sandbox, fixed start-up of the step included); plain loop = "
                "iverilog + vvp in one process without sandbox; ratio per core = job samples/s per worker / loop "
                "samples/s measured just before that job run. With --marginal: stage_startup_s and "
                "marginal_samples_per_s from the step times at N and F*N problems (t = start-up + n / rate).",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
