#!/usr/bin/env bash
# Build .gpu/gpusite.tar.xz: what a study through Ray needs on a GPU machine that has torch, triton, pyarrow,
# pandas, matplotlib, ... but no Ray, Polars, tyro (Python 3.12, x86-64, no network), 52 MB; and
# .gpu/mnist_u8.npz.xz, MNIST's pixels (9.2 MB; benchmarks/gpu_mnist.py). Together with the checkout they fit
# the 64 MiB a device call may carry; there:
#     mkdir -p /root/site && tar -C /root/site -xJf .gpu/gpusite.tar.xz && export PYTHONPATH=/root/site
#     python3 benchmarks/gpu_mnist.py unpack /root/site .gpu/mnist_u8.npz.xz
# (benchmarks/gpu_queue.sh does both and runs the RESULTS.md runs by name within a deadline.)
# zstandard (S3's .zst corpora only) is left out to make room for MNIST.
# Ray is trimmed to what a local cluster, Tune and Data use (no Java jars, dashboard web client, RLlib,
# Serve, LLM) and its three binaries are stripped; Polars' runtime library is stripped. faiss is left out
# (use --retriever torch). Takes a few minutes (xz -9).
set -euo pipefail
cd "$(dirname "$0")/.."
pip=${PIP:-.venv/bin/pip}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platform=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$pip" download -q "${platform[@]}" -d "$work/wheels" ray==2.60.0 polars==2.1.0 polars-runtime-32==2.1.0 \
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 pydantic==2.14.4 \
  pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 dill==0.4.1 wcwidth==0.9.4 \
  tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1
mkdir -p "$work/site"
for w in "$work"/wheels/*.whl; do unzip -q -o "$w" -d "$work/site"; done
rm -rf "$work"/site/ray/jars "$work"/site/ray/dashboard/client/build "$work"/site/ray/rllib "$work"/site/ray/serve \
  "$work"/site/ray/llm
strip --strip-unneeded "$work"/site/ray/_raylet.so "$work"/site/ray/core/src/ray/gcs/gcs_server \
  "$work"/site/ray/core/src/ray/raylet/raylet "$work"/site/_polars_runtime_32/_polars_runtime.abi3.so
mkdir -p .gpu
tar -C "$work/site" -cf - . | xz -T0 -9 > .gpu/gpusite.tar.xz
"$(dirname "$pip")/python" benchmarks/gpu_mnist.py pack .gpu/mnist_u8.npz.xz
ls -la .gpu/gpusite.tar.xz .gpu/mnist_u8.npz.xz
