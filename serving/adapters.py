"""Checks of the registry's specialists before anything is served or exported: every adapter against its base.

The registry is a file a person can edit and its adapters are directories anyone can copy over.
Without these checks a bad entry fails late or not at all: a replica that cannot load an adapter
dies in PEFT with a traceback (and Serve restarts it again and again before giving up), a missing
local path is looked up on the Hugging Face Hub, and some bad adapters load and then serve the
wrong thing: one without weights (or missing some) is the base model under the specialist's name,
a DoRA adapter fails every request sent to it, and one with ``modules_to_save`` fails the requests
of every *other* specialist (PEFT's mixed-adapter batches support neither).

:func:`adapter_problem` checks an adapter directory against a model (the export's loaded base, or
the skeleton :func:`base_skeleton` builds from the base's ``config.json`` on PyTorch's meta device:
module shapes without weights, so no weights are read or downloaded). :func:`serving_problems`
runs every check for a catalog and returns what is wrong with each specialist, for
:func:`check_catalog` (the server's start: an error naming each bad entry, or, with
``on_bad_specialist: skip``, the catalog without them).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from chipforge import fs
from chipforge.vocab import PHASES
from serving.catalog import Catalog, CatalogError, load_catalog, localize, shown
from serving.config import MODEL_NAME, VLLM_LORA_RANKS, ServeConfig

# A LoRA weight as PEFT saves it (the adapter's name is not in the key).
LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")
LINE_BREAK = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


class BaseUnavailable(ValueError):
    """The base model's config cannot be read (its adapters cannot be checked against it)."""


# --------------------------------------------------------------------------- registry entries

def entry_problems(phase: str, name: str, base_model: str, adapter_path: str) -> list[str]:
    """What makes a registry entry unusable whatever its files hold: a key that is not a phase
    (``../x``, a key with a line break), a model name that is not one, a path with a line break."""
    problems = []
    if phase not in PHASES:
        problems.append(f"{shown(phase)} is not a phase (one of {', '.join(PHASES)})")
    elif not MODEL_NAME.fullmatch(name):
        problems.append(f"the model name {name!r} is not a valid model name (letters, digits, '_', '.', '-'; at "
                        "most 80 characters): check the prefix")
    for key, value in (("base_model", base_model), ("adapter_path", adapter_path)):
        if LINE_BREAK.search(value):
            problems.append(f"{key} {shown(value, 200)} contains a line break or control character")
    return problems


# --------------------------------------------------------------------------- one adapter

