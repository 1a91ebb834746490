#!/usr/bin/env bash
# BENCHMARKS.md's GPU table in one call on a lent GPU machine: tests/test_cuda.py, then throughput.py
# in bf16, eager and torch.compile, batch 256 and 64, ours vs transformers' vs timm's (inference, then
# training), README's main job, kernel profiles (profile_gpu.py), then compiled training. Runs come in
# order of importance; each gets what is left of a deadline, so a short lease still returns the first
# ones. On an H200 a compiled run takes 130-160 s (compiling three models), an eager one ~30 s.
# Everything goes to DIR (gpu.log and one JSON per run).
#
#   bash benchmarks/gpu.sh [DIR] [SECONDS]        # defaults: $OUT or ./gpu_results, 540
#
# Needs a CUDA torch, transformers (5.24.0 in BENCHMARKS.md), timm (1.0.31) with its torchvision, and for
# the recipe run `datasets`; on a machine without network bring them as wheels (pip install --no-deps).
set -u
cd "$(dirname "$0")/.."
dir=${1:-${OUT:-gpu_results}}
budget=${2:-540}
mkdir -p "$dir"
log="$dir/gpu.log"
start=$(date +%s)
export PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, transformers.__file__)'
    python3 -c 'import timm, torchvision; print("timm", timm.__version__, "torchvision", torchvision.__version__)'
    nproc
} 2>&1 | tee -a "$log"

run() {  # run NAME SCRIPT ARGS...: one run of a script of this repository, cut off at the deadline
    local name=$1 script=$2 left
    shift 2
    left=$((budget - ($(date +%s) - start)))
    if ((left < 40)); then
        echo "== $name: not run (${left}s of the deadline left)" | tee -a "$log"
        return
    fi
    echo "== $name ($((left))s left): python3 $script $*" | tee -a "$log"
    local t0=$(date +%s)
    timeout "$left" python3 "$script" "$@" 2>&1 | grep -v -i "warn" | tee -a "$log"
    echo "== $name took $(($(date +%s) - t0))s" | tee -a "$log"
}

infer=(--mode infer --dtype bf16 --threads 8 --no-memory --no-fp32-baseline --rounds 5 --iters 10)
train=(--mode train --dtype bf16 --threads 8 --no-memory --no-fp32-baseline --rounds 5 --iters 5 --agreement-batches 0)
run cuda-tests -m pytest -q -p no:cacheprovider tests/test_cuda.py  # correctness first (seconds)
run infer-b256 benchmarks/throughput.py "${infer[@]}" --batch-size 256 --agreement-batches 4 --json "$dir/infer-b256.json"
run infer-b256-compiled benchmarks/throughput.py "${infer[@]}" --batch-size 256 --agreement-batches 0 --compile --json "$dir/infer-b256-compiled.json"
run infer-b64 benchmarks/throughput.py "${infer[@]}" --batch-size 64 --agreement-batches 8 --json "$dir/infer-b64.json"
run train-b64 benchmarks/throughput.py "${train[@]}" --batch-size 64 --json "$dir/train-b64.json"
# README's main job on the GPU (bf16-mixed by default there); needs `datasets` (carried, see above)
run recipe recipes/finetune.py --output-dir /tmp/recipe --overwrite
run infer-b64-compiled benchmarks/throughput.py "${infer[@]}" --batch-size 64 --agreement-batches 0 --compile --json "$dir/infer-b64-compiled.json"
run train-b256 benchmarks/throughput.py "${train[@]}" --batch-size 256 --json "$dir/train-b256.json"
run profile-train-b64 benchmarks/profile_gpu.py --mode train --batch-size 64 --dtype bf16 --top 20
run profile-infer-b256-compiled benchmarks/profile_gpu.py --batch-size 256 --dtype bf16 --compile --top 20
# compiled training takes the host out of a small-batch step (compiling three models: minutes)
run train-b64-compiled benchmarks/throughput.py "${train[@]}" --batch-size 64 --compile --json "$dir/train-b64-compiled.json"
echo "== done in $(($(date +%s) - start))s" | tee -a "$log"
