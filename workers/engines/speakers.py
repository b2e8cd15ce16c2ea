"""Speaker diarization on the worker: who spoke when, with no model download and no PyTorch.

The speaker encoder is the GE2E d-vector network (Wan et al., "Generalized End-to-End Loss for
Speaker Verification", 2018) trained by Resemblyzer: a 3-layer LSTM over 40-band mel frames whose
last hidden state, projected and L2-normalised, is a 256-dimensional voice embedding. Its weights
ship inside the ``Resemblyzer`` wheel on PyPI (``resemblyzer/pretrained.pt``, 17 MB, Apache-2.0),
pinned by version and sha256 like the Whisper models; the package is installed without its
dependencies (librosa, webrtcvad, torch) and never imported.

Nothing here needs PyTorch, so CPU workers (which run faster-whisper on CTranslate2) diarize too:

- ``pretrained.pt`` is PyTorch's legacy serialisation (pickles followed by raw storages); it is
  read by a restricted unpickler that accepts only an ``OrderedDict`` of float tensors, so a
  tampered file cannot run code even before its hash is checked;
- the LSTM runs in NumPy: the input projection of all frames is one matrix product per layer,
  then 160 steps of ``(windows x 256) @ (256 x 1024)``;
- the mel features are librosa's (``melspectrogram`` with Resemblyzer's settings: 25 ms Hann
  windows every 10 ms, power spectrum, 40 Slaney mel bands).

Diarizing a transcript: every stretch of speech the words (or segments) cover is cut into
1.6 s windows every 0.8 s, each window embedded, the embeddings clustered by average-linkage
agglomeration on cosine similarity (stopping at ``DIARIZATION_THRESHOLD``, or at the number of
speakers the caller expects), and every word given the speaker of the window centred nearest to
it. A segment's speaker is the one who spoke most of its words' time. Speakers are numbered in
order of first appearance: ``SPEAKER_00``, ``SPEAKER_01``... (pyannote's and whisperX's labels).
"""

from __future__ import annotations

import collections
import importlib.util
import io
import math
import pickle
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.engines.audio import SAMPLE_RATE, AudioArray
from workers.engines.errors import ModelNotFoundError, TranscriptionCancelled
from workers.engines.models import verify_sha256

ENCODER_PACKAGE = "resemblyzer"
ENCODER_FILE = "pretrained.pt"
ENCODER_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
ENCODER_NAME = "resemblyzer-ge2e-0.1.4"

N_MELS = 40
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
FRAMES_PER_SECOND = SAMPLE_RATE // HOP
WINDOW_FRAMES = 160  # 1.6 s: the partial utterance the encoder was trained on
STEP_FRAMES = 80  # 0.8 s
HIDDEN = 256
LAYERS = 3
NORM_TARGET_DBFS = -30.0  # Resemblyzer's volume normalisation (raise only)

# A segment's first or last words heard as another speaker for less than this are the segment's.
SNAP_SECONDS = STEP_FRAMES / FRAMES_PER_SECOND
# A cluster with this share of its windows in interjections (runs of one or two windows inside
# others' speech) is an echo of a voice it resembles (`_real_speakers`).
INTERJECTION_SHARE = 0.75
# Words closer than this are one stretch of speech.
JOIN_GAP_SECONDS = 0.5
# At most this many windows are clustered; the others join the nearest cluster (an hour of speech
# is ~4500 windows; clustering is quadratic in memory and each merge scans the whole matrix).
MAX_CLUSTERED_WINDOWS = 1500
# Embeddings are computed this many windows at a time: the input gates of a batch hold
# 160 x 64 x 1024 float32 (42 MB), its outputs a quarter of that.
EMBED_BATCH = 64
# No tensor of the encoder is larger (the biggest is 1024 x 256); a file claiming more is refused.
MAX_TENSOR_ELEMENTS = 1 << 20
# The encoder's tensors are 1.4M floats in all; they may not add up to more than this (a stride of
# 0 repeats a storage), nor the file's storages (4.3M floats: the training state rides along).
MAX_TOTAL_ELEMENTS = 1 << 22
MAX_STORED_ELEMENTS = 1 << 23

