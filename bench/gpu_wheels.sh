#!/usr/bin/env bash
# Builds .whl/ (git-ignored): the Python 3.12 wheels that bench/gpu_check.sh installs on the GPU machine,
# which has torch, transformers and peft but no network (../shared/notes/gpu.md). Run here, from the
# repository root, on a machine with PyPI; then call the device tool with carry [".whl"].
set -euo pipefail
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-inspection typing-extensions hjson msgpack \
    py-cpuinfo einops pytest pluggy iniconfig pytest-timeout packaging liger-kernel==0.8.5
if ! ls .whl/deepspeed-0.19.8-*.whl >/dev/null 2>&1; then  # no wheel on PyPI: a pure-Python one from the sdist
    tmp=$(mktemp -d)
    python -m pip download -q --no-deps --no-binary=:all: deepspeed==0.19.8 -d "$tmp"
    tar xzf "$tmp"/deepspeed-0.19.8.tar.gz -C "$tmp"
    DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w .whl "$tmp"/deepspeed-0.19.8
    rm -rf "$tmp"
fi
ls .whl
du -sh .whl
