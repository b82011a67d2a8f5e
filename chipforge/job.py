"""One skeleton for every job entry point: config → checks → steps with completion markers → report.

A job is a :class:`JobSpec` (its config class, default YAML, command-line flags, the config
fields that name its inputs) plus a *body*: a function ``body(cfg, run) -> report`` that does
the work (the pipeline modules under ``pipelines/`` hold those bodies). :func:`main` does the
rest, the same way for every job:

1. parse ``--config YAML``, named flags and ``key.sub=value`` overrides, validate the whole
   config, and check paths (inputs exist, the output is not a file) *before* Ray starts; an
   error names the flag, override or file that set the bad value and exits with code 2;
2. skip the job when ``OUTPUT/_chipforge/<job>.json`` holds the same fingerprint (the
   config, minus fields that do not change results, and each input's own fingerprint) unless
   ``--force``; say what was skipped and why;
3. start Ray quietly (its logs stay in its session directory unless ``--verbose``), run the
   body, write ``OUTPUT/report.json`` atomically, then the marker, then one summary;
4. exit 0 on success, 1 when the job failed or produced no output from a non-empty input
   (every input rejected), 2 on a config or usage error (also: another run is writing the same
   local output), 130 on Ctrl-C and 143 on SIGTERM (``ray job stop``, ``kill``, a scheduler).

Stops and collisions: SIGTERM unwinds the job like Ctrl-C (``atomic_dir`` removes its temporary
directory, nothing is marked finished, one line, no traceback). A local output is held with a lock
file next to it (``.NAME.chipforge-lock``) for the whole run, so a second run of the same output
is refused at once instead of mixing its files with the first's; under that lock, temporaries a
killed run left (``*.tmp-xxxxxxxx`` in OUTPUT, OUTPUT/_chipforge and next to OUTPUT) are removed.
Object-store outputs (``s3://``) have no lock: two runs into one such output must not overlap.

A downstream job's input fingerprint is the upstream job's marker fingerprint, so changing
the dataset config reruns the dataset and every job that reads it, and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from chipforge import fs
from chipforge.config import ConfigError, load_config, redact_secrets
from chipforge.vocab import content_hash, sha256_hex

C = TypeVar("C", bound=BaseModel)
MARKER_DIR = "_chipforge"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_STOPPED = 143  # 128 + SIGTERM: `ray job stop`, `kill`, a scheduler's stop


class JobError(RuntimeError):
    """A failure the user can act on: printed as one line (no traceback), exit code 1."""


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while a job runs: it unwinds like Ctrl-C (a KeyboardInterrupt,
    which Ray, Ray Data and the pipelines already treat as a stop), so ``fs.atomic_dir`` removes its
    temporary directory and no completion marker is written."""


@dataclass(frozen=True)
class JobSpec(Generic[C]):
    """What the skeleton needs to know about a job.

    ``inputs`` maps config fields holding input paths to what should be there (used in errors);
    a field set to None or an empty string is not an input of this run. ``output_field`` names
    the output directory's field. ``volatile`` fields (resources, cache locations) do not change
    results and are left out of the fingerprint. ``outputs`` counts the primary outputs in a
    report (for the exit-code policy); ``inputs_count`` counts what went in; ``failure`` returns a message when a
    finished body still failed (a driver whose step failed).
    """

    name: str
    config: type[C]
    default_config: str | None
    summary: Callable[[dict[str, Any]], str]
    flags: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    output_field: str = "output_dir"
    volatile: tuple[str, ...] = ()
    outputs: Callable[[dict[str, Any]], int] | None = None
    failure: Callable[[dict[str, Any]], str | None] | None = None
    inputs_count: Callable[[dict[str, Any]], int] | None = None
    uses_ray: bool = True
    description: str | None = None
    extra_inputs: Callable[[Any], Mapping[str, str]] | None = None
    marker: bool = True
    # Checks that need the inputs (not just the config) and must fail before Ray starts; raises
    # ConfigError (exit 2) naming what is wrong.
    preflight: Callable[[Any], None] | None = None


