"""Exports of registered specialists: a merged Hugging Face model, or an Ollama Modelfile + adapter.

- ``merged``: the adapter merged into the base (PEFT ``merge_and_unload``) and saved with the
  tokenizer in Hugging Face layout (``config.json``, ``model.safetensors``, tokenizer files,
  chat template): loadable by ``AutoModelForCausalLM.from_pretrained`` and by vLLM.
- ``ollama``: per specialist a directory with a ``Modelfile`` and ``adapter/`` (the LoRA in
  safetensors). ``FROM`` is the base (an Ollama model name or path from the config, else the base
  saved once in safetensors to ``OUTPUT/base``), ``ADAPTER ./adapter``, ``SYSTEM`` the phase's
  system prompt, ``TEMPLATE`` the tokenizer's chat template translated to Ollama's Go template
  (only when the translation renders conversations exactly as the Jinja template does),
  ``PARAMETER`` temperature, context length and stop tokens, ``LICENSE`` from the licences of
  the examples of the train split the specialist was trained on. Relative paths in a Modelfile are resolved
  against its directory by ``ollama create``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chipforge import fs
from chipforge.config import ConfigError
from chipforge.job import JobError
from chipforge.vocab import SYSTEM_PROMPTS
from serving.adapters import LINE_BREAK, adapter_problem, entry_problems
from serving.catalog import Catalog, Specialist, localize, shown


# --------------------------------------------------------------------------- chat template → Go template

@dataclass(frozen=True)
class TemplateParts:
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str  # also the generation prompt
    assistant_suffix: str
    bos: str = ""

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """What the Go template below produces (used to check the translation)."""
        out = []
        for i, m in enumerate(messages):
            last = i == len(messages) - 1
            if m["role"] == "system":
                out.append(self.system_prefix + m["content"] + self.system_suffix)
            elif m["role"] == "user":
                out.append(self.user_prefix + m["content"] + self.user_suffix)
                if last and add_generation_prompt:
                    out.append(self.assistant_prefix)
            elif m["role"] == "assistant":
                out.append(self.assistant_prefix + m["content"] + ("" if last else self.assistant_suffix))
        return "".join(out)

    def go_template(self) -> str:
        return ('{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
                '{{ if eq .Role "system" }}' + self.system_prefix + '{{ .Content }}' + self.system_suffix +
                '{{ else if eq .Role "user" }}' + self.user_prefix + '{{ .Content }}' + self.user_suffix +
                '{{ if $last }}' + self.assistant_prefix + '{{ end }}'
                '{{ else if eq .Role "assistant" }}' + self.assistant_prefix + '{{ .Content }}'
                '{{ if not $last }}' + self.assistant_suffix + '{{ end }}{{ end }}{{ end }}')


def _between(text: str, before: str | None, after: str | None) -> str | None:
    start = 0 if before is None else text.find(before)
    if start < 0:
        return None
    start = 0 if before is None else start + len(before)
    if after is None:
        return text[start:]
    end = text.find(after, start)
    return None if end < 0 else text[start:end]


def template_parts(tokenizer: Any) -> TemplateParts | None:
    """Prefixes/suffixes of each role read off the Jinja template by rendering sentinel messages,
    or None when the template cannot be expressed that way (checked on multi-turn conversations)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    S, U, A = "SYSQXZ1", "USRQXZ2", "ASTQXZ3"

    def render(msgs: list[dict[str, str]], gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    try:
        u_gen = render([{"role": "user", "content": U}], True)
        u_only = render([{"role": "user", "content": U}], False)
        ua = render([{"role": "user", "content": U}, {"role": "assistant", "content": A}], False)
        su = render([{"role": "system", "content": S}, {"role": "user", "content": U}], False)
    except Exception:  # noqa: BLE001 - a template that rejects these conversations
        return None
    bos = tokenizer.bos_token or ""
    lead = u_only[:u_only.find(U)]
    if bos and not lead.startswith(bos):
        bos = ""
    user_prefix = lead[len(bos):]
    user_suffix = _between(u_only, U, None)
    gen_tail = _between(u_gen, U, None)
    sys_lead = su[:su.find(S)] if S in su else None
    if user_suffix is None or gen_tail is None or sys_lead is None or not gen_tail.startswith(user_suffix):
        return None
    assistant_prefix = gen_tail[len(user_suffix):]
    system_prefix = sys_lead[len(bos):] if sys_lead.startswith(bos) else None
    mid = _between(su, S, U)
    if system_prefix is None or mid is None or not mid.endswith(user_prefix):
        return None
    system_suffix = mid[:len(mid) - len(user_prefix)] if user_prefix else mid
    assistant_suffix = _between(ua, A, None)
    if assistant_suffix is None:
        return None
    parts = TemplateParts(system_prefix, system_suffix, user_prefix, user_suffix, assistant_prefix, assistant_suffix,
                          bos)
    checks = [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "hello"}, {"role": "user", "content": "timing?"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
    ]
    for msgs in checks:
        try:
            want = render(msgs, True)
        except Exception:  # noqa: BLE001
            return None
        if want != bos + parts.render(msgs, True):
            return None
    literal = "".join([system_prefix, system_suffix, user_prefix, user_suffix, assistant_prefix, assistant_suffix])
    if "{{" in literal or '"""' in literal:
        return None
    return parts


# --------------------------------------------------------------------------- licences

def training_licences(entry: dict[str, Any], phase: str) -> tuple[Counter[str], list[str]]:
    """(licence → examples, dataset dirs read) over the phase's train split (the split the adapter
    was trained on; validation and test examples are not counted) in the dataset(s) of the registry
    entry (``config.dataset_dir`` and ``config.extra_dataset_dirs``)."""
    import pyarrow.parquet as pq

    from training.data import parquet_files

    cfg = entry.get("config") or {}
    dirs = [d for d in [cfg.get("dataset_dir"), *(cfg.get("extra_dataset_dirs") or [])] if isinstance(d, str) and d]
    counts: Counter[str] = Counter()
    read = []
    for d in dirs:
        if not fs.exists(d):
            continue
        read.append(d)
        for path in parquet_files(d, phase, "train"):
            filesystem, inside = fs.resolve(path)
            with filesystem.open_input_file(inside) as f:
                table = pq.read_table(f, columns=["license"])
            counts.update(x or "unknown" for x in table.column("license").to_pylist())
    return counts, read


def trained_examples(entry: dict[str, Any], phase: str) -> int | None:
    """How many examples the adapter was trained on: ``examples.train`` of the training report
    (``report.json`` beside the adapter directory, written by jobs.finetune / jobs.tune), or None
    when that report is missing or belongs to another run."""
    adapter = entry.get("adapter_path")
    if not isinstance(adapter, str) or not adapter:
        return None
    head, _, _ = adapter.rstrip("/").rpartition("/")
    path = fs.join(head or ".", "report.json")  # local paths and URIs alike
    try:
        report = fs.read_json(path) if fs.exists(path) else None
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("phase") != phase or report.get("adapter_path") != adapter:
        return None
    registered = report.get("registry_entry")
    if isinstance(registered, dict) and entry.get("registered_at") and \
            registered.get("registered_at") != entry.get("registered_at"):
        return None
    n = (report.get("examples") or {}).get("train")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def licence_text(s: Specialist, counts: Counter[str], read: list[str], trained: int | None = None) -> str:
    """``counts``: licences of the train split's examples; ``trained``: how many of them the adapter
    was trained on (from the training report; None: unknown)."""
    lines = [f"{s.name} is a LoRA adapter for {s.base_model}; the base model's own licence applies to it."]
    if counts:
        total = sum(counts.values())
        if trained == total:
            lines.append(f"It was fine-tuned on {total} examples derived from sources under these licences "
                         "(SPDX id: examples):")
        elif trained is not None and trained < total:
            lines.append(f"It was fine-tuned on {trained} examples drawn from the dataset's train split (the rest "
                         f"were held out for validation, rejected or over max_train_examples); the {total} examples "
                         "of that split derive from sources under these licences (SPDX id: examples):")
        elif trained is not None:
            lines.append(f"It was fine-tuned on {trained} examples; the {total} examples of the dataset's train split "
                         "found for this export derive from sources under these licences (SPDX id: examples):")
        else:
            lines.append(f"It was fine-tuned on the dataset's train split: {total} examples derived from sources "
                         "under these licences (SPDX id: examples):")
        lines += [f"  {lic}: {n}" for lic, n in counts.most_common()]
        lines.append("Each source's terms apply to the material derived from it; see the dataset's provenance "
                     f"columns ({', '.join(read)}).")
    else:
        lines.append("The licences of its training data are unknown: the dataset it was trained on was not "
                     "available when this export was made.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- exports

def _load_base(base: str, dtype: str, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serving.engine import resolve_dtype
    from training.tiny import quiet_hf

    with quiet_hf():
        tok = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code)
        kw = {"dtype": "auto" if dtype == "auto" else resolve_dtype(dtype, "cpu")}
        model = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=trust_remote_code, **kw)
    return model, tok


def export_merged(s: Specialist, out_dir: str, *, dtype: str = "auto", cache_dir: str = "~/.cache/chipforge/serving",
                  trust_remote_code: bool = False) -> dict[str, Any]:
    """``out_dir``: the base with ``s``'s adapter merged in, and the tokenizer (Hugging Face layout)."""
    from peft import PeftModel

    from serving.engine import peft_quiet
    from training.tiny import quiet_hf

    base = localize(s.base_model, cache_dir)
    model, tok = _load_base(base, dtype, trust_remote_code)
    adapter = localize(s.adapter_path, cache_dir)
    _check_adapter(s, model, adapter, s.base_model)
    try:
        with peft_quiet():  # PEFT's own use of a deprecated transformers alias (see serving.engine.peft_quiet)
            merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (ValueError, RuntimeError, KeyError, OSError) as exc:  # PEFT's checks: a clear, one-line error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JobError(f"{s.name}: adapter {s.adapter_path} cannot be merged into base {s.base_model}: "
                       f"{type(exc).__name__}: {first[:500]}") from exc
    local = out_dir if not fs.is_uri(out_dir) else None
    tmp_root = local or os.path.join(os.path.expanduser(cache_dir), "export-tmp")
    with fs.atomic_dir(local) if local else _tempdir(tmp_root) as tmp:
        with quiet_hf():
            merged.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "chipforge.json"), "w") as f:
            json.dump({"name": s.name, "phase": s.phase, "base_model": s.base_model, "adapter_path": s.adapter_path,
                       "metrics": s.metrics, "registered_at": s.registered_at, "format": "merged"}, f, indent=2)
        if not local:
            _upload(tmp, out_dir)
    return {"name": s.name, "phase": s.phase, "path": out_dir, "format": "merged"}


