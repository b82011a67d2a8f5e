"""Corpus job benchmark: whole-job CPU against the raw parser, and what grows with the number of repositories.

Two kinds of input, each run through the corpus job in a fresh child process on a local Ray:

- ``--real MANIFEST``: real repositories as local one-commit git remotes (e.g. the users' eight
  under /tmp/remotes, made from the ``fetch`` tool's mirrors). The clone cache starts empty, so
  cloning (shallow, blob-less, sparse) is measured too. The raw parse is a plain single-process
  loop of ``VerilogParser.parse`` over the same files (from the job's checkouts), ``include``s
  resolved as the stage resolves them.
- ``--sizes N ...``: generated corpora of N small repositories (``--files`` Verilog files each,
  modules written by the generator below). They are plain directories (the job snapshots them,
  no git), so that 10k or 100k repositories can be made and run on one small machine; ``--git``
  makes them git repositories instead (slow to generate: three git commands per repository).

Per run it reports wall time; CPU of the whole process tree (driver, raylet, GCS, workers, git:
sampled with psutil every 0.25 s) during Ray's start-up (with Ray Data's detached per-cluster
actors, which a long-running cluster starts once) and during the job after it, the local
remotes' git server side (upload-pack, pack-objects: GitHub's CPU in real use) apart; CPU per MB
read; the report's CPU seconds per stage (measured inside each stage's process); the driver's
peak RSS (VmHWM) and growth during the job; the largest Ray worker RSS seen. It then prints
what grows with N and why. Targets: whole-job CPU after Ray start-up ≤ 3x the raw parse's CPU
on the real repositories; driver memory flat from 1k to 100k repositories.
Writes ``bench/results/corpus.json``.

    python bench/corpus.py --real /tmp/remotes/manifest.yaml --sizes 1000 10000 [--files 2] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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


def make_repo(path: Path, rng: random.Random, n_files: int, git: bool = False) -> None:
    """One small repository: a licence (or none), a shared header, ``n_files`` files of 1-3 modules, a top."""
    (path / "rtl").mkdir(parents=True)
    lic = rng.choice(LICENSES)
    if lic:
        (path / "LICENSE").write_text(lic)
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
    if git:
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
            subprocess.run([*GIT, *args], cwd=path, check=True, capture_output=True)


def make_corpus(base: Path, n_repos: int, n_files: int, seed: int = 0, git: bool = False) -> Path:
    """N repositories under ``base/repos`` (1000 per directory) and their manifest."""
    rng = random.Random(seed)
    lines = ["repositories:"]
    for i in range(n_repos):
        repo = base / "repos" / f"g{i // 1000:03d}" / f"r{i:06d}"
        make_repo(repo, rng, n_files, git)
        lines.append(f"  - {{name: r{i:06d}, url: {repo}}}")
    manifest = base / "manifest.yaml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


# --- measurements ---------------------------------------------------------------------------

def verilog_files(roots: list[Path], max_file_bytes: int) -> list[tuple[str, str, str]]:
    """(repository, path, text) of every Verilog file under each root (as the job selects them)."""
    from corpus.files import DEFAULT_EXTENSIONS, decode, is_binary

    out = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in DEFAULT_EXTENSIONS and p.is_file() and ".git" not in p.parts:
                data = p.read_bytes()
                if len(data) <= max_file_bytes and not is_binary(data):
                    out.append((str(root), p.relative_to(root).as_posix(), decode(data)[0]))
    return out


def raw_parse(files: list[tuple[str, str, str]], repeat: int = 1) -> dict:
    """A plain single-process loop of ``VerilogParser.parse`` (includes resolved per repository): CPU seconds, best of repeat."""
    from corpus.verilog import VerilogParser, include_basenames, include_resolver

    headers: dict[str, dict[str, str]] = {}
    for repo, path, text in files:
        if "`define" in text:
            headers.setdefault(repo, {})[path] = text
    bases = {repo: include_basenames(h) for repo, h in headers.items()}
    n_bytes = sum(len(t.encode()) for _, _, t in files)
    parser = VerilogParser("systemverilog")
    best, units = float("inf"), 0
    for _ in range(repeat):
        c0 = time.process_time()
        units = 0
        for repo, path, text in files:
            units += len(parser.parse(text, path, resolve=include_resolver(headers.get(repo, {}), bases.get(repo, {}), path)))
        best = min(best, time.process_time() - c0)
    return {"files": len(files), "bytes": n_bytes, "units": units, "cpu_s": round(best, 3),
            "mb_per_s": round(n_bytes / 1e6 / best, 3) if best else None}


# The server side of a fetch from a local file:// remote (git-upload-pack and the pack-objects it
# runs) is a descendant of the job's git client here; with GitHub it runs on GitHub. It is
# measured and reported apart (remote_git_cpu_s), not counted as the job's CPU.
REMOTE_GIT = ("upload-pack", "pack-objects")
REMOTE = "git remote side (upload-pack, pack-objects)"


class TreeSampler(threading.Thread):
    """Samples this process and its descendants (the local Ray) with psutil: CPU per process
    (last value seen, so processes that exit keep their CPU up to the last sample) and the
    largest RSS of any Ray worker."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.cpu: dict[tuple[int, float], float] = {}
        self.names: dict[tuple[int, float], str] = {}
        self.worker_peak_rss = 0
        self.stop = threading.Event()

    def sample(self) -> None:
        import psutil

        for q in [self.me, *self.me.children(recursive=True)]:
            try:
                with q.oneshot():
                    t = q.cpu_times()
                    key = (q.pid, q.create_time())
                    self.cpu[key] = t.user + t.system  # children are sampled themselves (no double count)
                    cmd = q.cmdline()
                    name = q.name()
                    if not name.startswith("ray::"):
                        name = os.path.basename(cmd[0]) if cmd else name
                        if any(w in c for c in cmd for w in REMOTE_GIT):
                            name = REMOTE  # the local remote's side of a fetch: GitHub's CPU in real use
                        elif name in ("git", "sh") and len(cmd) > 1:
                            name += " " + next((c for c in cmd[1:] if c and not c.startswith("-") and "=" not in c),
                                               "")[:24]
                    if name != "ray::IDLE" or key not in self.names:  # a worker is named by its work
                        self.names[key] = name
                    if q.pid != self.me.pid and q.name().startswith("ray::"):
                        self.worker_peak_rss = max(self.worker_peak_rss, q.memory_info().rss)
            except psutil.Error:
                pass

    def total(self) -> float:
        """CPU seconds of the process tree so far, without the local git remotes' server side."""
        self.sample()
        return sum(v for k, v in self.cpu.items() if self.names.get(k) != REMOTE)

    def remote(self) -> float:
        return sum(v for k, v in self.cpu.items() if self.names.get(k) == REMOTE)

    def by_name(self, since: dict[tuple[int, float], float]) -> dict[str, float]:
        """CPU seconds per process name since the ``since`` snapshot of ``self.cpu`` (a Ray worker
        is named by the last task or actor it ran; ``ray::IDLE``: it ran none), with the number of
        processes that started after the snapshot (``+N new``)."""
        out: dict[str, float] = {}
        new: dict[str, int] = {}
        for key, cpu in self.cpu.items():
            name = self.names.get(key, "?")
            out[name] = round(out.get(name, 0.0) + cpu - since.get(key, 0.0), 2)
            new[name] = new.get(name, 0) + (key not in since)
        top = sorted(out.items(), key=lambda kv: -kv[1])[:14]
        return {(f"{n} (+{new[n]} new)" if new[n] else n): v for n, v in top}

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Identity:
    """An actor-pool stage (the job's kind), for the cluster warm-up."""

    def __call__(self, batch: Any) -> Any:
        return batch