def read_json_file(path: str) -> tuple[Any, str | None]:
    """(the JSON value, None) or (None, why it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path} cannot be read ({type(exc).__name__}: {exc})"
    except ValueError as exc:
        return None, f"{path} is not valid JSON ({exc})"


def _tensors(weights: str, values: bool) -> Iterator[tuple[str, list[int], Any]]:
    """(key, shape, tensor or None) of every tensor of a safetensors or PyTorch file (tensors only when ``values``)."""
    if weights.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(weights, "pt") as f:
            for key in f.keys():
                shape = list(f.get_slice(key).get_shape())
                yield key, shape, f.get_tensor(key) if values and LORA_KEY.fullmatch(key) else None
        return
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key, t in state.items():
        yield key, list(t.shape), t if values else None


def _targets(model: Any, cfg: dict[str, Any]) -> set[str] | None:
    """Names of the base's modules ``target_modules`` selects (None when it cannot be told from the config alone:
    a regex, ``all-linear``, or layer restrictions)."""
    targets = cfg.get("target_modules")
    if not isinstance(targets, list) or any(cfg.get(k) for k in ("layers_to_transform", "layers_pattern",
                                                                  "exclude_modules")):
        return None
    wanted = set(targets)
    return {name for name, m in model.named_modules()
            if getattr(m, "in_features", None) is not None and (name in wanted or name.rsplit(".", 1)[-1] in wanted)}


def _rank_of(module: str, cfg: dict[str, Any]) -> int:
    """The rank PEFT gives ``module``: the first ``rank_pattern`` key matching the end of its name, else ``r``."""
    pattern = cfg.get("rank_pattern")
    for key, r in (pattern.items() if isinstance(pattern, dict) else ()):
        try:
            hit = re.fullmatch(rf"(?:.*\.)?(?:{key})", module) is not None
        except re.error:
            hit = module == key or module.endswith("." + key)
        if hit and isinstance(r, int):
            return r
    return cfg["r"]


def inspect_adapter(model: Any, adapter_dir: str, *, values: bool = True) -> tuple[str | None, dict[str, Any]]:
    """(why the LoRA adapter in ``adapter_dir`` does not fit ``model`` (None: a base that could not be read, whose
    modules and shapes go unchecked) or None, what was read: ``config``, ``rank``
    (the largest rank of its weights)). Checked: the files are there and readable, the config is a LoRA's, there
    are LoRA weights, each module has both A and B, every targeted module has weights (PEFT would leave a missing
    one at zero: the adapter silently does less), each weight's module exists in the base and is targeted, A/B
    shapes agree with the module's features and the rank, and (``values``) no weight is NaN or infinite."""
    info: dict[str, Any] = {}
    if not os.path.isdir(adapter_dir):
        return f"{adapter_dir} is not a directory", info
    config_path = os.path.join(adapter_dir, "adapter_config.json")
    weights = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.isfile(config_path):
        return f"{adapter_dir} has no adapter_config.json (not a PEFT adapter directory)", info
    if not os.path.isfile(weights):
        weights = os.path.join(adapter_dir, "adapter_model.bin")
        if not os.path.isfile(weights):
            return f"{adapter_dir} has no adapter_model.safetensors (or .bin)", info
    cfg, why = read_json_file(config_path)
    if why:
        return why, info
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA" or not isinstance(cfg.get("r"), int) \
            or isinstance(cfg.get("r"), bool) or cfg["r"] < 1:
        return f"{config_path} is not a LoRA adapter config (peft_type LORA with an integer r)", info
    info["config"] = cfg
    modules = dict(model.named_modules()) if model is not None else None
    names = set(cfg["target_modules"]) if isinstance(cfg.get("target_modules"), list) else None
    seen: dict[str, set[str]] = {}
    max_rank = 0
    try:
        for key, shape, tensor in _tensors(weights, values):
            m = LORA_KEY.fullmatch(key)
            if not m:
                continue
            name = m["module"]
            seen.setdefault(name, set()).add(m["ab"])
            module = modules.get(name) if modules is not None else None
            if modules is not None and module is None:
                return f"{key}: the base has no module {name!r} (an adapter for another base model?)", info
            if names is not None and name.rsplit(".", 1)[-1] not in names and name not in names:
                return f"{key}: module {name!r} is not in the adapter's target_modules {sorted(names)}", info
            r_here = shape[0 if m["ab"] == "A" else -1] if len(shape) == 2 else 0
            max_rank = max(max_rank, r_here)
            feats = getattr(module, "in_features", None), getattr(module, "out_features", None)
            if None not in feats:  # a linear layer (no module: the base is unknown, shapes are not checked)
                r = _rank_of(name, cfg)
                want = [r, feats[0]] if m["ab"] == "A" else [feats[1], r]
                if shape != want:
                    return (f"{key}: shape {shape}, but the base's {name} ({feats[0]} -> {feats[1]}) with r={r} "
                            f"needs {want} (rank or base model do not match)"), info
            if tensor is not None and not bool(tensor.float().isfinite().all()):
                return f"{key}: has NaN or infinite values (a diverged or corrupt training run)", info
    except Exception as exc:  # noqa: BLE001 - safetensors/torch errors: a truncated or corrupt file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return f"{weights} cannot be read ({type(exc).__name__}: {first}): truncated or corrupt?", info
    info["rank"] = max_rank
    if not seen:
        return (f"{weights} holds no LoRA weights (lora_A/lora_B): PEFT would load it as the base model "
                "unchanged"), info
    half = sorted(n for n, ab in seen.items() if ab != {"A", "B"})
    if half:
        return f"{weights}: module {half[0]!r} has lora_{''.join(seen[half[0]])} without its pair (truncated?)", info
    targeted = _targets(model, cfg) if model is not None else None
    if targeted:
        missing = sorted(targeted - set(seen))
        if missing:
            return (f"{weights}: no weights for {len(missing)} of the {len(targeted)} modules target_modules selects "
                    f"(e.g. {missing[0]!r}); PEFT would leave them at zero (an incomplete or wrong file?)"), info
    return None, info


def adapter_problem(model: Any, adapter_dir: str) -> str | None:
    """Why the LoRA adapter in ``adapter_dir`` does not fit ``model`` (None when it does); see :func:`inspect_adapter`."""
    return inspect_adapter(model, adapter_dir)[0]