class _tempdir:
    def __init__(self, root: str) -> None:
        import tempfile

        os.makedirs(root, exist_ok=True)
        self.path = tempfile.mkdtemp(dir=root)

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _upload(local_dir: str, dest: str) -> None:
    """Copy ``local_dir`` to ``dest`` on an object store, each file streamed in 16 MiB chunks (pyarrow's
    ``copy_files``): a merged model's shard can be tens of GB, more than this process's memory. Each object
    appears whole when its multipart upload completes; the job's completion marker, written after, says the
    directory is complete."""
    import pyarrow.fs as pafs

    filesystem, path = fs.resolve(dest)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem,
                    chunk_size=16 * 1024**2, use_threads=True)


def _check_adapter(s: Specialist, model: Any, adapter_dir: str, base: str) -> None:
    problem = adapter_problem(model, adapter_dir)
    if problem:
        raise JobError(f"{s.name}: adapter {s.adapter_path} does not fit base {base}: {problem}")


def _adapter_files(src: str, dest: str) -> None:
    """The adapter's config and weights in safetensors (converted from adapter_model.bin if needed)."""
    os.makedirs(dest, exist_ok=True)
    shutil.copy2(os.path.join(src, "adapter_config.json"), os.path.join(dest, "adapter_config.json"))
    st = os.path.join(src, "adapter_model.safetensors")
    if os.path.exists(st):
        shutil.copy2(st, os.path.join(dest, "adapter_model.safetensors"))
        return
    import torch
    from safetensors.torch import save_file

    state = torch.load(os.path.join(src, "adapter_model.bin"), map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(dest, "adapter_model.safetensors"))


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('text contains """ and cannot be quoted in a Modelfile')
    return '"""' + text + '"""'


