#!/usr/bin/env bash
# Issue #7's device-side checks for the next lease, in one call on a lent GPU machine
# (docs/gpu.md, "Running on a lent GPU machine"), after the kit's first chunks were received. The
# kit: `kit.py prepare --profiles tiny.en,base --with-tests` (6 chunks; `--profiles tiny.en`, 3
# chunks, is enough for steps 1-3). This receives the last chunk, installs the kit, then, in order
# of what is still open:
#   1. the GPU-marked tests (tests/engines, pytest -m gpu), without Django, espeak-ng or sox: the
#      kit brings the models and the tests' clips. Since the third lease the cross-job test warms
#      the scheduler first (preparation processes, then BatchScheduler.warm_model), as the
#      worker's preload does;
#   2. the first-burst gap: tiny.en, 100 jobs with word timestamps, two bursts per process, with
#      the model's warm-up off and on, alternately, twice each. The third lease (H100) measured
#      2402-2618x on a first burst against 3017-3207x on the second, without the warm-up;
#   3. on an H100: tiny.en's 1/8/32-job rows with word timestamps on and off (the third lease ran
#      only the 100-job row there);
#   4. if the kit holds base: the bare pipeline's row for base without word timestamps (cut off in
#      the third lease), then base's GPU memory per window (bench/gpu/memory.py).
# Every step has a deadline inside the call's limit (LEASE_SECONDS, from the script's start), and
# each result is written to $OUT as soon as it exists, so a step cut off still brings back what
# finished. Earlier leases' scripts: `git show ea3344c:bench/gpu/lease.sh` (second lease) and
# `git show 312ddd6:bench/gpu/lease.sh` (third); docs/benchmarks.md has their numbers.
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
    pkill -9 -f '[s]pawn_main' # preparation processes a killed step left behind
  fi
}
RUN=(python3 bench/gpu/run.py --kit "$KIT" --batch-size 32 --model-streams 4
  --prepare-processes 12 --vad-engine torch --vad-device cuda --out "$OUT")
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
BURSTS=(--profiles tiny.en --word-timestamps on --jobs 100,100 --openai-jobs 0 --bare-jobs 0
  --wer-jobs 0)
{
  echo "== device: ${GPU_NAME:-unknown}"
  step 120 python3 -m pytest -p no:django -p no:randomly -p no:cacheprovider \
    --confcutdir=tests/engines -m gpu -v -rA --junitxml="$OUT/gpu-tests.xml" \
    tests/engines/test_batching.py tests/engines/test_silero.py
  for warm in off on off on; do
    step 50 "${RUN[@]}" "${BURSTS[@]}" --warm-model "$warm"
  done
  if [[ $GPU_NAME == *H100* ]]; then
    step 120 "${RUN[@]}" --profiles tiny.en --word-timestamps on,off --jobs 1,8,32 \
      --openai-jobs 0 --bare-jobs 0
  fi
  if [[ -d $KIT/kit/models/base ]]; then
    step 60 "${RUN[@]}" --profiles base --word-timestamps off --jobs 32 --openai-jobs 0 \
      --bare-jobs 32 --wer-jobs 0
    step 120 python3 bench/gpu/memory.py --kit "$KIT" --profile base --out "$OUT"
  fi
  echo "== done at $(($(date +%s) - START))s"
} 2>&1 | tee "$LOG"