SPEAKER_LABEL = "SPEAKER_{:02d}"


class DiarizationError(Exception):
    """Diarization could not run (the encoder is missing or damaged, or the audio is unusable)."""

    code = "diarization_failed"


# ---------------------------------------------------------------------------------------------
# The encoder's weights
# ---------------------------------------------------------------------------------------------


def encoder_path(override: str | Path | None = None) -> Path:
    """``pretrained.pt`` from ``override`` (a file, or a folder holding it), else from the
    installed ``Resemblyzer`` package, located without importing it."""
    if override:
        path = Path(override)
        path = path / ENCODER_FILE if path.is_dir() else path
    else:
        spec = importlib.util.find_spec(ENCODER_PACKAGE)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise ModelNotFoundError(
                "The speaker model package 'Resemblyzer' is not installed: install "
                "requirements/models-nodeps.txt (pip install --no-deps) or set "
                "DIARIZATION_MODEL_PATH."
            )
        path = Path(locations[0]) / ENCODER_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"The speaker model file {path} does not exist.")
    return path


class _Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key = key
        self.numel = numel
        self.data: npt.NDArray[np.float32] | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> npt.NDArray[np.float32]:
        data = self.storage.data
        if data is None:
            raise pickle.UnpicklingError("A tensor refers to a storage the file does not hold.")
        shape, stride = self.shape, self.stride
        numbers = (self.offset, *shape, *stride)
        if any(type(n) is not int for n in numbers):  # bool and float are refused too
            raise pickle.UnpicklingError("A tensor of the model file has a non-integer shape.")
        if (
            len(shape) != len(stride)
            or len(shape) > 4
            or self.offset < 0
            or any(int(n) < 0 for n in shape)
            or any(int(n) < 0 for n in stride)
            or math.prod(shape) > MAX_TENSOR_ELEMENTS
        ):
            raise pickle.UnpicklingError("A tensor of the model file has an impossible shape.")
        last = self.offset + sum((n - 1) * k for n, k in zip(shape, stride, strict=True))
        if math.prod(shape) and last >= len(data):
            raise pickle.UnpicklingError("A tensor of the model file reaches past its storage.")
        if not shape:
            return np.array(data[self.offset], dtype=np.float32)
        itemsize = data.itemsize
        return np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=shape,
            strides=tuple(k * itemsize for k in stride),
            writeable=False,
        ).copy()


class _FloatStorage:
    """Stands for ``torch.FloatStorage`` in the pickle: the only storage type accepted."""


def _rebuild_tensor(storage, offset, shape, stride, *_ignored) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("A tensor without a storage.")
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only what a float32 ``state_dict`` is made of; any other global is refused."""

    _ALLOWED: Mapping[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch", "FloatStorage"): _FloatStorage,
    }

    def __init__(self, file, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed in a model file"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage type, key, location, number of elements, view metadata)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("Unexpected persistent id in a model file")
        if pid[1] is not _FloatStorage:
            raise pickle.UnpicklingError("Only float32 tensors are expected in the speaker model")
        key = str(pid[2])
        if key not in self.storages:
            self.storages[key] = _Storage(key, int(pid[4]))
        return self.storages[key]


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def read_legacy_state_dict(raw: bytes) -> dict[str, npt.NDArray[np.float32]]:
    """The tensors of a PyTorch legacy-format checkpoint's ``model_state``, as float32 arrays."""
    stream = io.BytesIO(raw)
    safe = _RestrictedUnpickler  # the three headers hold only ints and dicts of str/int/bool
    if safe(stream, {}).load() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("Not a PyTorch legacy checkpoint")
    safe(stream, {}).load()  # protocol version
    safe(stream, {}).load()  # system information
    storages: dict[str, _Storage] = {}
    checkpoint = safe(stream, storages).load()
    if sum(storage.numel for storage in storages.values()) > MAX_STORED_ELEMENTS:
        raise pickle.UnpicklingError("The model file's storages are larger than the encoder's.")
    keys = safe(stream, {}).load()
    for key in keys:
        storage = storages.get(str(key))
        (numel,) = struct.unpack("<q", stream.read(8))
        data = stream.read(numel * 4)
        if storage is None or len(data) != numel * 4 or numel != storage.numel:
            raise pickle.UnpicklingError("A storage of the model file is truncated")
        storage.data = np.frombuffer(data, dtype="<f4")
    state = checkpoint.get("model_state") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise pickle.UnpicklingError("The checkpoint holds no model_state")
    tensors = [(str(name), value) for name, value in state.items() if isinstance(value, _TensorRef)]
    if sum(math.prod(value.shape) for _, value in tensors) > MAX_TOTAL_ELEMENTS:
        raise pickle.UnpicklingError("The model file's tensors are larger than the encoder's.")
    return {name: value.array() for name, value in tensors}


