"""Security test fixtures: canary files outside any sandbox, and a survivor check.

``canary`` plants world-readable secret files outside the sandbox's working directory (one
under /tmp, one under $HOME) plus a root-only (0600) one, and names a path that no test may
create. At teardown the files must be unchanged and the forbidden path absent.

``marker`` is a unique token for a test to put into the command line of every process it
starts inside a sandbox; at teardown no live (non-zombie) process may carry it. Survivors
are killed by pid (only ours: they carry the token) before the test is failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Canary:
    """Secret files outside the sandbox; ``secret`` must never show up in a sandbox's output."""

    secret: str
    tmp_dir: Path       # /tmp/cf-canary-*, world-traversable
    tmp_file: Path      # world-readable secret under /tmp
    home_file: Path     # world-readable secret under $HOME
    root_only: Path     # 0600 secret in a 0700 directory
    forbidden: Path     # must never be created

    def assert_not_leaked(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        assert self.secret.encode() not in data, "a canary secret leaked out of the sandbox"


@pytest.fixture()
def canary() -> Iterator[Canary]:
    secret = f"CANARY-{uuid.uuid4().hex}"
    tmp_dir = Path(tempfile.mkdtemp(prefix="cf-canary-", dir="/tmp"))
    tmp_dir.chmod(0o755)
    tmp_file = tmp_dir / "secret.txt"
    tmp_file.write_text(secret)
    tmp_file.chmod(0o644)
    private = tmp_dir / "private"
    private.mkdir(mode=0o700)
    root_only = private / "root-only.txt"
    root_only.write_text(secret)
    root_only.chmod(0o600)
    home_file = Path.home() / f".cf-canary-{uuid.uuid4().hex[:8]}"
    home_file.write_text(secret)
    home_file.chmod(0o644)
    c = Canary(secret, tmp_dir, tmp_file, home_file, root_only, tmp_dir / "created-by-sandbox.txt")
    try:
        yield c
        for f in (tmp_file, home_file, root_only):
            assert f.read_text() == secret, f"canary {f} was changed"
        assert not c.forbidden.exists(), f"a sandbox created {c.forbidden}"
    finally:
        home_file.unlink(missing_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)


def live_processes(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``marker``."""
    token = marker.encode()
    pids = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if token not in f.read():
                    continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z":
            pids.append(int(entry))
    return pids


def assert_no_survivors(marker: str) -> None:
    """Nothing carrying ``marker`` is alive now (no grace period: ``run`` waits for the sandbox)."""
    survivors = live_processes(marker)
    for pid in survivors:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not survivors, f"processes started in a sandbox outlived the run: {survivors}"


@pytest.fixture()
def marker() -> Iterator[str]:
    token = f"cfmark{uuid.uuid4().hex[:16]}"
    yield token
    deadline = time.monotonic() + 2.0  # teardown may follow a failed assertion: give stragglers a moment
    while live_processes(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_no_survivors(token)