# --------------------------------------------------------------------------- fingerprints

def _digest(obj: Any) -> str:
    return content_hash(obj, length=16)


def marker_path(output_dir: str, job: str) -> str:
    return fs.join(output_dir, MARKER_DIR, f"{job}.json")


def path_fingerprint(path: str) -> str:
    """A stable identity of an input: the fingerprint of the job that wrote it, else its files.

    A directory written by a chipforge job holds ``_chipforge/*.json`` markers: their
    fingerprints are used, so a rewrite with the same result is not a change. Other inputs are
    identified by their files' relative paths, sizes and (small files) contents.
    """
    if not path:
        return ""
    markers = [p for p in fs.listdir(fs.join(path, MARKER_DIR)) if p.endswith(".json")]
    if markers:
        return _digest(sorted(fs.read_json(p).get("fingerprint", "") for p in markers))
    filesystem, root = fs.resolve(path)
    if not fs.is_uri(path):
        return _local_fingerprint(root)
    import pyarrow.fs as pafs

    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return "missing"
    infos = [info] if info.type == pafs.FileType.File else filesystem.get_file_info(
        pafs.FileSelector(root, recursive=True))
    entries = []
    for i in sorted(infos, key=lambda i: i.path):
        if i.type != pafs.FileType.File:
            continue
        rel = os.path.relpath(i.path, root) if i.path != root else os.path.basename(root)
        if i.size is not None and i.size <= 1 << 20:
            with filesystem.open_input_stream(i.path) as f:
                entries.append((rel, sha256_hex(f.read())))
        else:
            entries.append((rel, i.size, i.mtime_ns))
    return _digest(entries)


def _local_fingerprint(root: str) -> str:
    """``path_fingerprint`` of a local file or directory tree, walked by name as the OS stores it (names
    that are not UTF-8 are fine). Links are followed, as the jobs read through them: a linked file counts
    by its content, a directory reached twice (a link loop) once, a dangling link by its target text.
    FIFOs, sockets and devices count by kind and are never opened (they could block)."""
    import stat

    def entry(p: bytes, rel: str) -> tuple[Any, ...]:
        try:
            st = os.stat(p)
        except OSError as exc:
            if os.path.islink(p):
                return (rel, "broken_symlink", os.readlink(p).decode("utf-8", "backslashreplace"))
            return (rel, "unreadable", exc.errno)
        if not stat.S_ISREG(st.st_mode):
            return (rel, "special", stat.S_IFMT(st.st_mode))
        if st.st_size > 1 << 20:
            return (rel, st.st_size, st.st_mtime_ns)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            return (rel, "unreadable", exc.errno)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped since the stat
                return (rel, "special", 0)
            return (rel, sha256_hex(f.read()))

    top = os.fsencode(os.path.abspath(root))
    if not os.path.exists(top):
        return "missing"
    if not os.path.isdir(top):
        return _digest([entry(top, os.path.basename(root))])
    entries, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a link back up the tree, or a second link to one directory
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in filenames:
            p = os.path.join(dirpath, name)
            entries.append(entry(p, os.path.relpath(p, top).decode("utf-8", "backslashreplace")))
    return _digest(sorted(entries, key=lambda e: e[0]))


