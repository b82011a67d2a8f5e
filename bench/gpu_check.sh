#!/usr/bin/env bash
# The prepared device check (issue 12): one script for a single-GPU machine with torch, transformers
# and peft but no network and no Ray (../shared/notes/gpu.md). Run from the repository root, with
# the wheels it lacks carried in .whl/ (git-ignored; how to build them: at the end of this comment):
#   run tool: command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 600 (it stops itself by 560 s)
# Writes $OUT/train_gpu.json (default bench/results/) after every configuration, so a run cut
# short still reports what it measured. PLAN=full for every configuration (longer than 10 min).
#
# Building .whl/ on a machine with PyPI (Python 3.12 wheels for the GPU machine):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-inspection typing-extensions hjson msgpack \
#     py-cpuinfo einops pytest pluggy iniconfig pytest-timeout packaging liger-kernel==0.8.5
#   pip download --no-deps --no-binary=:all: deepspeed==0.19.8 -d /tmp/ds && tar xzf /tmp/ds/deepspeed-0.19.8.tar.gz -C /tmp/ds
#   DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation -w .whl /tmp/ds/deepspeed-0.19.8
set -euo pipefail
OUT=${OUT:-bench/results}
PLAN=${PLAN:-quick}
DEPS=$(mktemp -d)
python -m pip install -q --no-index --no-deps --target "$DEPS" .whl/*.whl
export PYTHONPATH="$DEPS:$PWD" DS_BUILD_OPS=0 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers, peft, deepspeed; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'deepspeed', deepspeed.__version__)"
mkdir -p "$OUT"
# 1. packed examples kept apart on the GPU kernels, in bf16, Liger's loss against the unfused one and
#    torch_varlen's loss and gradients against sdpa (with the CPU tests of both files beside them)
timeout 90 python -m pytest -q -p no:cacheprovider -o addopts="" tests/training/test_packing.py \
    tests/training/test_attention.py 2>&1 | tail -8 \
    | tee "$OUT/gpu_packing_tests.txt" || true
# 2. the benchmark: project vs plain loop, ~1B and ~8B, each configuration in a fresh process
timeout 460 python bench/train.py --gpu --gpu-plan "$PLAN" --gpu-results "$OUT/train_gpu.json" --gpu-run-timeout 150
