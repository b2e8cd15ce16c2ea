#!/usr/bin/env bash
# Issue #7's device-side checks for the next lease, in one call on a lent GPU machine
# (docs/gpu.md, "Running on a lent GPU machine"), after the kit's first chunks were received. The
# kit: `kit.py prepare --profiles tiny.en,base --with-tests` (6 chunks). This receives the last
# chunk, installs the kit, then, in order of what #7 still lacks:
#   1. the GPU-marked tests (tests/engines, pytest -m gpu), without Django, espeak-ng or sox:
#      the kit brings the models and the tests' clips;
#   1b. on an H100 only: tiny.en's target row (100 jobs, word timestamps, two bursts) with both
#      baselines. #7 states its targets for one H100; both earlier leases drew an H200;
#   2. `base` with word timestamps: the matrix at 1/8/32/100 jobs with the settings the second
#      lease measured best for tiny.en (batch 32, 4 model streams, 12 preparation processes, the
#      VAD on the GPU), openai-whisper on one job and the bare pipeline on 32;
#   3. WER of cross-job batching, the bare pipeline and the unbatched engine over 12 jobs of
#      tiny.en on the GPU (bench/gpu/wer.py; measured on the CPU in session 6);
#   4. `base` without word timestamps, as in 2;
#   5. if time is left: tiny.en at 100 jobs with WHISPER_BATCH_MAX_WAIT_MS 10 (the default), 2
#      and 50, two bursts each. run.py now starts every preparation process before the first
#      burst, as the worker's preload does, so the first burst against the second shows what
#      of the second lease's cold-start gap (2568x against 3120-4220x) is left.
# Every step has a deadline inside the call's limit (LEASE_SECONDS, from the script's start), and
# each result is written to $OUT as soon as it exists, so a step cut off still brings back what
# finished. The second lease ran `git show ea3344c:bench/gpu/lease.sh` (model ceiling,
# preparation, pick.py, the tiny.en targets); docs/benchmarks.md has its numbers.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
KIT=/tmp/lexiscore-kit
LOG="$OUT/lease.log"
LEASE_SECONDS=${LEASE_SECONDS:-575}
START=$(date +%s)
mkdir -p "$OUT"
python3 bench/gpu/kit.py receive || exit 1
python3 bench/gpu/kit.py install 2>&1 | tail -5 || exit 1
# shellcheck disable=SC1091
. "$KIT/env.sh"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
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
RUN=(python3 bench/gpu/run.py --kit "$KIT" --batch-size 32 --model-streams 4
  --prepare-processes 12 --vad-engine torch --vad-device cuda --out "$OUT")
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
{
  echo "== device: ${GPU_NAME:-unknown}"
  step 120 python3 -m pytest -p no:django -p no:randomly -p no:cacheprovider \
    --confcutdir=tests/engines -m gpu -v -rA --junitxml="$OUT/gpu-tests.xml" \
    tests/engines/test_batching.py tests/engines/test_silero.py
  if [[ $GPU_NAME == *H100* ]]; then
    step 150 "${RUN[@]}" --profiles tiny.en --word-timestamps on --jobs 100,100 \
      --openai-jobs 1 --bare-jobs 32
  fi
  step 200 "${RUN[@]}" --profiles base --word-timestamps on --jobs 1,8,32,100 \
    --openai-jobs 1 --bare-jobs 32
  step 90 python3 bench/gpu/wer.py --kit "$KIT" --jobs 12 --batch-size 32 --out "$OUT"
  step 120 "${RUN[@]}" --profiles base --word-timestamps off --jobs 1,8,32,100 \
    --openai-jobs 1 --bare-jobs 32
  # Only if time is left: the default first, so a cut-off run keeps the baseline.
  for wait_ms in 10 2 50; do
    step 45 "${RUN[@]}" --profiles tiny.en --word-timestamps on --jobs 100,100 \
      --max-wait-ms "$wait_ms" --openai-jobs 0 --bare-jobs 0 --wer-jobs 0
  done
  echo "== done at $(($(date +%s) - START))s"
} 2>&1 | tee "$LOG"