def _get(cfg: BaseModel, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _without(data: dict[str, Any], dotted: str) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def fingerprint(spec: JobSpec[Any], cfg: BaseModel) -> tuple[str, dict[str, str]]:
    """(fingerprint of the job's result, fingerprint of each input) for this config."""
    data = cfg.model_dump(mode="json")
    for name in (spec.output_field, *spec.volatile, *spec.inputs):
        _without(data, name)
    inputs = {name: path_fingerprint(str(_get(cfg, name) or "")) for name in spec.inputs}
    if spec.extra_inputs:
        for name, path in spec.extra_inputs(cfg).items():
            inputs[name] = path_fingerprint(path)
    return _digest({"job": spec.name, "config": data, "inputs": inputs}), inputs


# --------------------------------------------------------------------------- checks

def check_paths(spec: JobSpec[Any], cfg: BaseModel, origin: Callable[[str], str]) -> None:
    """Inputs exist and the output is not a file; errors name the flag or file that set them."""
    import pyarrow.fs as pafs

    errors = []
    out = str(_get(cfg, spec.output_field))
    kind, problem = _probe(out, output=True)
    if problem:
        errors.append(f"{origin(spec.output_field)}: output {out!r}: {problem}")
    elif kind == pafs.FileType.File:
        errors.append(f"{origin(spec.output_field)}: output {out!r} is a file, not a directory")
    elif kind == pafs.FileType.NotFound and _file_above(out):
        errors.append(f"{origin(spec.output_field)}: output {out!r} cannot be created: {_file_above(out)!r} "
                      "is a file, not a directory")
    errors += _output_overlaps(spec, cfg, origin)
    for name, what in spec.inputs.items():
        value = _get(cfg, name)
        if not value:
            continue
        kind, problem = _probe(str(value))
        if problem:
            errors.append(f"{origin(name)}: input {value!r}: {problem}")
        elif kind == pafs.FileType.NotFound:
            errors.append(f"{origin(name)}: input {value!r} does not exist (expected {what})")
    if errors:
        raise ConfigError("invalid paths:\n  " + "\n  ".join(errors))


def _file_above(path: str) -> str | None:
    """The nearest existing ancestor of a local ``path`` when it is a file (the output could never be
    created below it: the job would fail after all its work, writing its report), else None."""
    if fs.is_uri(path):
        return None
    parent = os.path.dirname(fs.resolve(path)[1])
    while parent and not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    return parent if os.path.lexists(parent) and not os.path.isdir(parent) else None


def _location(path: str) -> str:
    """A comparable form of a path: a local path resolved (``~``, ``..``, links), a URI without a trailing slash."""
    if fs.is_uri(path):
        return path.rstrip("/")
    return os.path.realpath(fs.resolve(path)[1])


def _output_overlaps(spec: JobSpec[Any], cfg: BaseModel, origin: Callable[[str], str]) -> list[str]:
    """Errors for an output that is one of the job's inputs or lies inside one: the job would replace
    what it reads, or read (and fingerprint) its own output on the next run, which then reads more
    than the user's input and is never up to date. An input inside the output is fine (a layout
    such as OUTPUT/dataset read by a job writing OUTPUT/evaluation)."""
    out = str(_get(cfg, spec.output_field))
    named = {origin(name): str(_get(cfg, name)) for name in spec.inputs if _get(cfg, name)}
    if spec.extra_inputs:
        named.update({f"input {name}": str(p) for name, p in spec.extra_inputs(cfg).items() if p})
    target, errors = _location(out), []
    for who, path in named.items():
        where = _location(path)
        if target == where:
            errors.append(f"{origin(spec.output_field)}: output {out!r} is also the input of {who}: "
                          "the job would overwrite what it reads; choose another output")
        elif target.startswith(where.rstrip("/") + "/"):
            errors.append(f"{origin(spec.output_field)}: output {out!r} lies inside the input of {who} "
                          f"({path!r}): a rerun would read its own output; choose an output outside it")
    return errors


def _probe(path: str, *, output: bool = False) -> tuple[Any, str | None]:
    """(file type, None), or (None, why the storage cannot be used): an unknown scheme, an object
    store that does not answer or refuses the credentials, an output's bucket that does not exist, or
    an output that is a whole bucket (its temporary sibling would be another bucket)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    silent = _silent_endpoint(path)
    if silent:
        return None, silent
    try:
        filesystem, p = fs.resolve(path)
        if output and fs.is_uri(path) and "/" not in p.strip("/"):
            return None, f"an output needs a folder inside the bucket (e.g. {path.rstrip('/')}/out)"
        kind = filesystem.get_file_info(p).type
        if output and fs.is_uri(path) and kind == pafs.FileType.NotFound:
            bucket = p.split("/", 1)[0]
            if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                try:  # a store that is not there also says "not found": listing tells them apart
                    filesystem.get_file_info(pafs.FileSelector(bucket, allow_not_found=False))
                except (OSError, pa.ArrowException) as exc:
                    return None, f"its bucket {bucket!r} cannot be used: {_short(exc)}"
        return kind, None
    except (OSError, ValueError, pa.ArrowException) as exc:
        return None, f"storage cannot be used: {_short(exc)}"


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400]


def _silent_endpoint(path: str) -> str | None:
    """Why an S3 path's configured endpoint (``AWS_ENDPOINT_URL[_S3]``: MinIO, a proxy) cannot be used, when
    it does not answer an HTTP request within ``ENDPOINT_TIMEOUT_S``: pyarrow would wait minutes for it
    (retries of long timeouts), and a process cannot exit while such a request is in flight. None
    otherwise: any answer, even an error status, is the store's to judge."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return _endpoint_silence(endpoint) if endpoint and path.startswith("s3://") else None


ENDPOINT_TIMEOUT_S = 10.0


@functools.lru_cache(maxsize=8)
def _endpoint_silence(endpoint: str) -> str | None:
    import socket
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=ENDPOINT_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as exc:
        if isinstance(exc, (socket.timeout, TimeoutError)) or isinstance(getattr(exc, "reason", None),
                                                                          (socket.timeout, TimeoutError)):
            return f"storage endpoint {endpoint} did not answer within {ENDPOINT_TIMEOUT_S:g} s"
        return None  # refused, unresolvable, TLS...: pyarrow says so itself, quickly
    return None


# --------------------------------------------------------------------------- run context

@dataclass
class Run:
    """What a job body gets besides its config: the output directory, progress lines, steps."""

    job: str
    output_dir: str
    verbose: bool = False
    force: bool = False
    brief: bool = False
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter)

    def progress(self, message: str) -> None:
        """One line on the terminal, prefixed with the job's name and the elapsed time."""
        print(f"[{self.job} {time.perf_counter() - self._t0:6.1f}s] {message}", flush=True)

    def step(self, name: str) -> "_Step":
        """``with run.step("parse"): ...`` times a step, prints its start and end, and reports it."""
        return _Step(self, name)