def serving_problem(cfg: dict[str, Any], rank: int, backend: str, max_lora_rank: int) -> str | None:
    """Why an adapter that fits its base still cannot be served next to others (None when it can)."""
    if cfg.get("use_dora"):
        return ("a DoRA adapter (use_dora): PEFT's mixed-adapter batches and vLLM cannot serve it; export it merged "
                "(python -m jobs.export --format merged) and serve that model instead")
    if cfg.get("modules_to_save"):
        return (f"modules_to_save {cfg['modules_to_save']}: whole modules replaced per adapter cannot be served "
                "next to other adapters (PEFT fails every other specialist's requests; vLLM refuses it); export it "
                "merged instead")
    if backend == "vllm" and rank > max_lora_rank:
        fits = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
        hint = f"set vllm.max_lora_rank to {fits}" if fits else f"vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}"
        return f"LoRA rank {rank} > vllm.max_lora_rank {max_lora_rank} ({hint})"
    return None


# --------------------------------------------------------------------------- base models

_SKELETONS: dict[tuple[Any, ...], Any] = {}


def base_skeleton(base_model: str, *, trust_remote_code: bool = False) -> Any:
    """:func:`build_skeleton`, once per process and base (again when a local base's config.json changes)."""
    try:
        stamp = os.stat(os.path.join(base_model, "config.json")).st_mtime_ns
    except OSError:
        stamp = None
    key = (base_model, trust_remote_code, stamp)
    if key not in _SKELETONS:
        _SKELETONS[key] = build_skeleton(base_model, trust_remote_code=trust_remote_code)
    return _SKELETONS[key]


def build_skeleton(base_model: str, *, trust_remote_code: bool = False) -> Any:
    """The base's modules with their shapes and no weights (built on PyTorch's meta device from ``config.json``
    alone). :class:`BaseUnavailable` when that config cannot be read: a local or object-store base that is not
    there, or a Hub id this machine cannot resolve (offline, gated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from training.tiny import quiet_hf

    if fs.is_uri(base_model):
        cfg_path = fs.join(base_model, "config.json")
        if not fs.exists(cfg_path):
            raise BaseUnavailable(f"base_model {base_model} has no config.json (not a Hugging Face model directory)")
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                f.write(fs.read_text(cfg_path))
            return build_skeleton(tmp, trust_remote_code=trust_remote_code)
    local = os.path.isabs(base_model) or os.path.exists(base_model)
    if local and not os.path.isfile(os.path.join(base_model, "config.json")):
        what = "has no config.json (not a Hugging Face model directory)" if os.path.isdir(base_model) else \
            "does not exist"
        raise BaseUnavailable(f"base_model {base_model} {what}")
    try:
        with quiet_hf():
            config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - not found, offline, unknown architecture, remote code refused
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BaseUnavailable(f"base_model {base_model}: its config cannot be read ({type(exc).__name__}: "
                              f"{first})") from None


# --------------------------------------------------------------------------- a catalog

def _signature(path: str) -> tuple[Any, ...]:
    """What identifies an adapter directory's files without reading them (a check is redone when it changes)."""
    out = []
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        try:
            st = os.stat(os.path.join(path, name))
            out.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, None))
    return tuple(out)


_CHECKED: dict[tuple[Any, ...], str | None] = {}  # one process checks a catalog once (the serve job, then bind)


def serving_problems(catalog: Catalog, *, backend: str = "hf", cache_dir: str = "~/.cache/chipforge/serving",
                     max_lora_rank: int = 16, trust_remote_code: bool = False,
                     warn: Callable[[str], None] | None = None) -> dict[str, str]:
    """phase -> why that specialist cannot be served, for every specialist of ``catalog`` (empty: all can).

    Per entry: its phase and name (:func:`entry_problems`); its base's config (a local or object-store base
    that is not there fails all of its specialists; a Hub id this machine cannot resolve only skips the shape
    checks, reported through ``warn``); its adapter directory (local, or copied from the object store into
    ``cache_dir`` as the replicas do) with :func:`inspect_adapter` against the base; and what the backend
    cannot serve (:func:`serving_problem`)."""
    problems: dict[str, str] = {}
    skeletons: dict[str, Any] = {}
    base_problem: dict[str, str] = {}
    for g in catalog.groups:
        try:
            skeletons[g.base_model] = base_skeleton(g.base_model, trust_remote_code=trust_remote_code)
        except BaseUnavailable as exc:
            if fs.is_uri(g.base_model) or os.path.isabs(g.base_model) or os.path.exists(g.base_model):
                base_problem[g.base_model] = str(exc)
            else:
                skeletons[g.base_model] = None
                if warn:
                    warn(f"{g.name}: adapters not checked against {g.base_model} ({exc})")
    for phase, s in catalog.specialists.items():
        found = entry_problems(phase, s.name, s.base_model, s.adapter_path)
        if found:
            problems[phase] = "; ".join(found)
            continue
        if s.base_model in base_problem:
            problems[phase] = base_problem[s.base_model]
            continue
        problem = _adapter_check(s.adapter_path, s.base_model, skeletons[s.base_model], backend=backend,
                                 cache_dir=cache_dir, max_lora_rank=max_lora_rank)
        if problem:
            problems[phase] = f"adapter {s.adapter_path}: {problem}"
    return problems


