"""Speaker diarization: speed, memory and accuracy on a synthetic conversation of known turns.

    .venv/bin/python bench/transcription/diarization.py --minutes 10 --speakers 3

Builds a conversation with espeak-ng (voices in turn, lines of 2-8 s, short pauses), runs
`workers.engines.speakers.diarize_audio` over the true speech spans (so that only diarization is
measured, not Whisper), and reports the windows, the time of each stage, the real-time factor,
the peak resident memory and the speaker confusion: the share of speech time given the wrong
speaker under the best matching of found to true speakers (the "confusion" part of the
diarization error rate; espeak voices are cleaner than people, so it is a floor, not a promise).
Results: docs/benchmarks.md, "Speaker diarization".
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.speech import SpeechFactory  # noqa: E402
from workers.engines import speakers  # noqa: E402
from workers.engines.audio import load_audio  # noqa: E402

VOICES = ["en-us+m3", "en-us+f3", "en-us+Andy", "en-us+klatt", "en-us+f5", "en-us+m7"]
SENTENCES = [
    "Let us look at the numbers for the second quarter before we decide anything.",
    "I agree, and the support queue has been growing every week since March.",
    "Could you share the slides after the meeting?",
    "The new release fixes the upload problem that customers reported last month.",
    "We should ask the finance team whether the travel budget can move.",
    "Yes.",
    "That sounds reasonable to me, as long as the deadline does not slip again.",
    "I will write the summary and send it to everyone this afternoon.",
    "Do we have any data on how many people use the mobile application?",
    "Not yet, but the analytics dashboard should have it by Friday.",
    "Right, thank you.",
    "One more thing: the office will be closed on Monday for maintenance.",
]


def conversation(minutes: float, voices: int, folder: Path):
    """Lines in turn until `minutes` of audio: (path, [(start, end, speaker index)])."""
    factory = SpeechFactory(folder)
    lines, seconds, rng = [], 0.0, np.random.default_rng(3)
    turn = 0
    while seconds < minutes * 60:
        speaker = turn % voices if rng.random() < 0.8 else int(rng.integers(voices))
        sentence = SENTENCES[int(rng.integers(len(SENTENCES)))]
        lines.append((VOICES[speaker], sentence))
        path = factory.say(sentence, voice=VOICES[speaker])
        seconds += len(load_audio(path)) / 16000
        turn += 1
    path, spans = factory.dialogue(lines)
    who = [VOICES.index(voice) for voice, _ in lines]
    return path, [(start, end, who[i]) for i, (start, end) in enumerate(spans)]


def confusion(found: speakers.Diarization, truth) -> float:
    """Share of speech time (10 ms grid) labelled wrongly under the best speaker matching."""
    times, labels = [], []
    for start, end, speaker in truth:
        grid = np.arange(start + 0.005, end, 0.01)
        times.append(grid)
        labels.append(np.full(len(grid), speaker))
    grid, true = np.concatenate(times), np.concatenate(labels)
    guess = found.speaker_at(grid)
    true_ids, guess_ids = sorted(set(true.tolist())), sorted(set(guess.tolist()))
    best = 0
    for chosen in itertools.permutations(guess_ids, min(len(guess_ids), len(true_ids))):
        matched = sum(
            int(np.sum((true == t) & (guess == g))) for t, g in zip(true_ids, chosen, strict=False)
        )
        best = max(best, matched)
    return 1.0 - best / len(grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--speakers", type=int, default=3, choices=range(1, len(VOICES) + 1))
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--expected", action="store_true", help="pass the true speaker count")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-diarization-") as folder:
        started = time.perf_counter()
        path, truth = conversation(args.minutes, args.speakers, Path(folder))
        built = time.perf_counter() - started
        encoder = speakers.load_encoder()
        started = time.perf_counter()
        audio = load_audio(path)
        decoded = time.perf_counter() - started
        spans = [(start, end) for start, end, _ in truth]
        started = time.perf_counter()
        found = speakers.diarize_audio(
            audio,
            spans,
            encoder=encoder,
            threshold=args.threshold,
            speakers_expected=args.speakers if args.expected else None,
        )
        diarized = time.perf_counter() - started
    duration = len(audio) / 16000
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"audio: {duration:.0f} s, {len(truth)} lines, {args.speakers} voices")
    print(f"built in {built:.0f} s")
    print(f"decode: {decoded:.2f} s; windows: {found.windows}")
    print(f"diarize: {diarized:.2f} s = {duration / diarized:.0f}x real time")
    print(f"speakers found: {found.speakers} (true {args.speakers})")
    print(f"speaker confusion: {100 * confusion(found, truth):.1f} % of speech time")
    print(f"peak RSS: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