class _Step:
    def __init__(self, run: Run, name: str) -> None:
        self.run, self.name = run, name

    def __enter__(self) -> "_Step":
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        if self.run.verbose:
            self.run.progress(f"{self.name} ...")
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self.t0
        self.run.steps[self.name] = {"wall_s": round(wall, 2),
                                     "driver_cpu_s": round(time.process_time() - self.c0, 2)}
        if exc[0] is None:
            self.run.progress(f"{self.name}: {wall:.1f} s")


# --------------------------------------------------------------------------- Ray, quietly

def init_ray(verbose: bool = False, **kwargs: Any) -> None:
    """Attach to the cluster a job was submitted to, or start a local Ray, quietly.

    No address is passed: under ``ray job submit`` (``RAY_ADDRESS`` is set) this attaches to
    the cluster; on a laptop it starts a local one. A Ray already initialised in this process
    (tests, notebooks) is reused as it is. Unless ``verbose``, Ray's own log lines, worker
    output and progress bars stay in Ray's log files (``/tmp/ray/session_latest/logs``).

    A local Ray started here has no dashboard (``include_dashboard=False``; Ray ignores it when
    attaching to a cluster, whose dashboard is the one ``ray start --head`` started): on a 2-core
    laptop the dashboard's processes took about 7 CPU-seconds of a 25-second evaluation step
    and 2-3 s of every start-up. Pass ``include_dashboard=True`` (or start ``ray start --head``
    and submit to it) to have one.
    """
    import ray

    if ray.is_initialized():
        quiet_ray_loggers(verbose)
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not verbose:
        kwargs.setdefault("log_to_driver", False)
        kwargs.setdefault("logging_level", logging.ERROR)
        logging.getLogger("ray").setLevel(logging.ERROR)
    if not os.environ.get("RAY_ADDRESS", "").startswith("ray://"):  # Ray Client takes no such argument
        kwargs.setdefault("include_dashboard", False)
    ray.init(**kwargs)
    quiet_ray_loggers(verbose)


