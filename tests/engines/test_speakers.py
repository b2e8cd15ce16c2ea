"""Speaker diarization without PyTorch (workers/engines/speakers.py): the model file read safely,
the features and network equal to the reference libraries', the clustering, and real speech.

Parity is checked against librosa (a stored reference: librosa is not a dependency; the file was
made with librosa 0.11.0 from the signal in `_chirp`) and against PyTorch's own LSTM (installed
in the test environment for the openai-whisper engine)."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.speech import BOB, CAROL, CONVERSATION, SpeechFactory
from workers.engines import speakers
from workers.engines.audio import load_audio
from workers.engines.errors import ModelIntegrityError, ModelNotFoundError, TranscriptionCancelled

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def encoder() -> speakers.SpeakerEncoder:
    return speakers.load_encoder()


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> SpeechFactory:
    return SpeechFactory(tmp_path_factory.mktemp("speakers"))


def as_transcript(spans) -> dict:
    """A transcript whose segments are the spans, each with two timed words."""
    segments = []
    for i, (start, end) in enumerate(spans):
        middle = (start + end) / 2
        words = [
            {"start": start + 0.1, "end": middle, "word": " one"},
            {"start": middle, "end": end - 0.1, "word": " two"},
        ]
        segments.append({"id": i, "start": start, "end": end, "text": " one two", "words": words})
    return {"segments": segments}


# ---- the model file ------------------------------------------------------------------------------
def test_the_packaged_model_is_found_without_importing_its_package_and_verified():
    import sys

    path = speakers.encoder_path()

    assert path.name == "pretrained.pt" and path.parent.name == "resemblyzer"
    assert "resemblyzer" not in sys.modules  # importing it would need librosa and torch
    speakers.verify_sha256(path, speakers.ENCODER_SHA256)


def test_a_damaged_model_file_is_refused_before_it_is_read(tmp_path):
    damaged = tmp_path / "pretrained.pt"
    data = bytearray(speakers.encoder_path().read_bytes())
    data[-10] ^= 0xFF
    damaged.write_bytes(bytes(data))

    with pytest.raises(ModelIntegrityError, match="sha256"):
        speakers.load_encoder(tmp_path)  # a folder holding the file


def test_a_missing_model_file_says_what_to_install(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        speakers.load_encoder(tmp_path / "nothing.pt")


class _Exploit:
    def __reduce__(self):
        return (print, ("code ran",))


def test_the_model_reader_runs_no_code_from_a_hostile_pickle(capsys):
    stream = io.BytesIO()
    for header in (speakers._LEGACY_MAGIC, 1001, {}):
        pickle.dump(header, stream, protocol=2)
    pickle.dump({"model_state": _Exploit()}, stream, protocol=2)

    with pytest.raises(pickle.UnpicklingError, match=r"\.print is not allowed"):
        speakers.read_legacy_state_dict(stream.getvalue())
    assert "code ran" not in capsys.readouterr().out


def _crafted_checkpoint(monkeypatch, *, numel, shape, stride, offset=0) -> bytes:
    """A legacy checkpoint whose one tensor claims `shape`/`stride`/`offset` over a storage of
    `numel` floats (written with stand-ins under PyTorch's names, as a forger would)."""
    import collections
    import struct
    import types

    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__ = "FloatStorage"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Tensor:
        def __reduce__(self):
            state = collections.OrderedDict()
            return (_rebuild_tensor_v2, (("S",), offset, shape, stride, False, state))

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if obj == ("S",):
                return ("storage", FloatStorage, "k", "cpu", numel, None)
            return None

    out = io.BytesIO()
    for header in (speakers._LEGACY_MAGIC, 1001, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    Writer(out, protocol=2).dump({"model_state": collections.OrderedDict(w=Tensor())})
    pickle.dump(["k"], out, protocol=2)
    out.write(struct.pack("<q", numel) + np.arange(numel, dtype="<f4").tobytes())
    return out.getvalue()


@pytest.mark.parametrize(
    ("shape", "stride", "offset", "message"),
    [
        ((5,), (1,), 0, "reaches past its storage"),  # would read memory it does not own
        ((2,), (1,), 3, "reaches past its storage"),
        ((4,), (1,), -2, "impossible shape"),
        ((2, 2), (-1, 1), 2, "impossible shape"),
        ((200_000, 200_000), (0, 0), 0, "larger than the encoder"),  # 149 GiB asked for
        ((2.5,), (1,), 0, "non-integer"),
        ((True,), (1,), 0, "non-integer"),
    ],
)
def test_a_crafted_tensor_cannot_read_outside_its_storage_or_exhaust_memory(
    monkeypatch, shape, stride, offset, message
):
    raw = _crafted_checkpoint(monkeypatch, numel=4, shape=shape, stride=stride, offset=offset)
    monkeypatch.undo()

    with pytest.raises(pickle.UnpicklingError, match=message):
        speakers.read_legacy_state_dict(raw)


def test_a_well_formed_crafted_tensor_is_read_exactly(monkeypatch):
    raw = _crafted_checkpoint(monkeypatch, numel=6, shape=(2, 2), stride=(1, 2), offset=1)
    monkeypatch.undo()

    np.testing.assert_array_equal(speakers.read_legacy_state_dict(raw)["w"], [[1, 3], [2, 4]])


def test_a_truncated_model_file_is_an_error_not_garbage_weights():
    raw = speakers.encoder_path().read_bytes()

    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        speakers.read_legacy_state_dict(raw[: len(raw) - 1000])


# ---- features and network ------------------------------------------------------------------------
def _chirp() -> np.ndarray:
    t = np.arange(8000) / 16000
    return (
        0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.1 * np.sin(2 * np.pi * 3100 * t)
    ).astype(np.float32)


def test_mel_frames_equal_librosas_melspectrogram():
    reference = np.load(DATA / "librosa_mel40.npy")

    ours = speakers.mel_frames(_chirp(), 0, len(reference))

    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6 * reference.max())


def test_a_frame_range_inside_the_audio_equals_the_same_frames_of_the_whole():
    audio = _chirp()
    whole = speakers.mel_frames(audio, 0, 51)

    np.testing.assert_allclose(speakers.mel_frames(audio, 10, 20), whole[10:30], rtol=1e-5)


def test_the_numpy_encoder_equals_pytorchs_lstm(encoder):
    torch = pytest.importorskip("torch")  # in the test environment (requirements/local.txt)
    state = torch.load(speakers.encoder_path(), map_location="cpu", weights_only=False)
    state = state["model_state"]
    lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
    linear = torch.nn.Linear(256, 256)
    lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
    linear.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("linear.")})
    rng = np.random.default_rng(7)
    mels = rng.gamma(1.0, 2.0, size=(5, speakers.WINDOW_FRAMES, 40)).astype(np.float32)
    with torch.no_grad():
        _, (hidden, _) = lstm(torch.from_numpy(mels))
        expected = torch.relu(linear(hidden[-1]))
        expected = (expected / expected.norm(dim=1, keepdim=True)).numpy()

    ours = encoder.embed(mels)

    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)