def _adapter_check(adapter_path: str, base_model: str, skeleton: Any, *, backend: str, cache_dir: str,
                   max_lora_rank: int) -> str | None:
    if fs.is_uri(adapter_path):
        if not fs.exists(fs.join(adapter_path, "adapter_config.json")):
            return "has no adapter_config.json there (not a PEFT adapter directory, or not uploaded)"
        try:
            local = localize(adapter_path, cache_dir)
        except (OSError, ValueError) as exc:
            return f"cannot be copied from the object store ({type(exc).__name__}: {exc})"
    else:
        local = adapter_path
        if not os.path.exists(local):
            return ("does not exist on this machine" if os.path.isabs(local) or os.path.lexists(local) else
                    "does not exist (a relative path is looked up beside the registry, in the repository and in the "
                    "working directory; Hub ids are not served as adapters)")
    key = (base_model, os.path.realpath(local), _signature(local), backend, max_lora_rank)
    if key not in _CHECKED:
        problem, info = inspect_adapter(skeleton, local)
        if problem is None:
            problem = serving_problem(info["config"], info["rank"], backend, max_lora_rank)
        _CHECKED[key] = problem
    return _CHECKED[key]


def check_catalog(cfg: ServeConfig, catalog: Catalog, *, found: dict[str, str] | None = None,
                  warn: Callable[[str], None] | None = None) -> Catalog:
    """``catalog`` when every specialist can be served. Otherwise a :class:`CatalogError` naming each bad entry
    and why, or with ``on_bad_specialist: skip`` the catalog without them (``Catalog.skipped``), reported through
    ``warn``. ``found``: problems found while loading the registry (entries left out by :func:`load_catalog`)."""
    problems = dict(found or {})
    problems.update(serving_problems(catalog, backend=cfg.backend, cache_dir=cfg.hf.cache_dir,
                                     max_lora_rank=cfg.vllm.max_lora_rank,
                                     trust_remote_code=cfg.hf.trust_remote_code, warn=warn))
    if not problems:
        return catalog
    names = {p: catalog.specialist_name(p) if p in PHASES else f"specialists[{shown(p)}]" for p in problems}
    lines = [f"{names[p]}: {why}" for p, why in sorted(problems.items())]
    left = [p for p in catalog.specialists if p not in problems]
    total = len(left) + len(problems)
    if cfg.on_bad_specialist == "fail":
        raise CatalogError(f"registry {catalog.registry}: {len(problems)} of {total} specialists cannot be served:\n  "
                           + "\n  ".join(lines) + "\n(fix or re-register them, serve the others with phases=[...], "
                           "or set on_bad_specialist=skip to serve the rest)")
    if not left:
        raise CatalogError(f"registry {catalog.registry}: none of its {total} specialists can be served:\n  "
                           + "\n  ".join(lines))
    if warn:
        for line in lines:
            warn(f"not serving {line}")
    return catalog.without(set(problems), {names[p]: why for p, why in problems.items()})


def load_checked(cfg: ServeConfig, warn: Callable[[str], None] | None = None) -> Catalog:
    """The registry of ``cfg`` loaded and checked (:func:`check_catalog`): every problem of every entry at once."""
    found: dict[str, str] = {}
    catalog = load_catalog(cfg.registry, prefix=cfg.names.prefix, base_name=cfg.names.base, phases=cfg.phases,
                           problems=found)
    return check_catalog(cfg, catalog, found=found, warn=warn)


def preflight(cfg: ServeConfig, warn: Callable[[str], None] | None = None) -> ServeConfig:
    """The serve job's check before Ray starts: a :class:`ConfigError` (exit 2) naming each bad specialist, or
    (``on_bad_specialist: skip``) ``cfg`` narrowed to the good ones, carrying the skipped ones for the application
    to report."""
    from chipforge.config import ConfigError

    try:
        catalog = load_checked(cfg, warn)
    except CatalogError as exc:
        raise ConfigError(str(exc)) from None
    if not catalog.skipped:
        return cfg
    return cfg.model_copy(update={"phases": sorted(catalog.specialists),
                                  "skipped_specialists": {**cfg.skipped_specialists, **catalog.skipped}})