# ---------------------------------------------------------------------------------------------
# Features and the network, in NumPy
# ---------------------------------------------------------------------------------------------


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Slaney's scale (librosa's default, htk=False): linear to 1 kHz, logarithmic above.
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = hz / f_sp
    above = hz >= min_log_hz
    mel[above] = min_log_mel + np.log(hz[above] / min_log_hz) / logstep
    return mel


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    hz = f_sp * mel
    above = mel >= min_log_mel
    hz[above] = min_log_hz * np.exp(logstep * (mel[above] - min_log_mel))
    return hz


def mel_filterbank() -> npt.NDArray[np.float32]:
    """``librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)``: Slaney scale and area norm."""
    fft_hz = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([SAMPLE_RATE / 2]))[0], 42)
    )
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


_MEL = mel_filterbank()
_HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def volume_gain(audio: AudioArray) -> float:
    """The factor that raises the level to -30 dBFS (never lowers it), as the encoder's
    training data was normalised. Measured in chunks: no copy of the audio is made."""
    total, chunk = 0.0, 1 << 20
    for i in range(0, audio.shape[0], chunk):
        part = audio[i : i + chunk]
        total += float(np.dot(part, part))
    rms = np.sqrt(total / audio.shape[0]) if audio.shape[0] else 0.0
    if rms <= 1e-9:
        return 1.0
    change = NORM_TARGET_DBFS - 20 * np.log10(rms)
    return float(10 ** (change / 20)) if change > 0 else 1.0


