"""The best settings that ``ceiling.py`` measured, as shell assignments for ``lease.sh``.

    eval "$(python3 bench/gpu/pick.py $OUT)"    # BATCH STREAMS ALLOCATOR PROCESSES VAD_DEVICE

Reads every ``gpu-ceiling-*.json`` in the folder: the model-only row with word timestamps of the
highest throughput gives the batch size, model streams and CTranslate2 allocator setting; the
preparation row of the highest throughput gives the preparation processes and the VAD's device.
Where a kind of row is missing (a step cut off by its time limit), the GPU image's settings
(docker-compose.yml, Dockerfile) stand.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

DEFAULTS = {
    "BATCH": "32",
    "STREAMS": "4",
    "ALLOCATOR": "default",
    "PROCESSES": "12",
    "VAD_DEVICE": "cuda",
}


def rows(folder: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted(folder.glob("gpu-ceiling-*.json")):
        try:
            found.extend(json.loads(path.read_text()).get("rows", []))
        except (OSError, ValueError):
            continue  # a file being rewritten when the step was cut off
    return found


def pick(found: list[dict[str, Any]]) -> dict[str, str]:
    chosen = dict(DEFAULTS)
    model = [r for r in found if r.get("step") == "model-only" and r.get("word_timestamps")]
    if model:
        best = max(model, key=lambda r: r["throughput_x"])
        chosen["BATCH"] = str(best["batch_size"])
        chosen["STREAMS"] = str(best["model_streams"])
        chosen["ALLOCATOR"] = str(best.get("allocator", "default"))
    prepare = [
        r
        for r in found
        if str(r.get("step", "")).startswith("prepare-") and r["step"].endswith("-processes")
    ]
    if prepare:
        best = max(prepare, key=lambda r: r["throughput_x"])
        chosen["PROCESSES"] = best["step"].split("-")[1]
        chosen["VAD_DEVICE"] = str(best.get("vad_device", "cpu"))
    return chosen


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    for name, value in pick(rows(Path(argv[1]))).items():
        print(f"{name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
