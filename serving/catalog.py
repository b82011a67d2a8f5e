"""What a server offers, from the specialist registry: model names, base models, adapters.

Every registered specialist becomes ``<prefix>-<phase>``, a LoRA adapter on its base model;
the base itself is served as ``names.base`` and ``<prefix>`` routes. Specialists are grouped by
base model: one group is one base in memory with all of its adapters (the normal case). A
registry whose specialists were trained on different bases is served as one group per base
(each with its own replicas; the extra bases are named ``<names.base>-2``, ``-3``, ...).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from chipforge import fs
from chipforge.vocab import SYSTEM_PROMPTS

TRIAGE = "triage"


class CatalogError(ValueError):
    """The registry cannot be served (missing, empty, unknown phase asked for)."""


@dataclass(frozen=True)
class Specialist:
    phase: str
    name: str
    adapter_path: str
    base_model: str
    group: int
    metrics: dict[str, Any] = field(default_factory=dict)
    registered_at: str | None = None


@dataclass(frozen=True)
class Group:
    index: int
    base_model: str
    name: str
    phases: tuple[str, ...]


@dataclass(frozen=True)
class Target:
    """What a model name resolves to: ``kind`` router, specialist or base."""

    kind: str
    name: str
    group: int | None = None
    phase: str | None = None  # None for the base

    @property
    def adapter(self) -> str | None:
        return self.phase


@dataclass
class Catalog:
    prefix: str
    groups: list[Group]
    specialists: dict[str, Specialist]
    registry: str = ""

    @property
    def router_name(self) -> str:
        return self.prefix

    def specialist_name(self, phase: str) -> str:
        return f"{self.prefix}-{phase}"

    def model_names(self) -> list[str]:
        return [self.router_name, *(s.name for s in self.specialists.values()), *(g.name for g in self.groups)]

    def resolve(self, model: str) -> Target | None:
        if model == self.router_name:
            return Target("router", model)
        for s in self.specialists.values():
            if s.name == model:
                return Target("specialist", model, s.group, s.phase)
        for g in self.groups:
            if g.name == model:
                return Target("base", model, g.index, None)
        return None

    def target_of_phase(self, phase: str) -> Target:
        s = self.specialists[phase]
        return Target("specialist", s.name, s.group, phase)

    def base_target(self) -> Target:
        g = self.groups[0]
        return Target("base", g.name, g.index, None)

    @property
    def routable_phases(self) -> list[str]:
        """Phases the router may pick (every specialist but triage)."""
        return [p for p in self.specialists if p != TRIAGE]

    def system_prompt(self, phase: str | None) -> str | None:
        return SYSTEM_PROMPTS.get(phase) if phase else None

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "registry": self.registry, "groups": [asdict(g) for g in self.groups],
                "specialists": {p: asdict(s) for p, s in self.specialists.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Catalog":
        groups = [Group(g["index"], g["base_model"], g["name"], tuple(g["phases"])) for g in d["groups"]]
        specs = {p: Specialist(**s) for p, s in d["specialists"].items()}
        return cls(d["prefix"], groups, specs, d.get("registry", ""))


def _abs(path: str, relative_to: str | None = None) -> str:
    """URIs and hub ids stay; a local path that exists relative to the working directory, the registry's
    directory or the repository root becomes absolute (so two spellings of one base are one group)."""
    if fs.is_uri(path) or os.path.isabs(path):
        return path
    if os.path.exists(path):
        return os.path.abspath(path)
    from chipforge.config import REPO_ROOT

    roots = [str(REPO_ROOT)]  # relative paths in configs are relative to the checkout (as for every job)
    if relative_to and not fs.is_uri(relative_to):
        roots.insert(0, os.path.dirname(os.path.abspath(relative_to)))
    for root in roots:
        cand = os.path.join(root, path)
        if os.path.exists(cand):
            return cand
    return path


def load_catalog(registry_path: str, *, prefix: str = "chipforge", base_name: str = "chipforge-base",
                 phases: list[str] | None = None) -> Catalog:
    from training import registry as reg

    if not fs.exists(registry_path):
        raise CatalogError(f"registry {registry_path} does not exist: train specialists first "
                           "(python -m jobs.quickstart, or python -m jobs.finetune ... registry=PATH)")
    try:
        data = reg.load(registry_path)
    except ValueError as exc:
        raise CatalogError(str(exc)) from exc
    entries: dict[str, dict[str, Any]] = data["specialists"]
    if phases is not None:
        missing = sorted(set(phases) - set(entries))
        if missing:
            raise CatalogError(f"phases {missing} are not in registry {registry_path} "
                               f"(registered: {sorted(entries)})")
        entries = {p: e for p, e in entries.items() if p in phases}
    if not entries:
        raise CatalogError(f"registry {registry_path} has no specialists")
    bases: list[str] = []
    specs: dict[str, Specialist] = {}
    for phase in sorted(entries):
        e = entries[phase]
        for key in ("base_model", "adapter_path"):
            if not isinstance(e.get(key), str) or not e[key]:
                raise CatalogError(f"registry {registry_path}: specialist {phase!r} has no {key}")
        base = _abs(e["base_model"], registry_path)
        if base not in bases:
            bases.append(base)
        specs[phase] = Specialist(phase=phase, name=f"{prefix}-{phase}",
                                  adapter_path=_abs(e["adapter_path"], registry_path), base_model=base,
                                  group=bases.index(base), metrics=dict(e.get("metrics") or {}),
                                  registered_at=e.get("registered_at"))
    groups = [Group(i, b, base_name if i == 0 else f"{base_name}-{i + 1}",
                    tuple(p for p, s in specs.items() if s.group == i)) for i, b in enumerate(bases)]
    return Catalog(prefix, groups, specs, registry_path)


def localize(path: str, cache_dir: str) -> str:
    """A local directory holding ``path``: itself when local (or a hub id), else a cached copy of the URI."""
    if not fs.is_uri(path):
        return path
    import pyarrow.fs as pafs

    key = hashlib.sha256(path.encode()).hexdigest()[:16]
    dest = os.path.join(os.path.expanduser(cache_dir), key)
    if os.path.exists(os.path.join(dest, ".complete")):
        return dest
    filesystem, root = fs.resolve(path)
    with fs.atomic_dir(dest) as tmp:
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(root):].lstrip("/")
            target = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with filesystem.open_input_stream(info.path) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
        open(os.path.join(tmp, ".complete"), "w").close()
    return dest
