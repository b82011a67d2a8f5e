"""Synthetic examples for thin phases, validated by EDA tools before anything is kept.

``templates`` (versioned prompts per phase and task) → an engine from ``engines`` (configs and
plain in-process engines: transformers ``generate`` and an OpenAI-compatible HTTP client; vLLM
is described there and run through Ray) → ``parsing`` (strict JSON answers) → ``validate``
(iverilog / verilator / vvp / yosys / tclsh, each through ``sandbox``). ``seeds`` turns doc
chunks, module records and topics into prompt rows. Nothing in this package imports Ray:
``pipelines/synthesis.py`` composes it into the job (``python -m jobs.synthesize``), and
evaluation and serving can share the engines.
"""
