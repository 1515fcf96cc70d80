#!/usr/bin/env bash
# The prepared device check: one H100-class GPU, under 10 minutes, no network, no download.
#   1. gpu_benchmark.py: bf16 training steps of the 22-block cross-attention hypernetwork at
#      Gemma-2-2B's sizes (step time, tokens/s, peak memory, MFU);
#   2. the same training step under FSDP2 (one-rank group, bf16 mixed precision over fp32 master
#      weights): step time and peak memory against step 1's plain (ddp) step;
#   3. p2_batched_inference.py on the GPU: AxBench's per-concept loop (10 rows per call) ÷ mixed
#      128-row calls, random Gemma-2-2B in bf16 (target >= 3).
# The device image has torch and transformers 5.x but not pyvene: carry its wheel in .whl/ (see
# the device tool's README) or the check falls back to the plain-hook backend and says so.
# Lines go to stdout and to $OUT (the device tool's return folder) when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
backend=pyvene
python3 -c "import pyvene" >/dev/null 2>&1 || { backend=hook; echo "gpu_check: pyvene not importable, using the hook backend"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
status=0
timeout 300 python3 benchmarks/gpu_benchmark.py --steps 20 --backend "$backend" 2>&1 \
    | tee "$out/gpu_benchmark.txt" || status=1
timeout 200 python3 benchmarks/gpu_benchmark.py --steps 10 --strategy fsdp --backend "$backend" 2>&1 \
    | tee "$out/gpu_benchmark_fsdp.txt" || status=1
timeout 240 python3 benchmarks/p2_batched_inference.py --device cuda --model 2b --reps 1 \
    --no-whole-concept --backend "$backend" 2>&1 | tee "$out/p2_gpu.txt" || status=1
exit $status