# ---- windows and clustering ----------------------------------------------------------------------
def test_speech_spans_join_words_across_short_gaps_and_use_segments_without_words():
    data = {
        "segments": [
            {"start": 0.0, "end": 3.0, "words": [
                {"start": 0.0, "end": 1.0, "word": " a"},
                {"start": 1.2, "end": 2.0, "word": " b"},
                {"start": 2.8, "end": 3.0, "word": " c"},
            ]},
            {"start": 5.0, "end": 6.0, "text": " untimed", "words": []},
        ]
    }  # fmt: skip

    assert speakers.speech_spans(data) == [(0.0, 2.0), (2.8, 3.0), (5.0, 6.0)]


def test_windows_cover_long_spans_every_step_and_centre_on_short_ones():
    starts = speakers.window_starts([(0.0, 4.0), (10.0, 10.5)], total_frames=2000)

    # 4 s: windows every 0.8 s, the last ending with the span; 0.5 s: one window centred on it.
    assert starts == [0, 80, 160, 240, 1025 - 80]


def test_agglomeration_separates_two_groups_and_obeys_a_count():
    rng = np.random.default_rng(1)
    centre_a, centre_b = rng.normal(size=256), rng.normal(size=256)
    rows = [centre_a + 0.3 * rng.normal(size=256) for _ in range(6)]
    rows += [centre_b + 0.3 * rng.normal(size=256) for _ in range(4)]
    vectors = np.array(rows, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    labels = speakers.agglomerate(vectors, threshold=0.7)
    assert len(set(labels[:6])) == 1 and len(set(labels[6:])) == 1 and labels[0] != labels[6]
    assert len(set(speakers.agglomerate(vectors, threshold=0.7, clusters=1))) == 1
    assert len(set(speakers.agglomerate(vectors, threshold=0.0, clusters=3))) == 3


def _centroids(alike_pairs: dict[tuple[int, int], float], clusters: int) -> np.ndarray:
    """Unit vectors whose pairwise cosine similarities are the given ones (others near 0)."""
    gram = np.eye(clusters)
    for (i, j), value in alike_pairs.items():
        gram[i, j] = gram[j, i] = value
    return np.linalg.cholesky(gram).astype(np.float32)


def test_an_echo_heard_only_inside_a_voice_it_resembles_is_not_a_speaker():
    # 0 and 1 speak in turn; 2 is heard only as single windows inside their speech (a "yes"
    # padded with the speaker around it) and resembles 1 (0.84).
    labels = np.array([0, 0, 0, 2, 0, 0, 1, 1, 1, 2, 1, 1, 0, 0])
    starts = np.arange(len(labels)) * 80
    centroids = _centroids({(0, 1): 0.65, (1, 2): 0.84, (0, 2): 0.64}, 3)

    assert speakers._real_speakers(labels, starts, centroids, 0.7).tolist() == [
        True,
        True,
        False,
    ]


def test_short_replies_of_a_voice_unlike_the_questions_are_a_speaker():
    # An interview: 1 answers "yes" between 0's questions, never two windows in a row, and
    # sounds like nobody else (0.57).
    labels = np.array([0, 0, 1, 0, 0, 1, 0, 0, 1, 0])
    starts = np.arange(len(labels)) * 80
    centroids = _centroids({(0, 1): 0.57}, 2)

    assert speakers._real_speakers(labels, starts, centroids, 0.7).tolist() == [True, True]


def test_a_single_window_is_not_a_speaker_and_a_rare_steady_voice_is():
    # 2 once (a cough); 3 steady for 4 windows among 400 (1 %) of another speaker's, and
    # heard alone in a stretch of its own.
    labels = np.array([0] * 200 + [2] + [0] * 100 + [3] * 4 + [0] * 100 + [3])
    starts = np.arange(len(labels)) * 80
    starts[-1] += 1000
    centroids = _centroids({(0, 3): 0.6, (0, 2): 0.6}, 4)

    assert speakers._real_speakers(labels, starts, centroids, 0.7).tolist() == [
        True,
        False,
        False,
        True,
    ]


def test_a_turn_boundary_within_a_step_of_a_segment_edge_snaps_to_it():
    words = [
        {"start": 0.0, "end": 0.3, "word": " The"},
        {"start": 0.3, "end": 0.6, "word": " biggest"},
        {"start": 0.6, "end": 2.0, "word": " change"},
        {"start": 2.0, "end": 3.5, "word": " is"},
    ]

    assert speakers._snap_edges(words, [0, 0, 1, 1]) == [1, 1, 1, 1]
    # Over a step (0.8 s) of another voice is two speakers in one segment: kept.
    assert speakers._snap_edges(words, [1, 1, 1, 0]) == [1, 1, 1, 0]
    assert speakers._snap_edges(words, [0, 1, 1, 1]) == [1, 1, 1, 1]


def test_speakers_are_numbered_by_first_word_and_segments_take_the_majority():
    found = speakers.Diarization(
        centres=np.array([0.5, 1.5, 2.5, 3.5]), labels=np.array([3, 3, 1, 1]), speakers=2
    )
    data = {
        "segments": [
            {"start": 0.0, "end": 3.0, "text": "x", "words": [
                {"start": 0.0, "end": 1.0, "word": " hi"},
                {"start": 1.0, "end": 2.0, "word": " there"},
                {"start": 2.1, "end": 2.95, "word": " yes"},
            ]},
            {"start": 3.0, "end": 4.0, "text": " untimed words here", "words": []},
        ]
    }  # fmt: skip

    summary = speakers.assign_speakers(data, found)

    first, second = data["segments"]
    assert [w["speaker"] for w in first["words"]] == ["SPEAKER_00", "SPEAKER_00", "SPEAKER_01"]
    assert first["speaker"] == "SPEAKER_00" and second["speaker"] == "SPEAKER_01"
    assert summary == [
        {"id": "SPEAKER_00", "seconds": 2.0, "words": 2},
        {"id": "SPEAKER_01", "seconds": 1.85, "words": 4},
    ]


# ---- real speech ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_voices_in_turn_are_two_speakers_on_the_right_lines(speech, encoder):
    path, spans = speech.dialogue(CONVERSATION)
    data = as_transcript(spans)

    found = speakers.diarize_audio(
        load_audio(path), speakers.speech_spans(data), encoder=encoder, threshold=0.7
    )
    summary = speakers.assign_speakers(data, found)

    assert [s["speaker"] for s in data["segments"]] == [
        "SPEAKER_00",
        "SPEAKER_01",
        "SPEAKER_00",
        "SPEAKER_01",
    ]
    assert [item["id"] for item in summary] == ["SPEAKER_00", "SPEAKER_01"]


@pytest.mark.slow
def test_one_voice_is_one_speaker(speech, encoder):
    path, spans = speech.dialogue([(BOB, text) for _, text in CONVERSATION])
    data = as_transcript(spans)

    found = speakers.diarize_audio(
        load_audio(path), speakers.speech_spans(data), encoder=encoder, threshold=0.7
    )

    assert found.speakers == 1
    assert [item["id"] for item in speakers.assign_speakers(data, found)] == ["SPEAKER_00"]


@pytest.mark.slow
def test_three_voices_are_found_and_a_given_count_is_obeyed(speech, encoder):
    carol = (CAROL, "From engineering, we are on track to ship next month.")
    lines = [*CONVERSATION[:2], carol, *CONVERSATION[2:]]
    path, spans = speech.dialogue(lines)
    audio = load_audio(path)
    data = as_transcript(spans)

    found = speakers.diarize_audio(
        audio, speakers.speech_spans(data), encoder=encoder, threshold=0.7
    )
    speakers.assign_speakers(data, found)
    assert [s["speaker"][-1] for s in data["segments"]] == ["0", "1", "2", "0", "1"]

    two = speakers.diarize_audio(
        audio, speakers.speech_spans(data), encoder=encoder, threshold=0.7, speakers_expected=2
    )
    capped = speakers.diarize_audio(
        audio, speakers.speech_spans(data), encoder=encoder, threshold=0.7, max_speakers=2
    )
    assert two.speakers == 2 and capped.speakers == 2


def test_no_speech_is_no_speakers_and_a_cancel_stops_it(encoder):
    audio = np.zeros(16000 * 5, dtype=np.float32)

    assert speakers.diarize_audio(audio, [], encoder=encoder, threshold=0.7).speakers == 0
    with pytest.raises(TranscriptionCancelled):
        speakers.diarize_audio(
            audio, [(0.0, 4.0)], encoder=encoder, threshold=0.7, should_cancel=lambda: True
        )
