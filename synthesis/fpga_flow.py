"""Grounded FPGA flow: Yosys ``synth_ice40`` + ``nextpnr-ice40`` on a design, reports parsed into facts.

Why: placement, routing and timing examples written by a model cannot be checked without a
real flow (issue 13: those templates asked for Tcl about a toy design with no library or
constraints in context). An iCE40 flow is installable from Debian (``apt-get install -y
yosys nextpnr-ice40``) and its reports (utilisation, placement wirelength, routed arcs,
Fmax per clock, critical paths) are facts. Examples built here put the tool's own report or
log in the prompt and derive the answer from the parsed numbers by template, so every
number in an answer is the report's (correct by construction, no model involved).

Both tools run through ``sandbox.run`` (the same isolation as model-written code). Results
are cached per design + options + tool versions: in process, and on disk when a cache
directory is given.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synthesis import sandbox

NEXTPNR = "nextpnr-ice40"
FLOW_NAME = "yosys-synth_ice40+nextpnr-ice40"
KIND_VERSION = 1
DESIGN_DIR = Path(__file__).resolve().parent / "assets" / "design"
INSTALL_HINT = "nextpnr-ice40 is not installed: `apt-get install -y nextpnr-ice40`"


# --------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class FlowCase:
    """One run of the flow: sources, top, device and options (the cache key is all of them).

    ``fault`` labels a deliberately broken case (``syntax_error``, ``unconstrained_io``,
    ``bad_pin``, ``timing_fail``, ``too_big``, ``io_overflow``): the run is expected to fail
    and its log seeds a diagnosis example.
    """

    name: str
    files: tuple[tuple[str, str], ...]  # (file name, Verilog source)
    top: str
    device: str = "hx1k"
    package: str = "tq144"
    freq_mhz: float = 48.0
    pcf: str | None = None
    allow_unconstrained: bool = True
    timing_allow_fail: bool = True
    params: tuple[tuple[str, int], ...] = ()  # top-level parameter overrides (yosys chparam)
    seed: int = 1
    fault: str | None = None

    def key(self, versions: dict[str, str]) -> str:
        blob = json.dumps({"case": asdict(self), "tools": versions}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def yosys_script(self) -> str:
        names = " ".join(name for name, _ in self.files)
        chparam = "".join(f"chparam -set {k} {v} {self.top}\n" for k, v in self.params)
        return f"read_verilog {names}\n{chparam}synth_ice40 -top {self.top} -json netlist.json\n"

    def nextpnr_argv(self) -> list[str]:
        argv = [NEXTPNR, f"--{self.device}", "--package", self.package, "--json", "netlist.json",
                "--freq", f"{self.freq_mhz:g}", "--seed", str(self.seed), "--threads", "1", "--report", "report.json"]
        if self.pcf is not None:
            argv += ["--pcf", "design.pcf"]
        if self.allow_unconstrained:
            argv.append("--pcf-allow-unconstrained")
        if self.timing_allow_fail:
            argv.append("--timing-allow-fail")
        return argv

    def command_line(self) -> str:
        """The nextpnr command as a user would type it (shown in prompts)."""
        return " ".join(self.nextpnr_argv())


def shipped_files() -> tuple[tuple[str, str], ...]:
    return tuple((p.name, p.read_text()) for p in sorted(DESIGN_DIR.glob("*.v")))


MULTIPLIER = """// A registered 16x16 multiplier: more logic than the smallest iCE40 holds.
module cf_mul16(input clk, input [15:0] a, input [15:0] b, output reg [31:0] p);
  always @(posedge clk) p <= a * b;
