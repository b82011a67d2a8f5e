"""Evaluation of the specialists against their base models (``python -m jobs.evaluate``).

``benchmarks`` (VerilogEval v2 / RTLLM layouts, prompts, answer extraction) → ``models`` (which
models, and the engines: transformers + PEFT, vLLM with LoRA requests, OpenAI-compatible) →
``checks`` (one verdict per row; simulations through ``simulate``, each in the bubblewrap
sandbox of ``synthesis.sandbox``) → ``metrics`` (pass@k, ROUGE-L, chrF, perplexity, routing) →
``html`` (report.html) and ``registry`` (metrics into the specialist registry). ``smoke`` and
``data/`` hold the users' acceptance prompts. Nothing in this package starts Ray:
``pipelines/evaluate.py`` composes it into the job.
"""
