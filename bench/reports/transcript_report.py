"""Benchmark: transcript report (analytics + JSON + PDF) of a synthetic 1-hour transcript.

    DJANGO_SETTINGS_MODULE=lexiscore.settings.test \
        .venv/bin/python bench/reports/transcript_report.py

Needs no database: the job and transcript are in-memory objects with the stored shapes.
~150 words per minute for 60 minutes (9,000 words) in ~6-second segments, one pause a minute.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lexiscore.settings.test")

import django

django.setup()

from apps.reports import rendering  # noqa: E402

VOCABULARY = [
    "budget",
    "review",
    "meeting",
    "quarter",
    "revenue",
    "customer",
    "product",
    "team",
    "plan",
    "risk",
    "um",
    "uh",
    "the",
    "a",
    "of",
    "to",
    "and",
    "we",
    "should",
    "will",
    "next",
    "year",
    "growth",
    "launch",
    "market",
]


def one_hour_transcript(seed: int = 7) -> SimpleNamespace:
    rng = random.Random(seed)
    segments, t = [], 0.0
    while t < 3600:
        words = []
        for _ in range(15):
            start = t
            t += 0.4
            words.append(
                {
                    "word": " " + rng.choice(VOCABULARY),
                    "start": round(start, 2),
                    "end": round(t - 0.05, 2),
                    "probability": rng.uniform(0.3, 1.0),
                }
            )
        if int(t) % 60 < 6:
            t += 2.5
        segments.append(
            {
                "start": words[0]["start"],
                "end": words[-1]["end"],
                "text": "".join(w["word"] for w in words),
                "words": words,
            }
        )
    transcript = SimpleNamespace(
        segments=segments, duration=t, language="en", language_probability=0.99
    )
    return SimpleNamespace(
        pk="bench",
        original_filename="one-hour.wav",
        transcript=transcript,
        model_used="tiny.en",
        model_profile="",
        engine="faster-whisper",
        task="transcribe",
        processing_seconds=600.0,
        created_at=None,
        finished_at=None,
    )


def timed(label: str, fn):
    started = time.perf_counter()
    value = fn()
    print(f"{label:<28} {time.perf_counter() - started:8.3f} s")
    return value


def main() -> None:
    job = one_hour_transcript()
    words = sum(len(s["words"]) for s in job.transcript.segments)
    print(
        f"transcript: {job.transcript.duration / 60:.1f} min, {words} words, "
        f"{len(job.transcript.segments)} segments"
    )
    data = timed("analytics (transcript_data)", lambda: rendering.transcript_data(job))
    json_bytes = timed("JSON", lambda: rendering.transcript_json(data))
    pdf = timed("PDF (WeasyPrint)", lambda: rendering.transcript_pdf(data))
    print(f"sizes: JSON {len(json_bytes) / 1024:.0f} KiB, PDF {len(pdf) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