endmodule
"""


def default_cases() -> list[FlowCase]:
    """Cases on the shipped design (and its counter/ALU at other widths): passing runs on several
    devices and clock targets, then the deliberately broken runs for log diagnosis."""
    files = shipped_files()
    ok = [
        FlowCase("cf_top-hx1k-48", files, "cf_top", "hx1k", "tq144", 48.0),
        FlowCase("cf_top-hx1k-150", files, "cf_top", "hx1k", "tq144", 150.0),
        FlowCase("cf_top-up5k-48", files, "cf_top", "up5k", "sg48", 48.0),
        FlowCase("cf_top-up5k-24", files, "cf_top", "up5k", "sg48", 24.0),
        FlowCase("cf_top-hx8k-100", files, "cf_top", "hx8k", "ct256", 100.0),
        FlowCase("cf_counter16-hx1k-100", files, "cf_counter", "hx1k", "tq144", 100.0, params=(("WIDTH", 16),)),
        FlowCase("cf_counter32-hx8k-200", files, "cf_counter", "hx8k", "ct256", 200.0, params=(("WIDTH", 32),)),
        FlowCase("cf_counter8-lp1k-12", files, "cf_counter", "lp1k", "cb121", 12.0, params=(("WIDTH", 8),)),
    ]
    top_v = dict(files)["cf_top.v"]
    broken_top = tuple((n, s.replace("wire [7:0] count;", "wire [7:0] count", 1) if n == "cf_top.v" else s)
                       for n, s in files)
    partial_pcf = "set_io clk 21\nset_io rst_n 22\n"
    faults = [
        FlowCase("fault-syntax_error", broken_top, "cf_top", fault="syntax_error"),
        FlowCase("fault-unconstrained_io", files, "cf_top", pcf=partial_pcf, allow_unconstrained=False,
                 fault="unconstrained_io"),
        FlowCase("fault-bad_pin", files, "cf_top", pcf="set_io clk 21\nset_io rst_n Z99\n", fault="bad_pin"),
        FlowCase("fault-timing_fail", files, "cf_top", freq_mhz=400.0, timing_allow_fail=False, fault="timing_fail"),
        FlowCase("fault-too_big", (("cf_mul16.v", MULTIPLIER),), "cf_mul16", "lp384", "qn32", fault="too_big"),
        FlowCase("fault-io_overflow", files, "cf_top", "lp384", "qn32", fault="io_overflow"),
    ]
    if "wire [7:0] count;" not in top_v:
        raise RuntimeError("the shipped cf_top.v changed: update fpga_flow's syntax_error fault")
    return ok + faults


# --------------------------------------------------------------------------- running

def available() -> str | None:
    """None when the flow can run here, else why not (with the install command)."""
    missing = [t for t in ("yosys", NEXTPNR) if shutil.which(t, path=sandbox.SAFE_PATH) is None]
    if missing:
        return f"{', '.join(missing)} not installed: `apt-get install -y {' '.join(missing)}`"
    return None


_VERSIONS: dict[str, str] = {}


def tool_versions() -> dict[str, str]:
    """Versions of yosys and nextpnr-ice40 (``0.23 (git sha1 ...)``, ``0.4-1+b1``), from the host tools
    with fixed arguments; ``missing`` when absent."""
    if not _VERSIONS:
        for name, argv in (("yosys", ["yosys", "-V"]), (NEXTPNR, [NEXTPNR, "--version"])):
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
                text = (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else "?"
                m = re.search(r"\(Version ([^)]+)\)", text) or re.match(r"Yosys (.+)", text)
                _VERSIONS[name] = m[1] if m else text
            except (OSError, subprocess.SubprocessError):
                _VERSIONS[name] = "missing"
    return dict(_VERSIONS)


_MEMO: dict[str, dict[str, Any]] = {}


def run_flow(case: FlowCase, cache_dir: str | None = None, timeout_s: float = 120.0,
             memory_mb: int = 2048) -> dict[str, Any]:
    """Synthesise, place and route ``case``; the parsed report (see ``parse_nextpnr``) plus logs.

    ``stage_failed`` is None, ``"synthesis"`` or ``"pnr"``. Cached per case + tool versions.
    """
    versions = tool_versions()
    key = case.key(versions)
    if key in _MEMO:
        return _MEMO[key]
    path = os.path.join(cache_dir, f"{key}.json") if cache_dir else None
    if path and os.path.exists(path):
        with open(path) as f:
            _MEMO[key] = json.load(f)
        return _MEMO[key]
    limits = sandbox.Limits(timeout_s=timeout_s, memory_mb=memory_mb, max_output_bytes=64 * sandbox.MIB,
                            max_file_bytes=64 * sandbox.MIB)
    files = dict(case.files) | {"flow.ys": case.yosys_script()}
    syn = sandbox.run(["yosys", "-q", "-s", "flow.ys"], files, limits=limits, collect=["netlist.json"])
    out: dict[str, Any] = {"case": case.name, "top": case.top, "device": case.device, "package": case.package,
                           "freq_mhz": case.freq_mhz, "fault": case.fault, "tools": versions, "key": key,
                           "command": case.command_line(), "pcf": case.pcf, "params": dict(case.params)}
    netlist = syn.files.get("netlist.json")
    out["yosys_log"] = syn.output[-6000:]
    out["synthesis"] = {"ok": syn.ok and netlist is not None, "errors": error_lines(syn.output),
                        "cells": netlist_cells(netlist) if netlist else {}}
    if not out["synthesis"]["ok"]:
        out.update(stage_failed="synthesis", ok=False, nextpnr_log="")
        return _store(key, path, out)
    pnr_files: dict[str, str | bytes] = {"netlist.json": netlist}
    if case.pcf is not None:
        pnr_files["design.pcf"] = case.pcf
    pnr = sandbox.run(case.nextpnr_argv(), pnr_files, limits=limits, collect=["report.json"])
    out.update(parse_nextpnr(pnr.output))
    report = pnr.files.get("report.json")
    if report:
        out["json_report"] = summarise_json_report(json.loads(report))
    out["nextpnr_log"] = pnr.output
    out["ok"] = pnr.ok and not out["errors"]
    out["stage_failed"] = None if out["ok"] else "pnr"
    return _store(key, path, out)


def _store(key: str, path: str | None, out: dict[str, Any]) -> dict[str, Any]:
    _MEMO[key] = out
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, path)
    return out


# --------------------------------------------------------------------------- parsing

_UTIL = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%")
_FMAX = re.compile(r"^(Info|Warning|ERROR): Max frequency for clock '([^']+)': ([\d.]+) MHz "
                   r"\((PASS|FAIL) at ([\d.]+) MHz\)")
_DELAY = re.compile(r"^Info: Max delay (.+?)\s+->\s+(.+?)\s*: ([\d.]+) ns")
_CP_HEAD = re.compile(r"^Info: Critical path report for "
                      r"(?:clock '([^']+)' \(([^)]+)\)|cross-domain path '([^']+)' -> '([^']+)'):")
_CP_STEP = re.compile(r"^Info:\s+([\d.]+)\s+([\d.]+)\s+(Source|Net|Setup)\s+(\S+)")
_CP_SINK = re.compile(r"^Info:\s+Sink\s+(\S+)")
_CP_SUM = re.compile(r"^Info: ([\d.]+) ns logic, ([\d.]+) ns routing")
_SA = re.compile(r"^Info:\s+at iteration #(\d+): temp = [\d.]+, timing cost = (\d+), wirelen = (\d+)")
_RANDOM_WL = re.compile(r"^Info: Creating initial analytic placement for (\d+) cells, random placement wirelen = (\d+)")
_ARCS = re.compile(r"^Info: Routing (\d+) arcs")
_GLOBAL = re.compile(r"^Info: promoting (\S+)(?: \[(\w+)\])? \(fanout (\d+)\)")


def error_lines(log: str) -> list[str]:
    return [ln.strip() for ln in log.splitlines() if "ERROR" in ln][:10]


def netlist_cells(netlist: bytes | str) -> dict[str, int]:
    """Cell counts by type of the top module(s) of a Yosys JSON netlist (after ``synth_ice40``)."""
    data = json.loads(netlist)
    counts: Counter = Counter()
    for mod in data.get("modules", {}).values():
        if str(mod.get("attributes", {}).get("top", "0")).strip("0") == "":
            continue
        counts.update(cell.get("type", "?") for cell in mod.get("cells", {}).values())
    return dict(sorted(counts.items()))


def parse_nextpnr(log: str) -> dict[str, Any]:
    """The facts in a nextpnr-ice40 log.

    Returns ``utilisation`` ({resource: used, available, percent}), ``fmax`` ({clock: achieved_mhz,
    target_mhz, pass} from the last, post-route report), ``fmax_placement`` (the estimate after
    placement), ``max_delay`` ([{from, to, ns}]), ``critical_paths`` ([{clock or from/to, total_ns,
    logic_ns, routing_ns, start, end, nets: [{net, delay_ns}]}]), ``placement`` ({cells,
    random_wirelength, wirelength (final annealer estimate)}), ``routing`` ({arcs, complete}),
    ``globals`` ([{net, kind, fanout}]), ``errors`` and ``warnings``.
    """
    out: dict[str, Any] = {"utilisation": {}, "fmax": {}, "fmax_placement": {}, "max_delay": [],
                           "critical_paths": [], "placement": {}, "routing": {"arcs": None, "complete": False},
                           "globals": [], "errors": [], "warnings": []}
    fmax_seen: list[dict[str, Any]] = []
    path: dict[str, Any] | None = None
    routed = False
    for raw in log.splitlines():
        line = raw.rstrip()
        if line.startswith("ERROR:"):
            out["errors"].append(line[len("ERROR:"):].strip())
        elif line.startswith("Warning:") and "Max frequency" not in line:
            out["warnings"].append(line[len("Warning:"):].strip())
        if m := _UTIL.match(line):
            out["utilisation"][m[1]] = {"used": int(m[2]), "available": int(m[3]), "percent": int(m[4])}
        elif m := _FMAX.match(line):
            fmax_seen.append({"clock": m[2], "achieved_mhz": float(m[3]), "pass": m[4] == "PASS",
                              "target_mhz": float(m[5]), "routed": routed})
        elif m := _DELAY.match(line):
            if routed:
                out["max_delay"].append({"from": m[1].strip(), "to": m[2].strip(), "ns": float(m[3])})
        elif m := _CP_HEAD.match(line):
            path = {"clock": m[1], "edges": m[2], "from": m[3] or m[1], "to": m[4] or m[1], "nets": [],
                    "start": None, "end": None, "total_ns": 0.0}
            out["critical_paths"].append(path)
        elif path is not None and (m := _CP_STEP.match(line)):
            path["total_ns"] = float(m[2])
            if m[3] == "Net":
                path["nets"].append({"net": m[4], "delay_ns": float(m[1])})
            elif m[3] == "Source" and path["start"] is None:
                path["start"] = m[4]
            else:
                path["end"] = m[4]
        elif path is not None and (m := _CP_SINK.match(line)):
            path["end"] = m[1]
        elif path is not None and (m := _CP_SUM.match(line)):
            path.update(logic_ns=float(m[1]), routing_ns=float(m[2]))
            path = None
        elif m := _SA.match(line):
            out["placement"]["wirelength"] = int(m[3])
            out["placement"]["timing_cost"] = int(m[2])
        elif m := _RANDOM_WL.match(line):
            out["placement"].update(cells=int(m[1]), random_wirelength=int(m[2]))
        elif m := _ARCS.match(line):
            out["routing"]["arcs"] = int(m[1])
        elif line.startswith("Info: Routing complete"):
            out["routing"]["complete"] = routed = True
        elif m := _GLOBAL.match(line):
            out["globals"].append({"net": m[1], "kind": m[2] or "clock", "fanout": int(m[3])})
    for f in fmax_seen:  # the last report per clock wins (post-route when routing ran)
        out["fmax"][f["clock"]] = {k: f[k] for k in ("achieved_mhz", "target_mhz", "pass")}
        if not f["routed"]:
            out["fmax_placement"][f["clock"]] = f["achieved_mhz"]
    out["errors"] = [e for e in out["errors"] if e][:10]
    out["warnings"] = out["warnings"][:20]
    return out


def summarise_json_report(report: dict[str, Any]) -> dict[str, Any]:
    """nextpnr's ``--report`` JSON without the per-step path lists: utilisation and Fmax."""
    return {"utilization": report.get("utilization", {}),
            "fmax": {clk: {"achieved_mhz": round(v.get("achieved", 0.0), 2), "constraint_mhz": v.get("constraint")}
                     for clk, v in report.get("fmax", {}).items()}}