def child(manifest: str, out: str, cpus: int, overrides: list[str]) -> None:
    """One corpus job in this (fresh) process; prints one JSON line of measurements."""
    sampler = TreeSampler()
    sampler.start()
    t0, cpu0 = time.perf_counter(), sampler.total()
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
    cfg = load_config(CorpusConfig, ["--manifest", manifest, "--output", out, f"cache_dir={out}-cache", *overrides],
                      prog="bench", default_config=ROOT / "jobs" / "configs" / "corpus_sample.yaml",
                      flags={"--manifest": "manifest", "--output": "output_dir"})
    # Ray Data's per-cluster actors (stats, autoscaling coordinator, actor locations) are detached
    # singletons: created by the first dataset a cluster runs and reused by every later job, so
    # their start-up belongs to the cluster's, as on a long-running cluster; their work during the
    # job (and every worker the job starts) is counted.
    from chipforge.stage import StageResources, map_stage

    map_stage(ray.data.range(2, override_num_blocks=1), _Identity, StageResources(concurrency=1)).materialize()
    time.sleep(1.0)  # let Ray's start-up settle so its CPU is not counted as the job's
    t1, cpu1, rss0 = time.perf_counter(), sampler.total(), _vm_hwm_mb()
    remote1 = sampler.remote()
    snapshot = dict(sampler.cpu)
    report = run(cfg, Run("corpus", out))
    t2, cpu2 = time.perf_counter(), sampler.total()
    sampler.stop.set()
    mb = report["files"]["bytes"] / 1e6
    print("BENCH_JSON " + json.dumps({
        "repositories_ok": report["repositories"]["ok"], "files": report["files"]["read"], "mb": round(mb, 3),
        "modules": report["modules"], "dedup": report["dedup"], "parse": report["parse"],
        "ray_start_wall_s": round(t1 - t0, 2), "ray_start_cpu_s": round(cpu1 - cpu0, 2),
        "wall_s": round(t2 - t1, 2), "job_cpu_s": round(cpu2 - cpu1, 2),
        "remote_git_cpu_s": round(sampler.remote() - remote1, 2),
        "job_cpu_s_per_mb": round((cpu2 - cpu1) / mb, 3) if mb else None,
        "stage_cpu_s": report["cpu_seconds"],
        "driver_peak_rss_mb": round(_vm_hwm_mb(), 1), "driver_rss_after_ray_init_mb": round(rss0, 1),
        "driver_peak_rss_delta_mb": round(_vm_hwm_mb() - rss0, 1),
        "worker_peak_rss_mb": round(sampler.worker_peak_rss / 2**20, 1),
        "job_cpu_s_by_process": sampler.by_name(snapshot),
    }), flush=True)
    ray.shutdown()