def quiet_ray_loggers(verbose: bool) -> None:
    """Ray Data's per-dataset INFO lines and progress bars off unless asked for."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose or os.environ.get("CHIPFORGE_PROGRESS") == "1"
    ctx.print_on_execution_start = verbose
    if not verbose:
        for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve"):
            logging.getLogger(name).setLevel(logging.ERROR)


class NativeLog:
    """While active, file descriptor 2 and ``sys.stderr`` go to a log file.

    Ray's C++ core worker and its error-reporting thread write there (worker-start warnings,
    harmless error-level lines); the job's own progress goes to stdout, and the skeleton prints
    its errors and tracebacks after this is closed, so they reach the terminal.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> "NativeLog":
        sys.stderr.flush()
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.saved = os.dup(2)
        self.old_stderr = sys.stderr
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stderr = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = self.old_stderr
        os.dup2(self.saved, 2)
        os.close(self.saved)


# --------------------------------------------------------------------------- main

def main(spec: JobSpec[C], body: Callable[[C, Run], dict[str, Any]], argv: Sequence[str] | None = None) -> int:
    """Run one job from the command line; returns the process exit code (see module doc)."""
    try:
        cfg, opts = load_config(
            spec.config, argv, prog=f"python -m jobs.{_module_name(spec)}", default_config=spec.default_config,
            flags=spec.flags, description=spec.description, extra_flags=("--force", "--verbose", "--brief"), with_origins=True)
        check_paths(spec, cfg, opts.origin)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    return execute(spec, body, cfg, force=opts.flag("force"), verbose=opts.flag("verbose"), brief=opts.flag("brief"))


def _ray_started() -> bool:
    import ray

    return ray.is_initialized()


def _local_log_dir() -> str:
    import tempfile

    return os.environ.get("CHIPFORGE_LOG_DIR") or os.path.join(tempfile.gettempdir(), "chipforge-logs")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _module_name(spec: JobSpec[Any]) -> str:
    """The ``jobs.<module>`` of this job (as ``chipforge <name>`` maps it), whoever runs it: its own
    ``python -m``, the ``chipforge`` command, or the quickstart running it in-process."""
    from chipforge.cli import COMMANDS

    module = COMMANDS.get(spec.name.replace("_", "-"), (f"jobs.{spec.name}", ""))[0]
    return module.removeprefix("jobs.")


