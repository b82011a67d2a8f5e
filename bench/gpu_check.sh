#!/usr/bin/env bash
# The prepared device check (issue 12): one script for a single-GPU machine with torch, transformers
# and peft but no network and no Ray (../shared/notes/gpu.md). Run from the repository root, with
# the wheels it lacks carried in .whl/ (git-ignored; `bash bench/gpu_wheels.sh` builds it here in ~30 s):
#   run tool: command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 600 (it stops itself by about 580 s)
# Writes $OUT/train_gpu.json (default bench/results/) after every configuration, so a run cut
# short still reports what it measured. PLAN=full for every configuration (longer than 10 min).
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
# 1. the GPU tests (marker gpu): packed examples kept apart on the GPU kernels in bf16, Liger's loss
#    against the unfused one, torch_varlen's and fused LoRA's loss and gradients against sdpa's and PEFT's
timeout 90 python -m pytest -q -rA -m gpu -p no:cacheprovider -o addopts="" tests/training/test_fused_lora.py \
    tests/training/test_attention.py tests/training/test_packing.py > "$OUT/gpu_packing_tests.txt" 2>&1 || true
grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$OUT/gpu_packing_tests.txt" | tail -16 || true
# torch_varlen and fused LoRA only where their GPU tests passed here (a failure, an error or a
# timeout falls back to sdpa and to PEFT's own LoRA forward, so one broken path cannot cost the slot)
passed() { grep -q "^PASSED.*$1" "$OUT/gpu_packing_tests.txt" && ! grep -qE "^(FAILED|ERROR).*$1" "$OUT/gpu_packing_tests.txt"; }
if [ "$PLAN" = quick ] && ! passed test_varlen_kernel_on_gpu; then
    PLAN=quick-sdpa; echo "torch_varlen did not pass its GPU test: PLAN=$PLAN"
fi
FUSED=auto
if ! passed test_fused_lora_on_gpu; then
    FUSED=off; echo "fused_lora did not pass its GPU test: --gpu-fused-lora off"
fi
# 2. fused_lora against PEFT's LoRA forward (dropout 0 and 0.05), one 1.1B step alternated in one process
timeout 60 python bench/train.py --lora-step --lora-device cuda --lora-repeats 4 \
    --results "$OUT/train_gpu_lora.json" || true
# 3. the benchmark: project vs plain loop, ~1B and ~8B, each configuration in a fresh process
timeout 420 python bench/train.py --gpu --gpu-plan "$PLAN" --gpu-fused-lora "$FUSED" \
    --gpu-results "$OUT/train_gpu.json" --gpu-run-timeout 150