def _one_line(text: str) -> str:
    """A Modelfile argument outside triple quotes: a line break would start another instruction."""
    if LINE_BREAK.search(text):
        raise ValueError(f"{text!r} contains a line break and cannot be written on one Modelfile line")
    return text


def modelfile(s: Specialist, *, base_ref: str, adapter_ref: str, template: str | None, system: str | None,
              temperature: float, num_ctx: int, stops: list[str], licence: str,
              extra: dict[str, Any] | None = None, note: str | None = None) -> str:
    for text in (s.name, s.phase, s.base_model, base_ref, adapter_ref, note or "",
                 *(f"{k} {v}" for k, v in (extra or {}).items())):
        _one_line(text)
    lines = [f"# {s.name}: the {s.phase} specialist (LoRA adapter) on {s.base_model}",
             f"# ollama create {s.name} -f Modelfile      (relative paths are resolved from this directory)",
             f"FROM {base_ref}", f"ADAPTER {adapter_ref}"]
    if template is not None:
        lines.append(f"TEMPLATE {_quote(template)}")
    else:
        lines.append(f"# TEMPLATE: {note or 'the chat template could not be translated'}; Ollama uses the base's")
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER num_ctx {num_ctx}"]
    lines += [f"PARAMETER stop {json.dumps(t)}" for t in stops]
    for k, v in (extra or {}).items():
        lines.append(f"PARAMETER {k} {v}")
    lines.append(f"LICENSE {_quote(licence)}")
    return "\n".join(lines) + "\n"


