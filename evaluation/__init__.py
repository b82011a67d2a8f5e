"""Evaluation of the specialists against their base models (``python -m jobs.evaluate``).

``benchmarks`` (VerilogEval v2 / RTLLM layouts, prompts, answer extraction) and ``smoke`` →
``prompts`` (one row per prompt and model, the same prompt and sampling for every model) →
``models`` (which models, and the engines: transformers + PEFT, vLLM with LoRA requests,
OpenAI-compatible) → ``checks`` (one verdict per row; simulations through ``simulate``, each in
the bubblewrap sandbox of ``synthesis.sandbox``) → ``metrics`` (pass@k, ROUGE-L, chrF,
perplexity, routing) → ``report`` (aggregation, specialist vs base, summary), ``html``
(report.html) and ``registry`` (metrics into the specialist registry). ``smoke`` and
``data/`` hold the users' acceptance prompts. Nothing here runs a Ray stage: ``models`` only
builds the ``ray.data.llm`` processors, ``pipelines/evaluate.py`` composes everything into the job.
"""
