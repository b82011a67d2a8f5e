"""Corpus job benchmark: parse MB/s per core against a plain parser loop, and driver memory vs N.

Generates N synthetic git repositories of Verilog/SystemVerilog (varied modules written by the
generator below: counters, shift registers, FIFOs, FSMs, ALUs, register files, generate blocks,
`ifdef`s, comments, a shared header per repository), then for each N runs the corpus job
in-process on a local Ray in a fresh child process and reports:
  - parse-stage MB/s per core: bytes / CPU seconds inside the parse actors (report.json ``parse``;
    CPU time, like the plain loop, so that Ray's own processes sharing the cores do not count
    against the stage; the wall-clock MB/s per worker is reported next to it),
  - the ratio to a plain single-process loop of ``VerilogParser.parse`` over the same files
    (target: at least 0.7),
  - the driver's peak memory: the process's peak RSS (VmHWM) and its growth during the job
    (tracemalloc cannot be used: it crashes with Ray's driver threads). Must not grow with N (the driver never holds module rows).
Writes ``bench/results/corpus.json``.

    python bench/corpus.py [--sizes 20 80] [--files 12] [--cpus 2] [--repeat 2]

Both sides are best of ``--repeat`` (the plain loop in-process, the job in fresh processes);
on a small shared VM single runs vary by ±20%. Driver memory is the worst of the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIT = ["git", "-c", "user.email=bench@example.invalid", "-c", "user.name=bench", "-c", "init.defaultBranch=main"]
LICENSES = ["MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n",
            "                                 Apache License\n                           Version 2.0, January 2004\n"
            "Apache License, Version 2.0\n", ""]


# --- generator ------------------------------------------------------------------------------

def _name(rng: random.Random, stem: str) -> str:
    return f"{stem}_{rng.choice(['a', 'b', 'x', 'core', 'blk', 'u'])}{rng.randrange(10000)}"


def counter(rng: random.Random, name: str) -> str:
    w = rng.choice([4, 8, 12, 16, 32])
    return f"""// {name}: {w}-bit counter with synchronous reset and enable.
