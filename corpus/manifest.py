"""Repository manifest: which repositories the corpus job clones, at which ref, which files.

A manifest is input, not trusted configuration: ``corpus.clone`` validates every URL and ref
before git sees it (scheme allow-list, no option-looking values, local paths confined to the
allowed roots). ``local_roots_for`` computes those roots for a job: the configured list, or by
default the working directory and the manifest file's directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Repository(BaseModel):
    """One manifest entry. ``url``: https, ssh, file:// or a local path (plain dir = snapshot)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    url: str
    ref: str | None = None  # branch, tag or 40-hex commit; None = remote default branch
    include: list[str] = Field(default_factory=list)  # fnmatch globs on the relative path
    exclude: list[str] = Field(default_factory=list)
    license: str | None = None  # SPDX override
    submodules: bool = False


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repositories: list[Repository]

    @model_validator(mode="after")
    def _unique_names(self) -> "Manifest":
        seen: set[str] = set()
        for repo in self.repositories:
            if repo.name in seen:
                raise ValueError(f"duplicate repository name {repo.name!r}")
            seen.add(repo.name)
        return self


# ``<transport>::<address>`` (git remote-helper syntax, e.g. ``ext::``, ``fd::``).
_HELPER_URL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCHEME_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCP_URL = re.compile(r"^[^@/:\s]+@[^@/:\s]+:")  # user@host:path (ssh)


def is_local_url(url: str) -> bool:
    """Whether ``url`` names a local path (neither ``scheme://``, ``user@host:path``, a remote
    helper ``x::``, nor an option-looking ``-...`` value, which are never treated as paths)."""
    return not (url.startswith("-") or _HELPER_URL.match(url) or _SCHEME_URL.match(url) or _SCP_URL.match(url))


def _is_local(url: str) -> bool:
    return is_local_url(url)


def local_roots_for(manifest_path: str | Path, configured: Sequence[str] | None = None) -> list[str]:
    """Directories that local-path (and ``file://``) repositories must lie under.

    ``configured`` (a config field, e.g. ``clone.local_roots``) wins when given; otherwise the
    current working directory and the manifest file's directory. Relative entries resolve
    against the working directory. Roots under the working directory are returned relative to
    it (``"."`` for the working directory itself), like the URLs the corpus job ships to
    workers, so that on every node they resolve against that node's working directory.
    """
    cwd = os.getcwd()
    if configured is None:
        roots = [cwd, str(Path(manifest_path).resolve().parent)]
    else:
        roots = [os.path.abspath(os.path.expanduser(r)) for r in configured]
    out: list[str] = []
    for root in roots:
        rel = os.path.relpath(root, cwd)
        entry = root if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel
        if entry not in out:
            out.append(entry)
    return out


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest YAML; relative local paths resolve against the manifest's directory."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"manifest {path}: {exc}") from exc
    try:
        manifest = Manifest.model_validate(data)
    except Exception as exc:
        raise ValueError(f"manifest {path}: {exc}") from exc
    base = path.resolve().parent
    for repo in manifest.repositories:
        if _is_local(repo.url) and not os.path.isabs(repo.url):
            repo.url = str((base / repo.url).resolve())
    return manifest
