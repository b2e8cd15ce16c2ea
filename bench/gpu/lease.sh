#!/usr/bin/env bash
# Issue #7's device-side checks in one call on a lent GPU machine (docs/gpu.md), after the kit's
# first chunks were received: receive the last chunk and install the kit, then
#   1. preparation alone (ceiling.py --skip-model): 12 and 16 processes with the PyTorch VAD and
#      ONNX Runtime's on the CPU, then the PyTorch VAD on the GPU (a CUDA context per process);
#   2. the benchmark (run.py) at 32 and 100 jobs, audio prepared in 12 processes, 2 model streams;
#   3. the model alone (ceiling.py): batch 16/32/64 x 1/2 model streams, then larger batches with
#      CTranslate2's caching allocator allowed bigger bins;
#   4. run.py again with 1 model stream.
# Each result is written to $OUT as soon as it exists, so a call cut off by its time limit still
# brings back what finished. The first lease (2026-11-26) ran run.py and memory.py without
# preparation processes; docs/benchmarks.md has those numbers.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
KIT=/tmp/lexiscore-kit
LOG="$OUT/lease.log"
mkdir -p "$OUT"
python3 bench/gpu/kit.py receive || exit 1
python3 bench/gpu/kit.py install 2>&1 | tail -5 || exit 1
# shellcheck disable=SC1091
. "$KIT/env.sh"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
# The host's CPUs bound preparation: how many cores, threads per core, which model.
{ nproc; lscpu; } >"$OUT/lscpu.txt" 2>&1
run() {
  python3 bench/gpu/run.py --kit "$KIT" --profiles tiny.en --word-timestamps on --jobs 32,100 \
    --prepare-processes 12 --vad-engine torch --model-streams "$1" --openai-jobs 0 --bare-jobs 0 \
    --out "$OUT"
}
{
  for processes in 12 16; do
    python3 bench/gpu/ceiling.py --kit "$KIT" --jobs 96 --processes "$processes" \
      --vad-engines torch,onnx --skip-model --out "$OUT"
  done
  python3 bench/gpu/ceiling.py --kit "$KIT" --jobs 96 --processes 12 --vad-engines torch \
    --vad-device cuda --skip-model --skip-threads --out "$OUT"
  run 2
  python3 bench/gpu/ceiling.py --kit "$KIT" --jobs 24 --processes 12 --vad-engines torch \
    --skip-threads --batch-sizes 16,32,64 --streams 1,2 --out "$OUT"
  CT2_CUDA_CACHING_ALLOCATOR_CONFIG=4,3,14,4294967296 python3 bench/gpu/ceiling.py --kit "$KIT" \
    --jobs 24 --processes 12 --vad-engines torch --skip-threads --batch-sizes 64,128 --streams 1 \
    --out "$OUT"
  run 1
} 2>&1 | tee "$LOG"