def run_job(manifest: Path, out: Path, cpus: int, overrides: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--cpus", str(cpus), "--child", str(manifest), str(out),
                           *[f"--set={o}" for o in overrides]], capture_output=True, text=True, cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"corpus job failed for {manifest}")
    return json.loads(line.split(" ", 1)[1])


def checkouts(cache: Path) -> list[Path]:
    """The job's checkouts in its clone cache (one per repository and commit)."""
    return sorted(p.parent for p in cache.glob("*/*/.complete"))


GROWTH = {
    "wall_s": "the work: files to clone, read, parse and sign grow with N; on 2 cores Ray's fixed costs dominate small N",
    "job_cpu_s": "linear in bytes (parse + signatures) plus per-repository costs: the clone call, its status "
                 "file and the snapshot hash; Ray Data's per-block task overheads grow with the number of clone "
                 "calls; on generated corpora the LSH buckets of templated near-copies grow too (dedup_buckets "
                 "verifies pairs within a bucket up to max_bucket, then a window); the driver's CPU is per "
                 "repository too: its manifest entry parsed (YAML) and validated, its status file folded",
    "job_cpu_s_per_mb": "flat when per-MB work dominates; falls as fixed costs are amortised",
    "driver_peak_rss_mb": "flat: the manifest is validated entry by entry into a memory-mapped Arrow IPC file; past "
                          "10,000 repositories its blocks are read into the object store by tasks on the driver's "
                          "node (below that the driver puts them: at most ~1.5 MB); module counts arrive as "
                          "per-block Arrow files added into one numpy row per repository (56 B); the status fold "
                          "lists 256 shard directories one at a time and holds 1,000 statuses at a time; the "
                          "duplicate graph is folded in a Ray task (dedup_cluster), not the driver. Ray Data's "
                          "executor adds a fixed ~15-30 MB at its first execution",
    "worker_peak_rss_mb": "a parse actor's output block is one input block's modules (at most MAX_BLOCK_ROWS = "
                          "10,000 repositories); a bucket task reads one key partition (at least one partition "
                          "per 50,000 modules); the dedup_cluster task holds the duplicate graph (~300 B per "
                          "clustered module)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000], help="numbers of generated repositories")
    ap.add_argument("--files", type=int, default=2, help="Verilog files per generated repository")
    ap.add_argument("--git", action="store_true", help="generated repositories are git repositories (slow)")
    ap.add_argument("--real", default=None, help="manifest of real repositories (local git remotes)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the real repositories (best job CPU)")
    ap.add_argument("--scale-repeat", type=int, default=1, help="runs per generated size (best job CPU)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="job config override key=value")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "corpus.json"))
    ap.add_argument("--child", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, cpus=args.cpus, overrides=args.overrides)
        return 0
    from chipforge.config import load_config
    from pipelines.corpus import CorpusConfig

    overrides = ["clone.concurrency=1", "clone.num_cpus=0.25", f"parse.concurrency={args.cpus}",
                 f"parse.num_cpus={0.75 if args.cpus > 1 else 0.5}", *args.overrides]
    max_file_bytes = load_config(CorpusConfig, overrides, prog="bench",
                                 default_config=ROOT / "jobs" / "configs" / "corpus_sample.yaml").max_file_bytes
    results: dict = {"cpus": args.cpus, "overrides": overrides, "real": None, "scale": []}
    with tempfile.TemporaryDirectory(prefix="cfbench") as tmp:
        if args.real:
            runs = [run_job(Path(args.real), Path(tmp) / f"real{k}", args.cpus, overrides) for k in range(args.repeat)]
            job = min(runs, key=lambda r: r["job_cpu_s"])
            raw = raw_parse(verilog_files(checkouts(Path(tmp) / "real0-cache"), max_file_bytes), repeat=2)
            ratio = round(job["job_cpu_s"] / raw["cpu_s"], 2)
            results["real"] = {"manifest": args.real, "raw_parse": raw, "job": job, "runs_job_cpu_s":
                               [r["job_cpu_s"] for r in runs], "job_cpu_over_raw_parse": ratio,
                               "stage_cpu_over_raw_parse": round(job["stage_cpu_s"]["total"] / raw["cpu_s"], 2)}
            print(f"real: {job['repositories_ok']} repos, {job['files']} files, {job['mb']} MB, {job['modules']} "
                  f"modules; Ray start {job['ray_start_wall_s']} s wall / {job['ray_start_cpu_s']} s CPU; job "
                  f"{job['wall_s']} s wall, {job['job_cpu_s']} s CPU (all processes; not counted: the local remotes' "
                  f"git server side, {job['remote_git_cpu_s']} s) = {ratio}x raw parse "
                  f"{raw['cpu_s']} s (target ≤ 3x); stages {job['stage_cpu_s']}", flush=True)
        for n in args.sizes:
            base = Path(tmp) / f"n{n}"
            t0 = time.perf_counter()
            manifest = make_corpus(base, n, args.files, git=args.git)
            gen_s = time.perf_counter() - t0
            runs = [run_job(manifest, base / f"out{k}", args.cpus, overrides) for k in range(args.scale_repeat)]
            job = min(runs, key=lambda r: r["job_cpu_s"])
            job["driver_peak_rss_mb"] = max(r["driver_peak_rss_mb"] for r in runs)
            raw = raw_parse(verilog_files([base / "repos"], max_file_bytes)) if n <= 10_000 else None
            results["scale"].append({"repos": n, "generate_s": round(gen_s, 1), "raw_parse": raw, "job": job})
            vs_raw = f", {round(job['job_cpu_s'] / raw['cpu_s'], 2)}x raw parse" if raw else ""
            print(f"N={n}: {job['files']} files {job['mb']} MB, {job['modules']} modules; wall {job['wall_s']} s; "
                  f"job CPU {job['job_cpu_s']} s ({job['job_cpu_s_per_mb']} s/MB{vs_raw}); "
                  f"driver peak RSS {job['driver_peak_rss_mb']} MB (+{job['driver_peak_rss_delta_mb']} during the "
                  f"job); worker peak RSS {job['worker_peak_rss_mb']} MB; stages {job['stage_cpu_s']}", flush=True)
            shutil_rmtree(base)
    if len(results["scale"]) >= 2:
        first, last = results["scale"][0], results["scale"][-1]
        k = last["repos"] / first["repos"]
        growth = {}
        print(f"what grows from N={first['repos']} to N={last['repos']} (x{k:g}):")
        for metric, why in GROWTH.items():
            a, b = first["job"][metric], last["job"][metric]
            growth[metric] = {"from": a, "to": b, "x": round(b / a, 2) if a else None, "why": why}
            print(f"  {metric}: {a} → {b} (x{growth[metric]['x']}): {why}")
        results["growth"] = growth
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(args.out).with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=2))
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")
    return 0


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
