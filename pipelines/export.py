"""Export registered specialists: merged Hugging Face models, or Ollama Modelfiles with their adapters.

    python -m jobs.export --registry out/quickstart/registry.json --phase all --format merged --output out/merged
    python -m jobs.export --registry out/quickstart/registry.json --phase rtl_design --format ollama --output out/ollama

``merged``: OUTPUT/<name>/ holds the base with the adapter merged in (PEFT ``merge_and_unload``)
and the tokenizer, in Hugging Face layout: ``AutoModelForCausalLM.from_pretrained(OUTPUT/<name>)``
and ``vllm serve OUTPUT/<name>`` load it. ``ollama``: OUTPUT/<name>/Modelfile and
OUTPUT/<name>/adapter/ (safetensors LoRA), the base once in OUTPUT/base (unless ``ollama.base``
names an Ollama model or path), and OUTPUT/README.md with the ``ollama create`` commands (absolute
paths: they run from any directory). OUTPUT must be a local directory for ``ollama``.
<name> is ``chipforge-<phase>``. Runs on this machine (no Ray); a rerun with the same config and
registry is skipped (``--force`` redoes it).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from chipforge.config import Config, ConfigError
from chipforge.job import JobSpec, Run
from chipforge.vocab import PHASES


class OllamaSettings(Config):
    base: str | None = None  # FROM: an Ollama model name or path; None: the base saved to OUTPUT/base
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    num_ctx: int | None = Field(None, ge=16)  # None: the base model's context length
    parameters: dict[str, Any] = Field(default_factory=dict)  # more PARAMETER lines (top_p: 0.9, ...)


class ExportConfig(Config):
    registry: str = "out/quickstart/registry.json"
    phase: str = "all"  # a phase with a registered specialist, or all
    format: Literal["merged", "ollama"] = "merged"
    output_dir: str = "out/export"
    prefix: str = "chipforge"  # exported names are <prefix>-<phase>
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # merged weights (auto: the base's)
    cache_dir: str = "~/.cache/chipforge/serving"  # adapters/bases on s3:// or gs:// are copied here first
    trust_remote_code: bool = False
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)

    @field_validator("phase")
    @classmethod
    def _phase(cls, v: str) -> str:
        if v != "all" and v not in PHASES:
            raise ValueError(f"must be 'all' or one of {', '.join(PHASES)}")
        return v

    @field_validator("output_dir")
    @classmethod
    def _ollama_is_local(cls, v: str, info: ValidationInfo) -> str:
        from chipforge import fs

        if info.data.get("format") == "ollama" and fs.is_uri(v):
            raise ValueError("the ollama export writes a local directory (ollama create reads local files); "
                             "give a local path, then copy it where Ollama runs")
        return v


def run(cfg: ExportConfig, job: Run) -> dict[str, Any]:
    from chipforge import fs
    from serving.catalog import CatalogError, load_catalog
    from serving.export import export_merged, export_ollama, select
    from training import registry

    try:
        catalog = load_catalog(cfg.registry, prefix=cfg.prefix, phases=None if cfg.phase == "all" else [cfg.phase])
    except CatalogError as exc:
        raise ConfigError(f"--registry/--phase: {exc}") from exc
    specialists = select(catalog, cfg.phase)
    job.progress(f"{len(specialists)} specialist(s) from {cfg.registry}: {', '.join(s.name for s in specialists)}")
    if cfg.format == "merged":
        results = []
        for s in specialists:
            with job.step(f"merge {s.name}"):
                results.append(export_merged(s, fs.join(cfg.output_dir, s.name), dtype=cfg.dtype,
                                             cache_dir=cfg.cache_dir, trust_remote_code=cfg.trust_remote_code))
    else:
        entries = registry.load(cfg.registry)["specialists"]
        with job.step("ollama"):
            o = cfg.ollama
            results = export_ollama(specialists, entries, cfg.output_dir, base_ref=o.base, temperature=o.temperature,
                                    num_ctx=o.num_ctx, extra=o.parameters, cache_dir=cfg.cache_dir,
                                    trust_remote_code=cfg.trust_remote_code)
    return {"format": cfg.format, "exports": results, "n_exports": len(results)}


def summary(r: dict[str, Any]) -> str:
    lines = [f"{r['n_exports']} {r['format']} export(s):"]
    for e in r["exports"]:
        if e["format"] == "ollama":
            tmpl = "chat template translated" if e["template"] else "no TEMPLATE (not translatable)"
            lines.append(f"  {e['name']}: {e['path']}/Modelfile (FROM {e['from']}, {tmpl})")
            lines.append(f"    ollama create {e['name']} -f {os.path.join(os.path.abspath(e['path']), 'Modelfile')}")
        else:
            lines.append(f"  {e['name']}: {e['path']}  (AutoModelForCausalLM.from_pretrained / vllm serve)")
    return "\n".join(lines)


SPEC = JobSpec(
    name="export", config=ExportConfig, default_config="jobs/configs/export_merged.yaml", summary=summary,
    flags={"--registry": "registry", "--phase": "phase", "--format": "format", "--output": "output_dir"},
    inputs={"registry": "a specialist registry written by jobs.finetune / jobs.tune (registry=PATH); "
                      "python -m jobs.quickstart writes out/quickstart/registry.json"},
    volatile=("cache_dir",), outputs=lambda r: r["n_exports"], uses_ray=False, description=__doc__,
)