def mel_frames(audio: AudioArray, first: int, count: int) -> npt.NDArray[np.float32]:
    """Mel frames ``first`` .. ``first + count`` of ``audio`` as librosa computes them with
    ``center=True`` and zero padding: frame ``t`` is centred on sample ``t * HOP``."""
    half = N_FFT // 2
    begin = first * HOP - half
    length = (count - 1) * HOP + N_FFT
    chunk = np.zeros(length, dtype=np.float32)
    lo, hi = max(begin, 0), min(begin + length, audio.shape[0])
    if hi > lo:
        chunk[lo - begin : hi - begin] = audio[lo:hi]
    frames = np.lib.stride_tricks.sliding_window_view(chunk, N_FFT)[::HOP][:count]
    spectrum = np.fft.rfft(frames * _HANN, axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    return power @ _MEL.T


def _sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.float32(0.5) * (np.tanh(np.float32(0.5) * x) + np.float32(1.0))


class SpeakerEncoder:
    """The GE2E network with its weights loaded: ``embed(mels)`` gives L2-normalised d-vectors."""

    def __init__(self, state: Mapping[str, npt.NDArray[np.float32]]) -> None:
        try:
            self.layers = [
                (
                    np.ascontiguousarray(state[f"lstm.weight_ih_l{k}"].T),
                    np.ascontiguousarray(state[f"lstm.weight_hh_l{k}"].T),
                    state[f"lstm.bias_ih_l{k}"] + state[f"lstm.bias_hh_l{k}"],
                )
                for k in range(LAYERS)
            ]
            self.linear_w = np.ascontiguousarray(state["linear.weight"].T)
            self.linear_b = state["linear.bias"]
        except KeyError as exc:
            raise DiarizationError(f"The speaker model lacks the tensor {exc}.") from exc
        expected = [((N_MELS if k == 0 else HIDDEN), 4 * HIDDEN) for k in range(LAYERS)]
        if (
            [w_ih.shape for w_ih, _, _ in self.layers] != expected
            or any(w_hh.shape != (HIDDEN, 4 * HIDDEN) for _, w_hh, _ in self.layers)
            or any(bias.shape != (4 * HIDDEN,) for _, _, bias in self.layers)
            or self.linear_w.shape != (HIDDEN, HIDDEN)
            or self.linear_b.shape != (HIDDEN,)
        ):
            raise DiarizationError("The speaker model's shapes are not the GE2E encoder's.")

    def embed(self, mels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``mels``: (windows, frames, 40). Returns (windows, 256), each row of unit length."""
        out = [self._embed(mels[i : i + EMBED_BATCH]) for i in range(0, len(mels), EMBED_BATCH)]
        return np.concatenate(out) if out else np.zeros((0, HIDDEN), dtype=np.float32)

    def _embed(self, mels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        batch, steps, _ = mels.shape
        # Time-major, so that each step's gates are one contiguous block.
        sequence = np.ascontiguousarray(mels.transpose(1, 0, 2))
        h = np.zeros((batch, HIDDEN), dtype=np.float32)
        for w_ih, w_hh, bias in self.layers:
            inputs = (sequence.reshape(steps * batch, -1) @ w_ih).reshape(steps, batch, -1)
            inputs += bias
            h = np.zeros((batch, HIDDEN), dtype=np.float32)
            c = np.zeros((batch, HIDDEN), dtype=np.float32)
            outputs = np.empty((steps, batch, HIDDEN), dtype=np.float32)
            gates = np.empty((batch, 4 * HIDDEN), dtype=np.float32)
            for t in range(steps):
                np.matmul(h, w_hh, out=gates)
                gates += inputs[t]
                ifo = _sigmoid(gates[:, : 2 * HIDDEN]), _sigmoid(gates[:, 3 * HIDDEN :])
                g = np.tanh(gates[:, 2 * HIDDEN : 3 * HIDDEN])
                c *= ifo[0][:, HIDDEN:]
                c += ifo[0][:, :HIDDEN] * g
                h = ifo[1] * np.tanh(c)
                outputs[t] = h
            sequence = outputs
        embedding = np.maximum(h @ self.linear_w + self.linear_b, 0)
        norms = np.linalg.norm(embedding, axis=1, keepdims=True)
        return (embedding / np.maximum(norms, 1e-9)).astype(np.float32)


_encoders: dict[tuple[str, int, int], SpeakerEncoder] = {}
_encoders_lock = threading.Lock()


def load_encoder(override: str | Path | None = None) -> SpeakerEncoder:
    """The process's encoder (loaded once per file version), its file's sha256 verified."""
    path = encoder_path(override)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _encoders_lock:
        encoder = _encoders.get(key)
        if encoder is None:
            verify_sha256(path, ENCODER_SHA256, what="speaker model file")
            try:
                state = read_legacy_state_dict(path.read_bytes())
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error) as exc:
                raise DiarizationError(f"The speaker model {path} cannot be read: {exc}") from exc
            encoder = _encoders[key] = SpeakerEncoder(state)
    return encoder


# ---------------------------------------------------------------------------------------------
# Windows, clustering, assignment
# ---------------------------------------------------------------------------------------------


def speech_spans(data: Mapping[str, Any]) -> list[tuple[float, float]]:
    """Where the transcript says someone spoke: its words (or segments without words), joined
    across gaps shorter than ``JOIN_GAP_SECONDS``."""
    spans: list[tuple[float, float]] = []
    for segment in data.get("segments") or []:
        words = [w for w in segment.get("words") or [] if str(w.get("word", "")).strip()]
        timed = [(float(w["start"]), float(w["end"])) for w in words] or [
            (float(segment["start"]), float(segment["end"]))
        ]
        spans.extend((start, max(start, end)) for start, end in timed)
    spans.sort()
    joined: list[tuple[float, float]] = []
    for start, end in spans:
        if joined and start - joined[-1][1] < JOIN_GAP_SECONDS:
            joined[-1] = (joined[-1][0], max(joined[-1][1], end))
        else:
            joined.append((start, end))
    return joined


def window_starts(spans: Iterable[tuple[float, float]], total_frames: int) -> list[int]:
    """The first mel frame of every window covering ``spans``: a short span gets one window
    centred on it; a longer one windows every ``STEP_FRAMES``, the last ending with it."""
    starts: list[int] = []
    limit = max(total_frames - WINDOW_FRAMES, 0)
    for start_s, end_s in spans:
        first, last = round(start_s * FRAMES_PER_SECOND), round(end_s * FRAMES_PER_SECOND)
        if last - first <= WINDOW_FRAMES:
            centre = (first + last) // 2
            candidates = [centre - WINDOW_FRAMES // 2]
        else:
            candidates = list(range(first, last - WINDOW_FRAMES, STEP_FRAMES))
            candidates.append(last - WINDOW_FRAMES)
        starts.extend(min(max(c, 0), limit) for c in candidates)
    return sorted(set(starts))


def agglomerate(
    embeddings: npt.NDArray[np.float32], *, threshold: float, clusters: int | None = None
) -> npt.NDArray[np.int64]:
    """Average-linkage agglomerative clustering on cosine similarity: merge the most similar
    pair until it is less similar than ``threshold`` or (when given) ``clusters`` remain.
    Returns a cluster index per row."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    similarity = (embeddings @ embeddings.T).astype(np.float64)
    np.fill_diagonal(similarity, -np.inf)
    sizes = np.ones(n)
    owner = np.arange(n)
    alive = n
    target = max(1, clusters) if clusters else 1
    while alive > target:
        flat = int(np.argmax(similarity))
        a, b = divmod(flat, n)
        if clusters is None and similarity[a, b] < threshold:
            break
        merged = (sizes[a] * similarity[a] + sizes[b] * similarity[b]) / (sizes[a] + sizes[b])
        similarity[a, :] = merged
        similarity[:, a] = merged
        similarity[a, a] = -np.inf
        similarity[b, :] = -np.inf
        similarity[:, b] = -np.inf
        sizes[a] += sizes[b]
        sizes[b] = 0
        owner[owner == b] = a
        alive -= 1
    _, labels = np.unique(owner, return_inverse=True)
    return labels.astype(np.int64)


@dataclass
class Diarization:
    """Per window (its centre in seconds), the speaker index; speakers in order of appearance."""

    centres: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    speakers: int
    windows: int = 0
    model: str = ENCODER_NAME

    def speaker_at(self, seconds: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """The speaker of the window centred nearest each time."""
        if not len(self.centres):
            return np.zeros(len(seconds), dtype=np.int64)
        right = np.clip(np.searchsorted(self.centres, seconds), 1, len(self.centres) - 1)
        left = right - 1
        nearer_left = np.abs(seconds - self.centres[left]) <= np.abs(self.centres[right] - seconds)
        index = np.where(nearer_left, left, right) if len(self.centres) > 1 else left * 0
        return self.labels[index]


def _nearest(
    embeddings: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]
) -> npt.NDArray[np.int64]:
    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-9)
    return np.argmax(embeddings @ unit.T, axis=1).astype(np.int64)


def _real_speakers(
    labels: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    centroids: npt.NDArray[np.float32],
    threshold: float,
) -> npt.NDArray[np.bool_]:
    """Which clusters are speakers.

    A window holding a short phrase padded with a neighbour's voice (a "yes" inside another's
    turn), or straddling a change of speaker (half of each voice), embeds between the voices it
    mixes, and average linkage can keep such windows apart as a "speaker" of their own. Such a
    cluster is heard in interjections (`INTERJECTION_SHARE` of its windows in runs of at most two
    windows, all that one phrase or one change makes, with other clusters' on both sides) and
    resembles a steadily heard cluster (centroids at least `threshold` alike): it is an echo of
    that voice, and its windows go to the nearest real speaker. A single window is not a speaker
    either (a cough, a laugh). Everything else is kept: a speaker who only answers "yes" between
    another's questions does not sound like the questions, and a rare voice in a long recording
    is not weighed against its length."""
    clusters = len(centroids)
    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-9)
    alike = unit @ unit.T
    counts = np.bincount(labels, minlength=clusters)
    overlapping = np.diff(starts) < WINDOW_FRAMES  # window i overlaps window i + 1
    in_interjections = np.zeros(clusters)
    i, n = 0, len(labels)
    while i < n:
        j = i
        while j + 1 < n and overlapping[j] and labels[j + 1] == labels[i]:
            j += 1
        flanked = i > 0 and overlapping[i - 1] and j + 1 < n and overlapping[j]
        if j - i < 2 and flanked:
            in_interjections[labels[i]] += j - i + 1
        i = j + 1
    interjecting = (counts > 0) & (in_interjections >= INTERJECTION_SHARE * counts)
    steady = (counts > 0) & ~interjecting
    echoes = np.zeros(clusters, dtype=bool)
    for k in np.nonzero(interjecting)[0]:
        echoes[k] = bool(steady.any() and alike[k, steady].max() >= threshold)
    return (counts >= 2) & ~echoes