# --------------------------------------------------------------------------- examples

@dataclass
class FlowExample:
    phase: str
    task: str
    user: str
    answer: str
    case: str
    facts: dict[str, Any] = field(default_factory=dict)  # the numbers the answer states

    @property
    def generator(self) -> str:
        return f"{FLOW_NAME}/{self.phase}/{self.task}@v{KIND_VERSION}"


DEVICES = {"hx1k": "iCE40HX1K", "hx8k": "iCE40HX8K", "up5k": "iCE40UP5K", "lp1k": "iCE40LP1K",
           "lp384": "iCE40LP384", "lp8k": "iCE40LP8K", "up3k": "iCE40UP3K", "hx4k": "iCE40HX4K"}
RESOURCE_WORDS = {"ICESTORM_LC": "logic cells (LUT4 + flip-flop)", "ICESTORM_RAM": "block RAMs",
                  "SB_IO": "I/O cells", "SB_GB": "global buffers", "ICESTORM_PLL": "PLLs",
                  "SB_WARMBOOT": "warm-boot blocks", "ICESTORM_DSP": "DSP blocks", "ICESTORM_SPRAM": "SPRAMs",
                  "ICESTORM_HFOSC": "high-frequency oscillators", "ICESTORM_LFOSC": "low-frequency oscillators",
                  "SB_I2C": "I2C hard blocks", "SB_SPI": "SPI hard blocks", "SB_LEDDA_IP": "LED driver blocks",
                  "SB_RGBA_DRV": "RGB drivers", "IO_I3C": "I3C pads"}


