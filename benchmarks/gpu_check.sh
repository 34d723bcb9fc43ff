#!/usr/bin/env bash
# The GPU check anyone can run on one CUDA GPU (about 10 minutes):
#   benchmarks/gpu_check.sh            # figures also written to gpu_check/*.json
# 1. the GPU-marked tests; 2. the CuPy correlation engine (float path, and the
# integer path on the int8 tensor cores) against NumPy (same indices, |Δr|) and
# against a cuBLAS float32 matrix product of the same shapes; 2b. the int8
# products alone against cuBLAS float32 (issue 20: goal >= 4×, exact);
# 3. both models trained a few steps and sampled at paper shapes in bf16, with
# images/s, the diffusion loop against a plain diffusers training loop
# (what diffusers' train_unconditional example does) of the same model and batch.
# CuPy must be installed (pip install -e ".[gpu]"); nothing is downloaded here.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
out="${GPU_CHECK_OUT:-gpu_check}"
mkdir -p "$out"
status=0
nvidia-smi -L || { echo "gpu_check: no NVIDIA GPU visible (nvidia-smi failed)"; exit 1; }
"$PY" -c 'import cupy' 2>/dev/null || echo "gpu_check: CuPy is not installed (pip install -e \".[gpu]\"): the CuPy rows are skipped"

echo "== 1. GPU-marked tests"
"$PY" -m pytest -q -m gpu -p no:cacheprovider || status=1

echo "== 2. correlation engine: CuPy (float and integer path) vs NumPy vs cuBLAS float32 (2000 × 8000 images of 256², exact values)"
"$PY" benchmarks/bench_correlation.py --no-faiss --repeats 2 --json "$out/correlation.json" || status=1

echo "== 2b. the integer path's products: int8 tensor cores (torch._int_mm) vs cuBLAS float32, same shapes (goal >= 4×, exact)"
"$PY" benchmarks/gpu_integer.py --json "$out/integer.json" || status=1

echo "== 3. training and sampling at paper shapes (bf16)"
"$PY" benchmarks/gpu_models.py --json "$out/models.json" || status=1

echo "gpu_check: figures in $out/ (exit status $status)"
exit $status