def _cluster(
    embeddings: npt.NDArray[np.float32],
    starts: npt.NDArray[np.int64],
    *,
    threshold: float,
    speakers_expected: int | None,
    max_speakers: int,
) -> npt.NDArray[np.int64]:
    n = len(embeddings)
    sample = np.arange(n)
    if n > MAX_CLUSTERED_WINDOWS:
        sample = np.linspace(0, n - 1, MAX_CLUSTERED_WINDOWS).round().astype(np.int64)
    sampled = embeddings[sample]
    wanted = min(speakers_expected, len(sample)) if speakers_expected else None
    labels = agglomerate(sampled, threshold=threshold, clusters=wanted)
    if wanted is None and labels.max(initial=0) + 1 > max_speakers:
        labels = agglomerate(sampled, threshold=threshold, clusters=max_speakers)
    centroids = np.stack([sampled[labels == k].mean(axis=0) for k in range(labels.max() + 1)])
    # Every window (the sampled ones too) to its nearest centroid.
    nearest = _nearest(embeddings, centroids)
    if wanted is not None:
        return nearest  # the caller knows how many speakers there are
    for _ in range(max_speakers):
        keep = _real_speakers(nearest, starts, centroids, threshold)
        if keep.all() or not keep.any():
            break
        centroids = centroids[keep]
        nearest = _nearest(embeddings, centroids)
    return nearest


