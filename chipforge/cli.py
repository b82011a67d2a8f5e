"""``chipforge <command> [args]``: the same entry points as ``python -m jobs.<module>``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("jobs.quickstart", "run the whole pipeline locally on the bundled sample"),
    "corpus": ("jobs.build_corpus", "Verilog repositories → parsed, deduplicated modules (Parquet)"),
    "docs": ("jobs.scrape_docs", "EDA documentation → clean text chunks (Parquet)"),
    "classify-eval": ("jobs.classify_eval", "phase classifier vs keyword baseline on the labelled set"),
    "dataset": ("jobs.build_dataset", "modules + docs → per-phase instruction dataset"),
    "synthesize": ("jobs.synthesize", "LLM-written, tool-validated examples for thin phases"),
    "finetune": ("jobs.finetune", "LoRA specialist fine-tuning (Ray Train + DeepSpeed)"),
    "tune": ("jobs.tune", "Ray Tune sweep over fine-tuning hyperparameters"),
    "evaluate": ("jobs.evaluate", "every specialist against its base model on the same prompts"),
    "serve": ("jobs.serve", "OpenAI-compatible endpoint: every specialist behind a triage router"),
    "export": ("jobs.export", "merged Hugging Face weights or Ollama Modelfiles of specialists"),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: chipforge <command> [--config YAML] [options] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"chipforge: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
