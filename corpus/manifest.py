"""Repository manifest: which repositories the corpus job clones, at which ref, which files."""

from __future__ import annotations

import os
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


def _is_local(url: str) -> bool:
    return "://" not in url and not (":" in url.split("/")[0] and "@" in url)


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
