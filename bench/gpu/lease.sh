#!/usr/bin/env bash
# Issue #7's device-side checks in one call on a lent GPU machine (docs/gpu.md), after the kit's
# first chunks were received: receive the last chunk and install the kit, then
#   1. the model alone (ceiling.py, 48 jobs, word timestamps), batch x model streams
#      32x1/2/4, 64x2/1, 128x2 with CTranslate2's caching allocator allowed bigger bins, then
#      32x2/4 with its default bins (is the allocator what made batches above 32 slower?);
#   2. preparation alone (96 jobs): 16 processes with the PyTorch VAD on the CPU, 12 with it on
#      the GPU (12 on the CPU ran in step 1);
#   3. the targets: run.py at 32 and 100 jobs with the best of steps 1 and 2 (bench/gpu/pick.py),
#      word timestamps on, WER, then openai-whisper on one job and the bare library's batched
#      pipeline on the same 100 jobs from 32 threads;
#   4. if time is left, the same 100 jobs with word timestamps off.
# Every step has a deadline inside the call's limit (LEASE_SECONDS, from the script's start), and
# each result is written to $OUT as soon as it exists, so a step cut off still brings back what
# finished. The earlier leases' versions of this script are in git history; docs/benchmarks.md
# has their numbers.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
KIT=/tmp/lexiscore-kit
LOG="$OUT/lease.log"
LEASE_SECONDS=${LEASE_SECONDS:-560}
BIG_BINS=4,3,14,4294967296
START=$(date +%s)
mkdir -p "$OUT"
python3 bench/gpu/kit.py receive || exit 1
python3 bench/gpu/kit.py install 2>&1 | tail -5 || exit 1
# shellcheck disable=SC1091
. "$KIT/env.sh"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
# The host's CPUs bound preparation: how many cores, threads per core, which model.
{ nproc; lscpu; } >"$OUT/lscpu.txt" 2>&1

# step SECONDS-AT-MOST COMMAND...: runs it until the sooner of its own limit and the lease's end
# (10 s kept back), or not at all when under 20 s are left.
step() {
  local most=$1
  shift
  local left=$((LEASE_SECONDS - 10 - ($(date +%s) - START)))
  ((left < 20)) && { echo "skipped (${left}s left): $*"; return 0; }
  ((most > left)) && most=$left
  echo "== $(($(date +%s) - START))s: $* (at most ${most}s)"
  timeout --signal=INT --kill-after=5 "$most" "$@"
  local rc=$?
  if ((rc)); then
    echo "exit $rc: $*"
    pkill -9 -f spawn_main # preparation processes a killed step left behind
  fi
}
{
  step 150 env CT2_CUDA_CACHING_ALLOCATOR_CONFIG=$BIG_BINS \
    python3 bench/gpu/ceiling.py --kit "$KIT" --jobs 48 --processes 12 --vad-engines torch \
    --skip-threads --word-timestamps on --configs 32x1,32x2,32x4,64x2,64x1,128x2 --out "$OUT"
  step 60 python3 bench/gpu/ceiling.py --kit "$KIT" --jobs 48 --processes 12 \
    --vad-engines torch --skip-threads --word-timestamps on --configs 32x2,32x4 --out "$OUT"
  step 45 python3 bench/gpu/ceiling.py --kit "$KIT" --jobs 96 --processes 16 \
    --vad-engines torch --skip-threads --skip-model --out "$OUT"
  step 45 python3 bench/gpu/ceiling.py --kit "$KIT" --jobs 96 --processes 12 \
    --vad-engines torch --vad-device cuda --skip-threads --skip-model --out "$OUT"
  eval "$(python3 bench/gpu/pick.py "$OUT")"
  echo "picked: batch $BATCH, streams $STREAMS, allocator $ALLOCATOR, $PROCESSES processes," \
    "VAD on $VAD_DEVICE"
  ALLOC_ENV=()
  [[ $ALLOCATOR != default ]] && ALLOC_ENV=(CT2_CUDA_CACHING_ALLOCATOR_CONFIG="$ALLOCATOR")
  RUN=(env "${ALLOC_ENV[@]}" python3 bench/gpu/run.py --kit "$KIT" --profiles tiny.en
    --batch-size "$BATCH" --model-streams "$STREAMS" --prepare-processes "$PROCESSES"
    --vad-engine torch --vad-device "$VAD_DEVICE" --out "$OUT")
  step 300 "${RUN[@]}" --word-timestamps on --jobs 32,100 --openai-jobs 1 --bare-jobs 100
  step 60 "${RUN[@]}" --word-timestamps off --jobs 100 --openai-jobs 0 --bare-jobs 0 --wer-jobs 0
  echo "== done at $(($(date +%s) - START))s"
} 2>&1 | tee "$LOG"