def _design(r: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in r.get("params", {}).items())
    return f"`{r['top']}`" + (f" ({params})" if params else "")


def _dev(r: dict[str, Any]) -> str:
    return f"{DEVICES.get(r['device'], r['device'])} ({r['package']} package)"


def _log_lines(log: str, keep: list[str], limit: int = 40) -> str:
    """The log lines that start with one of ``keep`` (in order), as the tool printed them."""
    lines = [ln.rstrip() for ln in log.splitlines() if any(ln.startswith(k) for k in keep)]
    return "\n".join(lines[:limit])


def _util_block(r: dict[str, Any]) -> str:
    log = r.get("nextpnr_log", "")
    start = log.find("Info: Device utilisation:")
    if start < 0:
        return ""
    lines = []
    for ln in log[start:].splitlines()[1:]:
        if not _UTIL.match(ln.rstrip()):
            break
        lines.append(ln.rstrip())
    return "Info: Device utilisation:\n" + "\n".join(lines)


def _main_clock(r: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    return next(iter(sorted(r.get("fmax", {}).items())), None)


def _clock_path(r: dict[str, Any], clock: str) -> dict[str, Any] | None:
    return next((p for p in r.get("critical_paths", []) if p.get("clock") == clock and "logic_ns" in p), None)


def utilisation_example(r: dict[str, Any]) -> FlowExample | None:
    """placement: how full is the device, which resource is tightest, what headroom is left."""
    util = {k: v for k, v in r.get("utilisation", {}).items() if v["available"] > 0}
    if not util or not r.get("ok"):
        return None
    tight_name, tight = max(util.items(), key=lambda kv: (kv[1]["used"] / kv[1]["available"], kv[0]))
    lc = util.get("ICESTORM_LC")
    user = (f"I placed and routed {_design(r)} on an {_dev(r)} with nextpnr-ice40 "
            f"(`{r['command']}`). The utilisation report says:\n```\n{_util_block(r)}\n```\n"
            "How full is the device, which resource is the tightest, and how much room is left for more logic?")
    parts = []
    if lc:
        parts.append(f"The design occupies {lc['used']} of the {lc['available']} logic cells ({lc['percent']}%), "
                     f"so {lc['available'] - lc['used']} logic cells remain free for additional logic.")
    pct = round(100 * tight["used"] / tight["available"])
    parts.append(f"The tightest resource is {RESOURCE_WORDS.get(tight_name, tight_name)} ({tight_name}): "
                 f"{tight['used']} used of {tight['available']}, about {pct}%.")
    unused = sorted(k for k, v in util.items() if v["used"] == 0)
    if unused:
        parts.append("Unused blocks: " + ", ".join(unused) + "; the design needs none of them.")
    if tight["used"] / tight["available"] > 0.8:
        parts.append("Above roughly 80% the placer has little freedom, so routing gets harder and Fmax usually drops; "
                     "a larger device would give it room.")
    else:
        parts.append("There is comfortable headroom: placement and routing should not be constrained by capacity.")
    if tight_name == "SB_IO":
        parts.append("Pins fill up faster than logic cells here, so if the design grows its ports, I/O runs out "
                     "first: serialise wide ports or choose a package with more bonded pins.")
    facts = {"lc_used": lc and lc["used"], "lc_available": lc and lc["available"], "tightest": tight_name,
             "tightest_used": tight["used"], "tightest_available": tight["available"]}
    return FlowExample("placement", "fpga_utilisation_report", user, " ".join(parts), r["case"], facts)


def wirelength_example(r: dict[str, Any]) -> FlowExample | None:
    """placement: what the annealer's wirelength numbers mean for this run."""
    pl = r.get("placement", {})
    if not r.get("ok") or "wirelength" not in pl or "random_wirelength" not in pl:
        return None
    log = _log_lines(r.get("nextpnr_log", ""), ["Info: Creating initial analytic placement",
                                                 "Info:   at iteration #", "Info: Routing "], limit=12)
    user = (f"While placing {_design(r)} on an {_dev(r)}, nextpnr-ice40 printed:\n```\n{log}\n```\n"
            "What do these wirelength figures mean, and how much did placement improve on a random placement?")
    reduction = round(100 * (1 - pl["wirelength"] / pl["random_wirelength"]))
    answer = (f"Wirelength here is nextpnr's estimate of total net length (half-perimeter of each net's bounding box, "
              f"in tiles), the quantity the placer minimises. A random placement of the {pl['cells']} movable cells "
              f"would need about {pl['random_wirelength']}; after analytic placement and annealing refinement the "
              f"final estimate is {pl['wirelength']}, a reduction of about {reduction}%. The timing cost "
              f"({pl.get('timing_cost')}) is the timing-driven part of the placer's objective. Shorter wirelength "
              f"means fewer routing resources and usually shorter net delays; the router then had "
              f"{r['routing']['arcs']} source-to-sink arcs to route, and routing "
              f"{'completed' if r['routing']['complete'] else 'did not complete'}.")
    facts = {"wirelength": pl["wirelength"], "random_wirelength": pl["random_wirelength"],
             "arcs": r["routing"]["arcs"], "cells": pl["cells"]}
    return FlowExample("placement", "fpga_wirelength_report", user, answer, r["case"], facts)


def timing_example(r: dict[str, Any]) -> FlowExample | None:
    """timing_analysis: does it meet the target, by how much, what limits it, what to change."""
    main = _main_clock(r)
    if main is None or not r.get("ok"):
        return None
    clock, f = main
    path = _clock_path(r, clock)
    if path is None:
        return None
    log = _log_lines(r.get("nextpnr_log", ""), ["Info: Max frequency", "Warning: Max frequency",
                                                 "Info: Max delay"], limit=12)
    user = (f"nextpnr-ice40 reported this for {_design(r)} on an {_dev(r)} with a {f['target_mhz']:g} MHz target "
            f"(`{r['command']}`):\n```\n{log}\n```\nThe register-to-register critical path is "
            f"{path['logic_ns']} ns of logic and {path['routing_ns']} ns of routing. Does the design meet timing, "
            "what is the slack, and what would you change?")
    period = 1000.0 / f["target_mhz"]
    needed = 1000.0 / f["achieved_mhz"]
    slack = period - needed
    logic_share = round(100 * path["logic_ns"] / (path["logic_ns"] + path["routing_ns"]))
    verdict = "meets" if f["pass"] else "does not meet"
    parts = [f"It {verdict} timing: the post-route Fmax of clock {clock} is {f['achieved_mhz']:.2f} MHz against a "
             f"{f['target_mhz']:g} MHz target. The target period is {period:.2f} ns and the slowest "
             f"register-to-register path needs about {needed:.2f} ns, so the setup slack is {slack:+.2f} ns."]
    est = r.get("fmax_placement", {}).get(clock)
    if est is not None:
        parts.append(f"The first Max frequency line ({est:.2f} MHz) is the estimate after placement; the one after "
                     f"routing, with real wire delays, is the figure that counts.")
    parts.append(f"Of that path, {logic_share}% is logic and {100 - logic_share}% is routing.")
    if f["pass"]:
        parts.append(f"Nothing has to change; the margin would allow raising the target up to about "
                     f"{math.floor(f['achieved_mhz'])} MHz, but nextpnr's estimate varies between seeds, so keep some "
                     "margin.")
    elif logic_share >= 50:
        parts.append(f"Logic dominates, so placement alone cannot close a {-slack:.2f} ns gap: pipeline the path "
                     f"(add a register between {path['start']} and {path['end']}), reduce the logic depth, or lower "
                     f"the clock to at most {math.floor(f['achieved_mhz'])} MHz.")
    else:
        parts.append(f"Routing dominates, so first try a better placement: other placer seeds, --opt-timing or a "
                     f"tighter floorplan; if that does not recover {-slack:.2f} ns, pipeline the path or lower the "
                     f"clock to at most {math.floor(f['achieved_mhz'])} MHz.")
    facts = {"clock": clock, "fmax": f["achieved_mhz"], "target": f["target_mhz"], "pass": f["pass"],
             "slack_ns": round(slack, 2), "logic_ns": path["logic_ns"], "routing_ns": path["routing_ns"]}
    return FlowExample("timing_analysis", "fpga_timing_closure", user, " ".join(parts), r["case"], facts)


def critical_path_example(r: dict[str, Any]) -> FlowExample | None:
    """routing: read a critical path report: where the delay goes, which net is slowest."""
    main = _main_clock(r)
    if main is None or not r.get("ok"):
        return None
    clock, _ = main
    path = _clock_path(r, clock)
    if path is None or not path["nets"]:
        return None
    log = r.get("nextpnr_log", "")
    head = f"Info: Critical path report for clock '{clock}'"
    start = log.find(head)
    block = []
    for ln in log[start:].splitlines():
        if "Defined in" in ln or ln.startswith("Info:                  "):
            continue
        block.append(ln.rstrip())
        if _CP_SUM.match(ln.rstrip()):
            break
    user = (f"Here is nextpnr-ice40's post-route critical path for {_design(r)} on an {_dev(r)}:\n```\n"
            + "\n".join(block) + "\n```\nHow much of this path is routing, which net costs the most, and what "
            "would you try to shorten it?")
    worst = max(path["nets"], key=lambda n: n["delay_ns"])
    routing = round(sum(n["delay_ns"] for n in path["nets"]), 2)
    answer = (f"The path starts at {path['start']} and ends at {path['end']}; it takes {path['total_ns']} ns in "
              f"total, of which nextpnr attributes {path['logic_ns']} ns to logic and {path['routing_ns']} ns to "
              f"routing (the per-net delays add up to about {routing} ns). It crosses {len(path['nets'])} nets; "
              f"the most expensive is {worst['net']} at {worst['delay_ns']} ns. Nets inside a carry chain "
              f"cost almost nothing because they use the dedicated carry wires; the long hops between logic "
              f"tiles are what routing adds. To shorten the path, keep its cells close together (a placement "
              f"constraint or another placer seed), move the cells joined by {worst['net']} closer together, or split "
              f"the path with a pipeline register.")
    facts = {"total_ns": path["total_ns"], "logic_ns": path["logic_ns"], "routing_ns": path["routing_ns"],
             "worst_net": worst["net"], "worst_net_ns": worst["delay_ns"], "nets": len(path["nets"])}
    return FlowExample("routing", "fpga_critical_path_report", user, answer, r["case"], facts)


def globals_example(r: dict[str, Any]) -> FlowExample | None:
    """placement (conceptual, grounded): why nets were promoted to global buffers."""
    if not r.get("ok") or not r.get("globals") or "SB_GB" not in r.get("utilisation", {}):
        return None
    log = _log_lines(r.get("nextpnr_log", ""), ["Info: promoting", "Info: Promoting globals"])
    user = (f"nextpnr-ice40 printed these lines while packing {_design(r)} for an {_dev(r)}:\n```\n{log}\n```\n"
            "What does promoting a net mean, and why were these nets chosen?")
    gb = r["utilisation"]["SB_GB"]
    names = "; ".join(f"{g['net']} (a {g['kind']} net driving {g['fanout']} loads)" for g in r["globals"])
    answer = (f"Promoting a net moves it onto one of the device's dedicated global networks through an SB_GB "
              f"buffer, which reaches every logic tile with low skew instead of using general routing. nextpnr "
              f"promotes clock, clock-enable and set/reset nets with the highest fanout first. Here it promoted "
              f"{len(r['globals'])}: {names}. The device has {gb['available']} global buffers and this design uses "
              f"{gb['used']} of them, so more high-fanout control nets could still be promoted; --no-promote-globals "
              f"turns this off and --promote-logic also allows ordinary logic nets.")
    facts = {"globals": len(r["globals"]), "gb_used": gb["used"], "gb_available": gb["available"]}
    return FlowExample("placement", "fpga_global_promotion", user, answer, r["case"], facts)


DIAGNOSIS_PHASE = {"syntax_error": "synthesis", "unconstrained_io": "placement", "bad_pin": "placement",
                   "timing_fail": "timing_analysis", "too_big": "placement", "io_overflow": "placement"}


def diagnosis_example(r: dict[str, Any]) -> FlowExample | None:
    """Log diagnosis: the failing tool's own error lines in the prompt; the answer names the cause
    (recognised from the log, not from the case label) and the fix."""
    if r.get("ok"):
        return None
    if r.get("stage_failed") == "synthesis":
        log = "\n".join(r["synthesis"]["errors"]) or r.get("yosys_log", "")[-800:]
        m = re.search(r"(\S+\.v):(\d+): ERROR: syntax error, unexpected ([^,\s]+)(?:, expecting (.+))?", log)
        if not m:
            return None
        user = (f"`yosys -s flow.ys` (read_verilog, then synth_ice40 -top {r['top']}) stops with:\n```\n{log}\n```\n"
                "What is wrong and how do I fix it?")
        expecting = f"; it expected {m[4]}" if m[4] else ""
        answer = (f"This is a Verilog parse error, so synthesis never started: the parser hit the token {m[3]} on "
                  f"line {m[2]} of {m[1]} where it cannot appear{expecting}. The mistake is usually at the end of the "
                  f"previous statement (line {int(m[2]) - 1} or just before it): a missing semicolon or an unbalanced "
                  f"begin/end or parenthesis; correct it and run read_verilog again before synth_ice40.")
        return FlowExample(DIAGNOSIS_PHASE["syntax_error"], "fpga_log_diagnosis", user, answer, r["case"],
                           {"file": m[1], "line": int(m[2]), "token": m[3], "cause": "syntax_error"})
    errors = r.get("errors", [])
    text = "\n".join(errors)
    pcf = f"\nThe PCF file is:\n```\n{r['pcf'].rstrip()}\n```" if r.get("pcf") else ""
    user = (f"`{r['command']}` on {_design(r)} fails with:\n```\n"
            + "\n".join(f"ERROR: {e}" for e in errors) + f"\n```{pcf}\nWhat went wrong, and how do I fix it?")
    util = r.get("utilisation", {})
    if m := re.search(r"IO '([^']+)' is unconstrained in PCF", text):
        cause, facts = "unconstrained_io", {"port": m[1]}
        answer = (f"Every top-level port must be assigned a package pin with set_io in the PCF, and port {m[1]} has "
                  f"none, so nextpnr refuses to continue (the PCF only constrains some of the ports). Add a set_io "
                  f"line for {m[1]} and every other unassigned port, or pass --pcf-allow-unconstrained to let the "
                  f"tool choose pins, which is fine for an experiment but not for a board.")
    elif m := re.search(r"package does not have a pin named '([^']+)' \(on line (\d+)\)", text):
        cause, facts = "bad_pin", {"pin": m[1], "line": int(m[2])}
        answer = (f"Line {m[2]} of the PCF assigns a pin called {m[1]}, which does not exist in the "
                  f"{r['package']} package of the {DEVICES.get(r['device'], r['device'])}. Use a pin name from "
                  f"that package's pinout (for the {r['package']} package these are plain pin numbers or ball "
                  f"names) and check that the device and --package options match your board.")
    elif m := re.search(r"Max frequency for clock '([^']+)': ([\d.]+) MHz \(FAIL at ([\d.]+) MHz\)", text):
        cause = "timing_fail"
        achieved, target = float(m[2]), float(m[3])
        facts = {"clock": m[1], "fmax": achieved, "target": target}
        answer = (f"Place and route finished but timing did not close: clock {m[1]} reaches only {achieved:.2f} MHz "
                  f"while {target:g} MHz was requested, and without --timing-allow-fail nextpnr treats that as an "
                  f"error. The target period is {1000 / target:.2f} ns but the slowest path needs about "
                  f"{1000 / achieved:.2f} ns. Either lower --freq to at most {math.floor(achieved)} MHz, or shorten "
                  f"the critical path (pipelining, less logic per stage); --timing-allow-fail only hides the problem.")
    elif m := re.search(r"no BELs remaining to implement cell type '(\w+)'", text):
        cause = "too_big"
        u = util.get(m[1], {})
        facts = {"cell_type": m[1], "used": u.get("used"), "available": u.get("available")}
        answer = (f"The design does not fit the device: it needs {u.get('used')} {m[1]} "
                  f"({RESOURCE_WORDS.get(m[1], m[1])}) but the {DEVICES.get(r['device'], r['device'])} has "
                  f"{u.get('available')}, so the placer runs out of sites. Use a larger device, or make the design "
                  f"smaller (share hardware over several cycles, narrow the datapath, or move storage to block RAM).")
    elif m := re.search(r"Unable to find a placement location for cell '([^']+)\$sb_io'", text):
        cause = "io_overflow"
        io = util.get("SB_IO", {})
        facts = {"port": m[1], "io_used": io.get("used"), "io_available": io.get("available")}
        answer = (f"The I/O cell for port {m[1]} could not be placed: the design needs {io.get('used')} I/O cells and "
                  f"the die has {io.get('available')} I/O sites, but only the sites bonded to pins of the "
                  f"{r['package']} package are usable, and that package has fewer free pins than the design has "
                  f"port bits. Choose a package with more pins, or reduce the number of top-level ports "
                  f"(serialise wide buses).")
    else:
        return None
    facts["cause"] = cause
    return FlowExample(DIAGNOSIS_PHASE[cause], "fpga_log_diagnosis", user, answer, r["case"], facts)


BUILDERS = (utilisation_example, wirelength_example, globals_example, timing_example, critical_path_example,
            diagnosis_example)


def examples_for(report: dict[str, Any]) -> list[FlowExample]:
    """Every example kind that the report supports (kinds without the facts they need are skipped)."""
    return [ex for build in BUILDERS if (ex := build(report)) is not None]


def example_rows(reports: list[dict[str, Any]], phases: set[str] | None = None) -> list[dict[str, Any]]:
    """``EXAMPLES_SCHEMA`` rows (split left empty) through the dataset job's example builder, with
    provenance naming the flow, the case and the tool versions."""
    from corpus.dataset import make_example

    rows = []
    for rep in reports:
        for ex in examples_for(rep):
            if phases is not None and ex.phase not in phases:
                continue
            versions = "; ".join(f"{k} {v}" for k, v in sorted(rep["tools"].items()))
            prov = {"repo": None, "commit": None, "path": "synthesis/assets/design", "start_line": None,
                    "end_line": None, "url": None, "section": f"fpga_flow:{rep['case']}",
                    "generator": f"{ex.generator} [{versions}]"}
            row = make_example(ex.phase, ex.task, ex.user, ex.answer, "synthetic", prov, "Apache-2.0")
            row["group"] = f"fpga_flow:{rep['case']}"
            rows.append(row)
    return rows


def run_cases(cases: list[FlowCase], cache_dir: str | None = None, timeout_s: float = 120.0,
              memory_mb: int = 2048) -> list[dict[str, Any]]:
    """``run_flow`` on each case (in order; cached)."""
    return [run_flow(c, cache_dir=cache_dir, timeout_s=timeout_s, memory_mb=memory_mb) for c in cases]


__all__ = ["FlowCase", "FlowExample", "available", "default_cases", "example_rows", "examples_for", "parse_nextpnr",
           "run_cases", "run_flow", "tool_versions"]
