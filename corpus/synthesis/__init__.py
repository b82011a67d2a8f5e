"""Synthetic examples for thin phases, validated by EDA tools before anything is kept.

``templates`` (versioned prompts per phase and task) → an engine from ``engines`` (vLLM,
OpenAI-compatible HTTP, or transformers) → ``parsing`` (strict JSON answers) → ``validate``
(iverilog / verilator / vvp / yosys / tclsh, each through ``sandbox``). ``seeds`` turns doc
chunks, module records and topics into prompt rows. ``jobs/synthesize.py`` runs the rounds.
"""
