#!/usr/bin/env bash
# Issue #7's device-side checks in one call on a lent GPU machine (docs/gpu.md), after the kit's
# first chunks were received: receive the last chunk, install the kit, then the benchmark with word
# timestamps (the issue's target), the memory probe and a real out-of-memory, and the benchmark
# without word timestamps. Each result is written to $OUT as soon as it exists, so a call cut off
# by its time limit still brings back what finished.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
KIT=/tmp/lexiscore-kit
mkdir -p "$OUT"
python3 bench/gpu/kit.py receive || exit 1
python3 bench/gpu/kit.py install 2>&1 | tail -5 || exit 1
# shellcheck disable=SC1091
. "$KIT/env.sh"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python3 bench/gpu/run.py --kit "$KIT" --profiles tiny.en --word-timestamps on \
  --jobs 1,8,32,100 --out "$OUT" 2>&1 | tee "$OUT/run-on.log"
python3 bench/gpu/memory.py --kit "$KIT" --out "$OUT" 2>&1 | tee "$OUT/memory.log"
python3 bench/gpu/run.py --kit "$KIT" --profiles tiny.en --word-timestamps off \
  --jobs 1,8,32,100 --openai-jobs 1 --out "$OUT" 2>&1 | tee "$OUT/run-off.log"