def diarize_audio(
    audio: AudioArray,
    spans: Sequence[tuple[float, float]],
    *,
    encoder: SpeakerEncoder,
    threshold: float,
    speakers_expected: int | None = None,
    max_speakers: int = 10,
    should_cancel: Callable[[], bool] | None = None,
) -> Diarization:
    """Who spoke in each window over ``spans`` of ``audio`` (16 kHz mono). ``should_cancel`` is
    asked between batches of windows; true raises ``TranscriptionCancelled``."""
    total_frames = audio.shape[0] // HOP + 1
    starts = window_starts(spans, total_frames)
    if not starts:
        return Diarization(np.zeros(0), np.zeros(0, dtype=np.int64), 0)
    # The gain scales the power spectrum by its square: applied to the features, not the audio.
    power_gain = np.float32(volume_gain(audio) ** 2)
    embeddings = []
    for i in range(0, len(starts), EMBED_BATCH):
        if should_cancel is not None and should_cancel():
            raise TranscriptionCancelled()
        batch = starts[i : i + EMBED_BATCH]
        mels = np.stack([mel_frames(audio, first, WINDOW_FRAMES) for first in batch])
        mels *= power_gain
        embeddings.append(encoder.embed(mels))
    vectors = np.concatenate(embeddings)
    raw = _cluster(
        vectors,
        np.array(starts, dtype=np.int64),
        threshold=threshold,
        speakers_expected=speakers_expected,
        max_speakers=max_speakers,
    )
    # Number speakers by first appearance.
    order = {int(k): i for i, k in enumerate(dict.fromkeys(raw.tolist()))}
    labels = np.array([order[int(k)] for k in raw], dtype=np.int64)
    centres = (np.array(starts, dtype=np.float64) + WINDOW_FRAMES / 2) / FRAMES_PER_SECOND
    return Diarization(centres, labels, len(order), windows=len(starts))


