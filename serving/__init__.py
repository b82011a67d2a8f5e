"""OpenAI-compatible serving of the specialists (LoRA adapters on one base model) behind a triage router.

Not built yet: the fine-tuning job's specialist registry (``training.registry``) is the input it will read.
"""
