"""Serving: every registered specialist behind one OpenAI-compatible endpoint (Ray Serve), and exports.

- ``config``: ``ServeConfig`` (the serve job's config and the Serve application's ``args``).
- ``catalog``: the specialist registry → model names, base models, adapters.
- ``protocol``: OpenAI request validation, response bodies, server-sent events (no Ray, no torch).
- ``engine``: the ``hf`` backend's engine (transformers + PEFT multi-adapter, continuous batching).
- ``router``: the triage router behind the ``chipforge`` model.
- ``app``: the Ray Serve application (``serving.app:build_app``): ingress + model servers.
- ``vllm``: the ``vllm`` backend through Ray Serve LLM (vLLM imported only when it is built).
- ``export``: merged Hugging Face models and Ollama Modelfiles.
- ``tiny``: a tiny base model with LoRA specialists and a registry, built in-process (tests, bench).
"""