def speaker_label(index: int) -> str:
    return SPEAKER_LABEL.format(index)


def _snap_edges(words: list[dict[str, Any]], found: list[int]) -> list[int]:
    """A segment's first or last words given another speaker for less than ``SNAP_SECONDS`` are
    given the segment's: a window straddling a turn (1.6 s wide) places its boundary only to
    within a step, and Whisper's segments mostly end where a speaker does. A longer stretch
    (two speakers in one segment) keeps its own speaker."""
    if len(set(found)) < 2:
        return found
    spoken: dict[int, float] = collections.defaultdict(float)
    for word, owner in zip(words, found, strict=True):
        spoken[owner] += max(float(word["end"]) - float(word["start"]), 0.0) + 1e-6
    main = max(spoken, key=lambda k: (spoken[k], -k))
    snapped = list(found)
    for order in (range(len(words)), range(len(words) - 1, -1, -1)):
        run = []
        for i in order:
            if snapped[i] == main:
                break
            run.append(i)
        if run:
            first, last = min(run), max(run)
            if float(words[last]["end"]) - float(words[first]["start"]) < SNAP_SECONDS:
                for i in run:
                    snapped[i] = main
    return snapped


def assign_speakers(data: dict[str, Any], diarization: Diarization) -> list[dict[str, Any]]:
    """Write ``speaker`` on every segment and word of ``data`` (in place); return one summary
    per speaker: its label, seconds of speech (its words' time) and word count. Speakers are
    numbered in the order they first speak in the transcript (a cluster that owns no word, such
    as a cough's, is not a speaker)."""
    owners: list[tuple[dict[str, Any], list[dict[str, Any]], list[int]]] = []
    for segment in data.get("segments") or []:
        words = [w for w in segment.get("words") or [] if isinstance(w, dict)]
        if words:
            middles = np.array([(float(w["start"]) + float(w["end"])) / 2 for w in words])
            found = _snap_edges(words, diarization.speaker_at(middles).tolist())
        else:
            start, end = float(segment["start"]), float(segment["end"])
            probes = diarization.speaker_at(np.linspace(start, max(start, end), 5))
            found = [int(np.bincount(probes).argmax())]
        owners.append((segment, words, found))
    order: dict[int, int] = {}
    for _, _, found in owners:
        for owner in found:
            order.setdefault(owner, len(order))
    seconds: dict[int, float] = collections.defaultdict(float)
    words_by: dict[int, int] = collections.defaultdict(int)
    for segment, words, found in owners:
        if not words:
            chosen = order[found[0]]
            seconds[chosen] += max(float(segment["end"]) - float(segment["start"]), 0.0)
            words_by[chosen] += len(str(segment.get("text", "")).split())
            segment["speaker"] = speaker_label(chosen)
            continue
        spoken: dict[int, float] = collections.defaultdict(float)
        for word, raw in zip(words, found, strict=True):
            owner = order[raw]
            word["speaker"] = speaker_label(owner)
            length = max(float(word["end"]) - float(word["start"]), 0.0)
            spoken[owner] += length + 1e-6  # a word without duration still counts
            seconds[owner] += length
            if str(word.get("word", "")).strip():
                words_by[owner] += 1
        segment["speaker"] = speaker_label(max(spoken, key=lambda k: (spoken[k], -k)))
    return [
        {"id": speaker_label(k), "seconds": round(seconds[k], 3), "words": words_by[k]}
        for k in sorted(order.values())
    ]