module {name} #(parameter WIDTH = {w}) (
    input  wire             clk,
    input  wire             rst_n,
    input  wire             en,
    output reg  [WIDTH-1:0] count,
    output wire             wrap
);
    always @(posedge clk or negedge rst_n) begin
        if (!rst_n) count <= {{WIDTH{{1'b0}}}};
        else if (en) count <= count + {rng.choice(["1'b1", "2'd2", "1"])};
    end
    assign wrap = &count;
endmodule
"""


def shift(rng: random.Random, name: str) -> str:
    n = rng.randint(3, 12)
    stages = "\n".join(f"    reg [W-1:0] s{i};" for i in range(n))
    moves = "\n".join(f"        s{i} <= {'din' if i == 0 else f's{i - 1}'};" for i in range(n))
    return f"""/* {name}: {n}-stage delay line. */
module {name} #(parameter W = {rng.choice([1, 8, 16])}) (input clk, input [W-1:0] din, output [W-1:0] dout);
{stages}
    always @(posedge clk) begin
{moves}
    end
    assign dout = s{n - 1};
endmodule
"""


def fsm(rng: random.Random, name: str) -> str:
    k = rng.randint(3, 7)
    states = [f"S_{rng.choice(['IDLE', 'RUN', 'WAIT', 'DONE', 'LOAD', 'SEND', 'ACK'])}{i}" for i in range(k)]
    params = ",\n".join(f"        {s} = 3'd{i}" for i, s in enumerate(states))
    cases = "\n".join(f"            {s}: next = {'go' if i % 2 else 'stop'} ? {states[(i + 1) % k]} : {s};"
                      for i, s in enumerate(states))
    return f"""// {name}: {k}-state controller.
module {name} (input clk, input rst, input go, input stop, output busy);
    localparam [2:0]
{params};
    reg [2:0] state, next;
    always @(posedge clk) state <= rst ? {states[0]} : next;
    always @* begin
        next = state;
        case (state)
{cases}
            default: next = {states[0]};
        endcase
    end
    assign busy = state != {states[0]};
endmodule
"""


def alu(rng: random.Random, name: str) -> str:
    ops = rng.sample(["a + b", "a - b", "a & b", "a | b", "a ^ b", "~a", "a << 1", "b >> 1", "{a[3:0], b[3:0]}"], 6)
    cases = "\n".join(f"            3'd{i}: y = {op};" for i, op in enumerate(ops))
    return f"""// {name}: small ALU.
module {name} (input [7:0] a, input [7:0] b, input [2:0] op, output reg [7:0] y, output zero);
    always @* begin
        case (op)
{cases}
            default: y = 8'h00;
        endcase
    end
    assign zero = (y == 8'h00);
endmodule
"""


def regfile(rng: random.Random, name: str) -> str:
    d = rng.choice([8, 16, 32])
    return f"""// {name}: {d}-entry register file, one write and two read ports.
module {name} #(parameter W = 32, parameter D = {d}) (
    input clk, input we,
    input [$clog2(D)-1:0] wa, ra0, ra1,
    input [W-1:0] wd,
    output [W-1:0] rd0, rd1
);
    reg [W-1:0] mem [0:D-1];
`ifdef REGFILE_RESET
    integer i;
    initial for (i = 0; i < D; i = i + 1) mem[i] = {{W{{1'b0}}}};
`endif
    always @(posedge clk) if (we) mem[wa] <= wd;
    assign rd0 = mem[ra0];
    assign rd1 = mem[ra1];
endmodule
"""


def gen_block(rng: random.Random, name: str) -> str:
    n = rng.choice([2, 4, 8])
    return f"""// {name}: parity per lane (generate).
module {name} #(parameter LANES = {n}, parameter W = 8) (input [LANES*W-1:0] d, output [LANES-1:0] p);
    genvar g;
    generate
        for (g = 0; g < LANES; g = g + 1) begin : lane
            assign p[g] = ^d[g*W +: W];
        end
    endgenerate
endmodule
"""


def sv_fifo(rng: random.Random, name: str) -> str:
    depth = rng.choice([4, 8, 16])
    return f"""// {name}: synchronous FIFO (SystemVerilog).
module {name} #(parameter int W = 8, parameter int DEPTH = {depth}) (
    input  logic         clk, rst_n,
    input  logic         push, pop,
    input  logic [W-1:0] wdata,
    output logic [W-1:0] rdata,
    output logic         full, empty
);
    logic [W-1:0] mem [DEPTH];
    logic [$clog2(DEPTH):0] wp, rp;
    always_ff @(posedge clk or negedge rst_n) begin
        if (!rst_n) begin wp <= '0; rp <= '0; end
        else begin
            if (push && !full) begin mem[wp[$clog2(DEPTH)-1:0]] <= wdata; wp <= wp + 1; end
            if (pop && !empty) rp <= rp + 1;
        end
    end
    assign rdata = mem[rp[$clog2(DEPTH)-1:0]];
    assign empty = wp == rp;
    assign full = (wp[$clog2(DEPTH)] != rp[$clog2(DEPTH)]) && (wp[$clog2(DEPTH)-1:0] == rp[$clog2(DEPTH)-1:0]);
endmodule
"""


def top(rng: random.Random, name: str, children: list[str]) -> str:
    insts = "\n".join(f"    {c} u{i} (.clk(clk));" for i, c in enumerate(children))
    return f"""// {name}: top level.
module {name} (input clk);
{insts}
endmodule
"""


def _vary(rng: random.Random, unit: str) -> str:
    """A few random extra nets per unit, so modules of one template are not all near-duplicates."""
    sig = [f"n{rng.randrange(1000)}" for _ in range(rng.randint(2, 8))]
    ops = ["&", "|", "^", "+", "-"]
    extra = "".join(f"    wire [{rng.randint(1, 31)}:0] {s} = {rng.randint(0, 999)} {rng.choice(ops)} "
                    f"{rng.randint(0, 999)};\n" for s in sig)
    head, sep, tail = unit.rpartition("endmodule")
    return head + extra + sep + tail


KINDS = [counter, shift, fsm, alu, regfile, gen_block, sv_fifo]


def make_repo(path: Path, rng: random.Random, n_files: int) -> None:
    path.mkdir(parents=True)
    lic = rng.choice(LICENSES)
    if lic:
        (path / "LICENSE").write_text(lic)
    (path / "rtl").mkdir()
    (path / "rtl" / "defs.vh").write_text("`define DATA_W 32\n`define ADDR_W 12\n")
    names = []
    for f in range(n_files):
        units = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(KINDS)
            name = _name(rng, kind.__name__)
            names.append(name)
            units.append(_vary(rng, kind(rng, name)))
        ext = ".sv" if any("logic" in u for u in units) else ".v"
        (path / "rtl" / f"f{f}{ext}").write_text("`include \"defs.vh\"\n" + "\n".join(units))
    (path / "rtl" / "top.v").write_text(top(rng, _name(rng, "top"), rng.sample(names, min(4, len(names)))))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run([*GIT, *args], cwd=path, check=True, capture_output=True)


def make_corpus(base: Path, n_repos: int, n_files: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = ["repositories:"]
    for i in range(n_repos):
        repo = base / "repos" / f"r{i:04d}"
        make_repo(repo, rng, n_files)
        lines.append(f"  - {{name: r{i:04d}, url: {repo.as_uri()}}}")
    manifest = base / "manifest.yaml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


# --- measurements ---------------------------------------------------------------------------

def baseline(repos: Path, repeat: int = 2) -> dict:
    """Plain single-process loops of ``VerilogParser.parse`` over the same files (CPU seconds, best of repeat).

    ``mb_per_s``: the parser called as the stage calls it (``include``s resolved against the
    repository's files that hold ``define``s), the reference for the target ratio.
    ``bare_mb_per_s``: the parser alone, includes unresolved (less work than the stage does).
    """
    from corpus.verilog import VerilogParser, include_basenames, include_resolver

    files = [(p.relative_to(repos).parts[0], p.relative_to(repos).as_posix().split("/", 1)[1], p.read_text())
             for p in sorted(repos.rglob("*")) if p.suffix in (".v", ".sv", ".vh", ".svh")]
    headers: dict[str, dict[str, str]] = {}
    for repo, path, text in files:
        if "`define" in text:
            headers.setdefault(repo, {})[path] = text
    bases = {repo: include_basenames(h) for repo, h in headers.items()}
    n_bytes = sum(len(t.encode()) for _, _, t in files)
    parser = VerilogParser("systemverilog")

    def loop(resolved: bool) -> tuple[float, int]:
        best, units = float("inf"), 0
        for _ in range(repeat):
            t0 = time.process_time()
            units = 0
            for repo, path, text in files:
                resolve = include_resolver(headers.get(repo, {}), bases.get(repo, {}), path) if resolved else None
                units += len(parser.parse(text, path, resolve=resolve))
            best = min(best, time.process_time() - t0)
        return best, units

    cpu_s, units = loop(resolved=True)
    bare_s, _ = loop(resolved=False)
    return {"files": len(files), "bytes": n_bytes, "units": units, "cpu_s": round(cpu_s, 3),
            "mb_per_s": round(n_bytes / 1e6 / cpu_s, 3), "bare_mb_per_s": round(n_bytes / 1e6 / bare_s, 3)}


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(manifest: str, out: str, cpus: int) -> None:
    """One corpus job run in this (fresh) process; prints one JSON line of measurements."""
    import ray

    from chipforge.config import load_config
    from chipforge.job import Run
    from pipelines.corpus import CorpusConfig, run

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["CHIPFORGE_PROGRESS"] = "0"
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}})
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    cfg = load_config(CorpusConfig, ["--manifest", manifest, "--output", out, f"cache_dir={out}-cache",
                                     "clone.concurrency=1", "clone.num_cpus=0.25",
                                     f"parse.concurrency={cpus}", f"parse.num_cpus={0.75 if cpus > 1 else 0.5}"],
                      prog="bench", default_config=ROOT / "jobs" / "configs" / "corpus_sample.yaml",
                      flags={"--manifest": "manifest", "--output": "output_dir"})
    rss0 = _vm_hwm_mb()  # tracemalloc is not usable here: it segfaults with Ray's driver threads
    t0 = time.perf_counter()
    report = run(cfg, Run("corpus", out))
    wall = time.perf_counter() - t0
    print("BENCH_JSON " + json.dumps({
        "wall_s": round(wall, 2), "parse": report["parse"], "modules": report["modules"],
        "repositories_ok": report["repositories"]["ok"], "dedup": report["dedup"],
        "driver_peak_rss_mb": round(_vm_hwm_mb(), 1), "driver_rss_after_ray_init_mb": round(rss0, 1),
        "driver_peak_rss_delta_mb": round(_vm_hwm_mb() - rss0, 1),
    }), flush=True)
    ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 80], help="numbers of repositories")
    ap.add_argument("--files", type=int, default=12, help="Verilog files per repository")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--repeat", type=int, default=2, help="runs per size (best MB/s; worst driver memory)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "corpus.json"))
    ap.add_argument("--child", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, cpus=args.cpus)
        return 0

    results = []
    with tempfile.TemporaryDirectory(prefix="cfbench") as tmp:
        for n in args.sizes:
            base = Path(tmp) / f"n{n}"
            manifest = make_corpus(base, n, args.files)
            base_line = baseline(base / "repos", repeat=args.repeat)
            runs = []
            for k in range(args.repeat):  # best of --repeat fresh jobs, as the plain loop is best of --repeat
                proc = subprocess.run([sys.executable, __file__, "--cpus", str(args.cpus), "--child", str(manifest),
                                       str(base / f"out{k}")], capture_output=True, text=True, cwd=ROOT)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
                if proc.returncode != 0 or line is None:
                    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
                    raise SystemExit(f"corpus job failed for N={n}")
                runs.append(json.loads(line.split(" ", 1)[1]))
            job = max(runs, key=lambda r: r["parse"]["mb_per_s_per_core"] or 0)
            job["runs_mb_per_s_per_core"] = [r["parse"]["mb_per_s_per_core"] for r in runs]
            job["driver_peak_rss_mb"] = max(r["driver_peak_rss_mb"] for r in runs)
            job["driver_peak_rss_delta_mb"] = max(r["driver_peak_rss_delta_mb"] for r in runs)
            per_core = job["parse"]["mb_per_s_per_core"]
            res = {"repos": n, "baseline": base_line, "job": job,
                   "parse_mb_per_s_per_core": per_core,
                   "ratio_to_plain_loop": round(per_core / base_line["mb_per_s"], 3) if per_core else None,
                   "ratio_to_bare_parser": round(per_core / base_line["bare_mb_per_s"], 3) if per_core else None}
            results.append(res)
            print(f"N={n:4d} repos: {base_line['files']} files {base_line['bytes'] / 1e6:.2f} MB, "
                  f"{job['modules']} modules; parse {per_core} MB/s per core "
                  f"({job['parse']['mb_per_s_per_worker']} MB/s per worker, wall) vs plain loop "
                  f"{base_line['mb_per_s']} MB/s → ratio {res['ratio_to_plain_loop']} (target ≥ 0.7; "
                  f"bare parser {base_line['bare_mb_per_s']} MB/s → {res['ratio_to_bare_parser']}); "
                  f"driver peak RSS {job['driver_peak_rss_mb']} MB (+{job['driver_peak_rss_delta_mb']} MB "
                  f"during the job); wall {job['wall_s']} s", flush=True)
    first, last = results[0]["job"], results[-1]["job"]
    summary = {
        "sizes": args.sizes, "cpus": args.cpus, "files_per_repo": args.files, "repeat": args.repeat,
        "min_ratio_to_plain_loop": min(r["ratio_to_plain_loop"] or 0 for r in results),
        "driver_rss_delta_mb": [r["job"]["driver_peak_rss_delta_mb"] for r in results],
        "driver_rss_growth": round(last["driver_peak_rss_mb"] / first["driver_peak_rss_mb"], 3),
        "results": results,
    }
    print(f"ratio ≥ 0.7: {summary['min_ratio_to_plain_loop'] >= 0.7} (min {summary['min_ratio_to_plain_loop']}); "
          f"driver peak RSS N={args.sizes[-1]} / N={args.sizes[0]}: "
          f"x{summary['driver_rss_growth']} (growth during the job: {summary['driver_rss_delta_mb']} MB)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(args.out).with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(summary, indent=2))
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