def execute(spec: JobSpec[C], body: Callable[[C, Run], dict[str, Any]], cfg: C, *, force: bool = False,
            verbose: bool = False, brief: bool = False) -> int:
    """Steps 2–4 of the skeleton for an already validated config (tests and the quickstart call this).

    Ctrl-C (exit 130) and SIGTERM (exit 143: ``ray job stop`` sends it to the entrypoint and every
    process below it, then SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S``, 3 s) end the job the same way,
    wherever they land: one line, no traceback, temporaries removed, nothing marked finished.
    """
    with sigterm_stops():
        try:
            return _execute(spec, body, cfg, force=force, verbose=verbose, brief=brief)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: no traceback; nothing is marked finished
            if isinstance(exc, Stopped) or _SIGTERM_SEEN.is_set():  # Ray's ray.get re-raises a plain one
                print(f"error: {spec.name}: stopped (SIGTERM); nothing was marked finished", file=sys.stderr, flush=True)
                return EXIT_STOPPED
            print(f"error: {spec.name}: interrupted", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        except SystemExit as exc:  # SIGTERM while ray.init runs: its own handler exits with the signal number
            if exc.code != signal.SIGTERM:
                raise
            print(f"error: {spec.name}: stopped (SIGTERM); nothing was marked finished", file=sys.stderr, flush=True)
            return EXIT_STOPPED


# Set when SIGTERM arrived: Ray's ray.get turns an exception raised by a signal handler during its
# wait into a plain KeyboardInterrupt, so the type alone does not tell a stop from Ctrl-C.
_SIGTERM_SEEN = threading.Event()


def _raise_stopped(signum: int, frame: Any) -> None:
    """SIGTERM handler: raise :class:`Stopped` once; later SIGTERMs are ignored so that they cannot cut
    the clean-up short (``ray job stop`` signals every process of the job, and SIGKILLs what is left)."""
    _SIGTERM_SEEN.set()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stopped


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """While active, SIGTERM raises :class:`Stopped` in the main thread (Python's default would end the
    process on the spot, leaving ``*.tmp-*`` directories; Ray's driver handler, installed by
    ``ray.init``, exits with code 15 or 1). The previous handler comes back afterwards. A no-op
    outside the main thread, where signal handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _SIGTERM_SEEN.clear()
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _reclaim_sigterm() -> None:
    """Put :func:`_raise_stopped` back after ``ray.init``, which installs its own SIGTERM handler."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) not in (_raise_stopped, signal.SIG_IGN):
        signal.signal(signal.SIGTERM, _raise_stopped)


LOCK_SUFFIX = ".chipforge-lock"
_TMP_NAME = re.compile(r"\.tmp-[0-9a-f]{8}$")  # what fs.atomic_dir and fs.write_bytes name their temporaries


def lock_path(output_dir: str) -> str:
    """The lock file of a local output: next to it (``.NAME.chipforge-lock``), not inside, since a job
    may replace its whole output directory (the export job's ``atomic_dir(OUTPUT)``)."""
    path = fs.resolve(output_dir)[1].rstrip("/") or "/"
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{LOCK_SUFFIX}")


def hold_output(output_dir: str) -> Any:
    """Hold a local output for one run and return the held lock (``release()`` it when done; None for an
    object store, which has no lock). A second run of the same output (a re-submitted job) is refused
    with a ConfigError instead of replacing the first one's files under it, which could leave the
    completion marker of one config over the data of another."""
    if fs.is_uri(output_dir):
        return None
    import filelock

    path = lock_path(output_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise ConfigError(f"output {output_dir!r} is being written by another run now (lock {path} is held): "
                          "wait for it to finish or stop it, or choose another --output") from None
    return lock


def remove_leftovers(output_dir: str) -> list[str]:
    """Remove the temporaries (``*.tmp-xxxxxxxx``) a killed run left in a local output, in its
    ``_chipforge/`` and next to it; return their paths. Only safe under :func:`output_lock`: a running
    job's own temporaries look the same. Object stores are left alone (no lock there)."""
    if fs.is_uri(output_dir):
        return []
    out = fs.resolve(output_dir)[1].rstrip("/") or "/"
    parent, name = os.path.split(out)
    found = [os.path.join(d, e) for d in (out, os.path.join(out, MARKER_DIR)) if os.path.isdir(d)
             for e in os.listdir(d) if _TMP_NAME.search(e)]
    if os.path.isdir(parent):
        found += [os.path.join(parent, e) for e in os.listdir(parent)
                  if _TMP_NAME.search(e) and e[: -len(".tmp-xxxxxxxx")] == name]
    for path in found:
        fs.delete(path)
    return sorted(found)


def _execute(spec: JobSpec[C], body: Callable[[C, Run], dict[str, Any]], cfg: C, *, force: bool,
             verbose: bool, brief: bool) -> int:
    """Skip an up-to-date job, run the preflight, then run it holding its output."""
    out = str(_get(cfg, spec.output_field))
    fp, inputs = fingerprint(spec, cfg)
    marker = marker_path(out, spec.name)
    if spec.marker and not force and fs.exists(marker):
        done = fs.read_json(marker)
        if done.get("fingerprint") == fp:
            print(f"== {spec.name}: up to date, skipped (same config and inputs as the run of "
                  f"{done.get('finished_at', '?')}; --force to redo) → {out}", flush=True)
            if verbose:
                print(done.get("summary", ""), flush=True)
            return EXIT_OK
        changed = [k for k, v in inputs.items() if done.get("inputs", {}).get(k) != v]
        why = f"inputs changed: {', '.join(changed)}" if changed else "config changed"
        print(f"== {spec.name}: rerunning ({why})", flush=True)
    try:
        if spec.preflight:
            spec.preflight(cfg)
        lock = hold_output(out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    try:
        return _run(spec, body, cfg, out, fp, inputs, force=force, verbose=verbose, brief=brief)
    finally:
        if lock is not None:
            lock.release()


def _run(spec: JobSpec[C], body: Callable[[C, Run], dict[str, Any]], cfg: C, out: str, fp: str,
         inputs: dict[str, str], *, force: bool, verbose: bool, brief: bool) -> int:
    """Run the body (its output held by the caller), write the report, the summary and the marker."""
    marker = marker_path(out, spec.name)
    run = Run(spec.name, out, verbose=verbose, force=force, brief=brief)
    fs.delete(marker)
    leftovers = remove_leftovers(out)
    if leftovers:
        run.progress(f"removed {len(leftovers)} temporaries of an earlier run that was killed: "
                     + ", ".join(os.path.basename(p) for p in leftovers[:5]) + (" ..." if len(leftovers) > 5 else ""))
    quiet = spec.uses_ray and not verbose
    log = os.path.join(_local_log_dir(), f"{spec.name}-{os.getpid()}.log")
    try:
        with NativeLog(log) if quiet else _nothing():
            if spec.uses_ray and not _ray_started():
                with run.step("ray start"):
                    init_ray(verbose)
            elif spec.uses_ray:
                init_ray(verbose)
            _reclaim_sigterm()
            report = body(cfg, run)
    except JobError as exc:
        print(f"error: {spec.name}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except Exception:  # noqa: BLE001 - unexpected: the traceback is what a developer needs
        traceback.print_exc()
        print(f"error: {spec.name} failed (traceback above)", file=sys.stderr, flush=True)
        return EXIT_FAILED
    wall = time.perf_counter() - run._t0
    n_out = spec.outputs(report) if spec.outputs else None
    n_in = spec.inputs_count(report) if spec.inputs_count else None
    failed_because = spec.failure(report) if spec.failure else None
    failed = failed_because is not None or (n_out == 0 and (n_in is None or n_in > 0))
    report = {"job": spec.name, "status": "failed" if failed else "ok", "fingerprint": fp,
              "config": redact_secrets(cfg.model_dump(mode="json")), **report, "steps": run.steps, "wall_s": round(wall, 2)}
    fs.write_json(fs.join(out, "report.json"), report)
    text = spec.summary(report)
    shown = text
    if brief and text.count("\n") > 2:
        shown = "\n".join(text.splitlines()[:2] + [f"(full summary: {fs.join(out, 'report.json')})"])
    print(f"== {spec.name} summary ({report['status']}, {wall:.1f} s) → {out}\n{shown}", flush=True)
    if failed_because:
        print(f"error: {spec.name}: {failed_because}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    if failed:
        print(f"error: {spec.name}: no output from {n_in if n_in is not None else 'the'} inputs: every input was "
              f"rejected (reasons in {fs.join(out, 'report.json')})", file=sys.stderr, flush=True)
        return EXIT_FAILED
    if spec.marker:
        fs.write_json(marker, {"job": spec.name, "fingerprint": fp, "inputs": inputs, "summary": text,
                               "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    return EXIT_OK
