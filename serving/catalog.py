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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from chipforge import fs
from chipforge.vocab import SYSTEM_PROMPTS

TRIAGE = "triage"


class CatalogError(ValueError):
    """The registry cannot be served (missing, empty, unknown phase asked for)."""


def shown(key: str, limit: int = 80) -> str:
    """A registry key as an error message quotes it: ``repr`` (line breaks visible), cut to ``limit`` characters."""
    text = repr(key)
    return text if len(text) <= limit else text[:limit - 5] + "...'"


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
    # Registered specialists left out because they failed the startup checks (``on_bad_specialist: skip``):
    # model name -> why. Not served; reported by the startup log, ``/health`` and ``/stats``.
    skipped: dict[str, str] = field(default_factory=dict)

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
                "specialists": {p: asdict(s) for p, s in self.specialists.items()}, "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Catalog":
        groups = [Group(g["index"], g["base_model"], g["name"], tuple(g["phases"])) for g in d["groups"]]
        specs = {p: Specialist(**s) for p, s in d["specialists"].items()}
        return cls(d["prefix"], groups, specs, d.get("registry", ""), dict(d.get("skipped") or {}))

    def without(self, phases: set[str], skipped: dict[str, str]) -> "Catalog":
        """This catalog less the specialists of ``phases``, with ``skipped`` (name -> why) added to its skipped
        ones; groups left without a specialist go and the rest are numbered and named again (the first keeps
        the base's name)."""
        keep = [s for p, s in self.specialists.items() if p not in phases]
        base_name = self.groups[0].name if self.groups else "base"
        bases = list(dict.fromkeys(s.base_model for s in keep))
        specs = {s.phase: replace(s, group=bases.index(s.base_model)) for s in keep}
        groups = [Group(i, b, base_name if i == 0 else f"{base_name}-{i + 1}",
                        tuple(p for p, s in specs.items() if s.group == i)) for i, b in enumerate(bases)]
        return Catalog(self.prefix, groups, specs, self.registry, {**self.skipped, **skipped})


def _abs(path: str, relative_to: str | None = None) -> str:
    """A relative local path made absolute: relative to the registry file's directory (a registry on an object
    store: that directory there), else to the repository root (as paths in every config), else to the working
    directory, whichever holds it. Found in two of them as different files it is ambiguous (a CatalogError);
    found in none it stays as written (a Hub id, or missing: the startup checks say so). URIs and absolute
    paths stay."""
    if fs.is_uri(path) or os.path.isabs(path):
        return path
    from chipforge.config import REPO_ROOT

    if relative_to and fs.is_uri(relative_to):
        cand = fs.join(relative_to.rsplit("/", 1)[0], path)
        return cand if fs.exists(cand) else path
    roots = [str(REPO_ROOT), os.getcwd()]
    if relative_to:
        roots.insert(0, os.path.dirname(os.path.abspath(relative_to)))
    found = [os.path.abspath(os.path.join(root, path)) for root in roots if os.path.exists(os.path.join(root, path))]
    distinct = list(dict.fromkeys(found, None))
    if len({os.path.realpath(f) for f in distinct}) > 1:
        raise CatalogError(f"the relative path {path!r} is ambiguous: it exists as {distinct[0]} (beside the "
                           f"registry or in the repository) and as {distinct[-1]}; write it as an absolute path")
    return distinct[0] if distinct else path


def load_catalog(registry_path: str, *, prefix: str = "chipforge", base_name: str = "chipforge-base",
                 phases: list[str] | None = None, problems: dict[str, str] | None = None) -> Catalog:
    """The registry's specialists (those of ``phases``, default all). An entry without a base_model or an
    adapter_path, or with an ambiguous relative path, is a :class:`CatalogError`; with ``problems`` given it is
    recorded there (phase -> why) and left out instead (the server's ``on_bad_specialist: skip``)."""
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
        try:
            for key in ("base_model", "adapter_path"):
                if not isinstance(e.get(key), str) or not e[key].strip():
                    raise CatalogError(f"registry {registry_path}: specialist {shown(phase)} has no {key}")
            base, adapter = _abs(e["base_model"], registry_path), _abs(e["adapter_path"], registry_path)
        except CatalogError as exc:
            if problems is None:
                raise
            problems[phase] = str(exc)
            continue
        if base not in bases:
            bases.append(base)
        metrics = e.get("metrics") if isinstance(e.get("metrics"), dict) else {}
        registered = e.get("registered_at") if isinstance(e.get("registered_at"), str) else None
        specs[phase] = Specialist(phase=phase, name=f"{prefix}-{phase}", adapter_path=adapter, base_model=base,
                                  group=bases.index(base), metrics=dict(metrics), registered_at=registered)
    groups = [Group(i, b, base_name if i == 0 else f"{base_name}-{i + 1}",
                    tuple(p for p, s in specs.items() if s.group == i)) for i, b in enumerate(bases)]
    return Catalog(prefix, groups, specs, registry_path)


def localize(path: str, cache_dir: str) -> str:
    """A local directory holding ``path``: itself when local (or a hub id), else a cached copy of the URI.

    The copy is reused while the files there are the same (relative path, size, modification time): an adapter
    trained again into the same URI is copied again, not served stale. A URI with no files is a
    ``FileNotFoundError`` (an empty copy would otherwise be cached as complete)."""
    if not fs.is_uri(path):
        return path
    import json

    import pyarrow.fs as pafs

    filesystem, root = fs.resolve(path)
    root = root.rstrip("/")
    infos = [i for i in filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
             if i.type == pafs.FileType.File]
    if not infos:
        raise FileNotFoundError(f"{path}: no files there")
    files = sorted((i.path[len(root):].lstrip("/"), i.size, i.mtime_ns) for i in infos)
    for rel, _, _ in files:  # object keys are any strings: one with '..' would be written outside the cache
        if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] in ("..", ".") or "\0" in rel:
            raise ValueError(f"{path}: the object {rel!r} would be copied outside the cache; refusing it")
    manifest = json.dumps(files)
    key = hashlib.sha256(path.encode()).hexdigest()[:16]
    dest = os.path.join(os.path.expanduser(cache_dir), key)
    marker = os.path.join(dest, ".complete")
    if os.path.exists(marker):
        with open(marker) as f:
            if f.read() == manifest:
                return dest
    with fs.atomic_dir(dest) as tmp:
        for rel, _, _ in files:
            target = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with filesystem.open_input_stream(f"{root}/{rel}") as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
        with open(os.path.join(tmp, ".complete"), "w") as f:
            f.write(manifest)
    return dest