BASE_MARKER = "chipforge-base.json"  # in OUTPUT/base: which base was saved there


def base_identity(path: str) -> str:
    """What identifies a base's weights without reading them: the relative path, size and mtime of
    every file of a local directory (a hub id or other name stands for itself)."""
    if not os.path.isdir(path):
        return path
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            h.update(f"{os.path.relpath(os.path.join(root, name), path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "files:" + h.hexdigest()


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def export_ollama(specialists: list[Specialist], entries: dict[str, dict[str, Any]], out_dir: str, *,
                  base_ref: str | None, temperature: float, num_ctx: int | None, extra: dict[str, Any],
                  cache_dir: str = "~/.cache/chipforge/serving", trust_remote_code: bool = False) -> list[dict[str, Any]]:
    """Per specialist ``out_dir/<name>/{Modelfile,adapter/}``; the base once in ``out_dir/base`` unless
    ``base_ref`` names it; ``out_dir/README.md`` with the ``ollama create`` commands."""
    from serving.engine import stop_tokens
    from training.tiny import quiet_hf

    if fs.is_uri(out_dir):
        raise ValueError("the ollama export writes a local directory (ollama create reads local files)")
    check_parameters(extra)
    if base_ref is not None and (LINE_BREAK.search(base_ref) or not base_ref.strip()):
        raise ConfigError(f"ollama.base: {base_ref!r} must be one line naming an Ollama model or a path")
    out_dir = os.path.expanduser(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    results = []
    by_base: dict[str, tuple[Any, Any]] = {}
    for s in specialists:
        base_local = localize(s.base_model, cache_dir)
        if base_local not in by_base:
            by_base[base_local] = _load_base(base_local, "auto", trust_remote_code)
        model, tok = by_base[base_local]
        if base_ref is not None:
            from_ref = base_ref
        else:
            base_dir = os.path.join(out_dir, "base" if len(by_base) == 1 else f"base-{len(by_base)}")
            saved_from = {"base_model": base_local, "identity": base_identity(base_local)}
            if _read_json(os.path.join(base_dir, BASE_MARKER)) != saved_from:  # missing, or another base's
                with fs.atomic_dir(base_dir) as tmp, quiet_hf():
                    model.save_pretrained(tmp, safe_serialization=True)
                    tok.save_pretrained(tmp)
                    with open(os.path.join(tmp, BASE_MARKER), "w") as f:
                        json.dump(saved_from, f, indent=2)
            from_ref = "../" + os.path.basename(base_dir)
        parts = template_parts(tok)
        ctx = getattr(model.config, "max_position_embeddings", None) or 2048
        ctx = min(ctx, num_ctx) if num_ctx else ctx
        _, stops = stop_tokens(tok, model.generation_config)
        entry = entries.get(s.phase, {})
        counts, read = training_licences(entry, s.phase)
        trained = trained_examples(entry, s.phase)
        dest = os.path.join(out_dir, s.name)
        adapter = localize(s.adapter_path, cache_dir)
        _check_adapter(s, model, adapter, s.base_model)
        with fs.atomic_dir(dest) as tmp:
            _adapter_files(adapter, os.path.join(tmp, "adapter"))
            text = modelfile(s, base_ref=from_ref, adapter_ref="./adapter",
                             template=parts.go_template() if parts else None, system=SYSTEM_PROMPTS.get(s.phase),
                             temperature=temperature, num_ctx=ctx, stops=stops,
                             licence=licence_text(s, counts, read, trained), extra=extra,
                             note=None if getattr(tok, "chat_template", None) else "the tokenizer has no chat template")
            with open(os.path.join(tmp, "Modelfile"), "w") as f:
                f.write(text)
        results.append({"name": s.name, "phase": s.phase, "path": dest, "format": "ollama", "from": from_ref,
                        "template": parts is not None, "licences": dict(counts),
                        "trained_examples": trained})
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(ollama_readme(out_dir, [r["name"] for r in results]))
    return results


def ollama_readme(out_dir: str, names: Sequence[str]) -> str:
    """``out_dir/README.md``: the ``ollama create`` commands with absolute Modelfile paths (they work
    from any directory; ``ollama create`` resolves a Modelfile's relative FROM/ADAPTER paths against
    the Modelfile's own directory), and the same commands relative to ``out_dir`` for a moved copy."""
    root = os.path.abspath(os.path.expanduser(out_dir))
    lines = ["# chipforge specialists for Ollama", "",
             "Create each model (these commands work from any directory; relative paths inside a Modelfile "
             "are resolved against the Modelfile's own directory):", ""]
    lines += [f"    ollama create {shlex.quote(n)} -f {shlex.quote(os.path.join(root, n, 'Modelfile'))}" for n in names]
    if names:
        lines += ["", "If this directory has been moved or copied elsewhere, run them from the directory that holds "
                  "this README instead:", "", "    cd <the directory of this README>"]
        lines += [f"    ollama create {shlex.quote(n)} -f {shlex.quote(os.path.join(n, 'Modelfile'))}" for n in names]
        lines += ["", f"then `ollama run {names[0]}`."]
    return "\n".join(lines) + "\n"


PARAMETER_NAME = re.compile(r"[a-z][a-z0-9_]*")


def select(catalog: Catalog, phase: str) -> list[Specialist]:
    """The specialists to export, checked first (``ConfigError`` naming the registry entry).

    The registry is a file a person can edit: an entry under a key that is not a phase (``../x``,
    a key with a line break or quotes) would otherwise become a path outside OUTPUT, which the
    export replaces (``fs.atomic_dir`` deletes what is there), extra lines in a Modelfile
    (``FROM``/``ADAPTER``/``SYSTEM`` injected through the name or the base model) or a shell
    command in the README; a name Ollama refuses would only fail at ``ollama create``.
    """
    chosen = list(catalog.specialists.values()) if phase == "all" else [catalog.specialists[phase]]
    problems = []
    for s in chosen:
        where = f"registry {catalog.registry}: specialists[{shown(s.phase)}]"
        problems += [f"{where}: {p}" for p in entry_problems(s.phase, s.name, s.base_model, s.adapter_path)]
    if problems:
        raise ConfigError("cannot export:\n  " + "\n  ".join(problems))
    return chosen


def check_parameters(extra: dict[str, Any]) -> None:
    """``ollama.parameters``: each a ``PARAMETER name value`` line of its own (``ConfigError`` otherwise)."""
    bad = [f"{k!r}: {v!r}" for k, v in extra.items()
           if not PARAMETER_NAME.fullmatch(str(k)) or LINE_BREAK.search(str(v)) or not str(v).strip()]
    if bad:
        raise ConfigError("ollama.parameters: each entry must be a lower-case name and a one-line value; "
                          f"bad: {', '.join(bad)}")
