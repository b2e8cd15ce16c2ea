"""Silero VAD v6 in PyTorch: faster-whisper's own VAD model, ~2.5x faster on one core.

faster-whisper finds speech with Silero VAD v6, an ONNX model it ships
(``faster_whisper/assets/silero_vad_v6.onnx``) and runs with ONNX Runtime on one thread. For
cross-job batching that VAD is ~75-82 % of the CPU cost of preparing a file (decode, VAD,
features; docs/gpu.md), so it bounds how much audio a GPU node's CPUs can feed the model.

The model is small: a short-time Fourier transform written as a 1-D convolution (258 filters of
256 taps: a Hann window times cosines and sines), four convolutions, one LSTM over the sequence
of 32 ms frames, a 1x1 convolution and a sigmoid. ``TorchSileroVAD`` runs the same weights, read
from that ONNX file, in PyTorch, with the Fourier transform done by an FFT (``torch.fft.rfft``)
instead of the convolution, which is most of the saving (measured on this project's 2-core VM:
the VAD ~2.5x faster, a preparation process ~1.8x; docs/benchmarks.md). It returns what
``faster_whisper.vad.SileroVADModel`` returns (one speech probability per 512-sample frame) to
within 2e-5 on the CPU, so ``get_speech_timestamps`` makes the same clips except where a frame's
probability lies within that of a threshold (a clip boundary then moves by one 32 ms frame).
``device="cuda"`` runs it on a GPU, in full float32 (TF32 off).

Only the pinned model file is accepted (its sha256): the weights are read by name from it.
``install`` makes it the VAD of every ``get_speech_timestamps`` call in the process; the
preparation processes (``workers.preparation``) call it when they start.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MODEL_FILE = "silero_vad_v6.onnx"
# faster-whisper 1.2.1's asset (requirements/base.txt pins the package).
MODEL_SHA256 = "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2"
FRAME = 512  # samples per probability (32 ms at 16 kHz)
CONTEXT = 64  # samples of the previous frame each frame sees
N_FFT = 256
HOP = 128
# Frames per encoder call (65 s of audio, ~5 MB of input): on one core of this project's VM,
# 1024-4096 ran alike (~2400-2500x real time), 8192 at 1900x and 32768 at 1200x (cache misses).
CHUNK_FRAMES = 2048
# The LSTM's weights, named in the pinned file by the exporter (input, recurrence, biases).
LSTM_WEIGHTS = ("onnx::LSTM_209", "onnx::LSTM_210", "onnx::LSTM_211")
VAD_ENGINES = ("auto", "onnx", "torch")


class SileroModelError(RuntimeError):
    """The VAD model file is not the pinned one, or cannot be read."""


def default_model_path() -> Path:
    from faster_whisper.utils import get_assets_path

    return Path(get_assets_path()) / MODEL_FILE


# ---- reading the ONNX file's weights (protobuf wire format; no onnx package needed) ----------
def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message: an int for varints, a
    memoryview for length-delimited and fixed-size fields."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise SileroModelError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


# onnx.proto: ModelProto.graph = 7, GraphProto.initializer = 5; TensorProto.dims = 1,
# data_type = 2 (1: FLOAT), float_data = 4, name = 8, raw_data = 9, data_location = 14.
_FLOAT = 1


def _tensor(message: memoryview) -> tuple[str, np.ndarray | None]:
    dims: list[int] = []
    name, data_type, raw, floats = "", 0, None, bytearray()
    for number, wire, value in _fields(message):
        if number == 1 and wire == 2:  # packed dims
            pos = 0
            while pos < len(value):
                dim, pos = _varint(value, pos)
                dims.append(dim)
        elif number == 1:
            dims.append(value)
        elif number == 2:
            data_type = value
        elif number == 4:
            floats += bytes(value)
        elif number == 8:
            name = bytes(value).decode()
        elif number == 9:
            raw = bytes(value)
        elif number == 14 and value == 1:
            raise SileroModelError(f"tensor {name!r} is stored outside the model file")
    if data_type != _FLOAT:
        return name, None
    array = np.frombuffer(raw if raw is not None else bytes(floats), dtype="<f4")
    return name, array.reshape(dims).astype(np.float32)


def read_float_weights(path: Path) -> dict[str, np.ndarray]:
    """The float32 initializers of an ONNX model file, by name."""
    data = memoryview(path.read_bytes())
    weights: dict[str, np.ndarray] = {}
    for number, _wire, graph in _fields(data):
        if number != 7:
            continue
        for field, _w, message in _fields(graph):
            if field == 5:
                name, array = _tensor(message)
                if array is not None:
                    weights[name] = array
    return weights


def load_weights(path: Path | None = None) -> dict[str, np.ndarray]:
    """The pinned model's weights, checked against its sha256."""
    path = path or default_model_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        raise SileroModelError(
            f"{path} is not the pinned Silero VAD v6 model (sha256 {digest}, expected "
            f"{MODEL_SHA256}): the VAD's weights are read by name from that file."
        )
    weights = read_float_weights(path)
    basis = weights["encoder.feature_extractor.forward_basis_buffer"][:, 0]
    window = basis[0]
    bins = np.arange(N_FFT // 2 + 1)[:, None] * np.arange(N_FFT)[None, :] * (2 * np.pi / N_FFT)
    expected = np.concatenate([window * np.cos(bins), -window * np.sin(bins)])
    if np.abs(basis - expected).max() > 1e-5:  # pragma: no cover - the sha256 pins the file
        raise SileroModelError("the model's front end is not a Hann-windowed Fourier transform")
    return weights


def _reorder_gates(array: np.ndarray) -> np.ndarray:
    """ONNX LSTM gates are (input, output, forget, cell); PyTorch's (input, forget, cell,
    output)."""
    i, o, f, c = np.split(array, 4, axis=0)
    return np.concatenate([i, f, c, o], axis=0)


def _check_input(audio: np.ndarray, num_samples: int, context_size_samples: int) -> None:
    """`SileroVADModel`'s call contract: 1-D audio, whole 512-sample frames, 64 of context."""
    if (num_samples, context_size_samples) != (FRAME, CONTEXT):
        raise ValueError("the model takes frames of 512 samples with 64 of context")
    if audio.ndim != 1 or audio.shape[0] % num_samples:
        raise ValueError("audio must be one-dimensional, a multiple of 512 samples long")


def framed(audio: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Frames ``start``..``stop`` of ``audio`` as the model takes them, (n, 576) float32: as
    ``faster_whisper.vad.SileroVADModel`` builds them for the whole file, each 512-sample frame
    is preceded by the last 64 samples of the one before (zeros for the first), and the file's
    last frame has its own last 64 samples zeroed (the library zeroes them in place, through a
    view, before rolling). Built a slice at a time, the VAD holds one slice beside the audio
    instead of two framed copies of the whole file (~0.5 GB per audio hour)."""
    total = audio.shape[0] // FRAME
    frames = np.asarray(audio[start * FRAME : stop * FRAME], dtype=np.float32).reshape(-1, FRAME)
    out = np.empty((frames.shape[0], CONTEXT + FRAME), dtype=np.float32)
    out[:, CONTEXT:] = frames
    out[1:, :CONTEXT] = frames[:-1, -CONTEXT:]
    out[0, :CONTEXT] = audio[start * FRAME - CONTEXT : start * FRAME] if start else 0.0
    if stop == total:
        out[-1, -CONTEXT:] = 0.0
    return out


class StreamingOnnxVAD:
    """faster-whisper's own VAD (``SileroVADModel``: the same ONNX session, the same 10,000-frame
    batches with the LSTM state carried between them, so the same probabilities bit for bit),
    with each batch's input built when it runs (``framed``) instead of for the whole file."""

    BATCH_FRAMES = 10000  # SileroVADModel's encoder_batch_size: the state is carried across

    def __init__(self, path: Path | None = None) -> None:
        from faster_whisper.vad import SileroVADModel

        self.session = SileroVADModel(str(path or default_model_path())).session

    def __call__(
        self, audio: np.ndarray, num_samples: int = FRAME, context_size_samples: int = CONTEXT
    ) -> np.ndarray:
        _check_input(audio, num_samples, context_size_samples)
        total = audio.shape[0] // FRAME
        h = np.zeros((1, 1, 128), dtype="float32")
        c = np.zeros((1, 1, 128), dtype="float32")
        outputs = []
        for start in range(0, total, self.BATCH_FRAMES):
            batch = framed(audio, start, min(start + self.BATCH_FRAMES, total))
            output, h, c = self.session.run(None, {"input": batch, "h": h, "c": c})
            outputs.append(output)
            del batch  # before the next is built: one batch at a time
        if not outputs:
            return np.zeros((0, 1), np.float32)
        return np.concatenate(outputs, axis=0)


def use_streaming_onnx() -> None:
    """Make this process's ``get_speech_timestamps`` run ``StreamingOnnxVAD`` where it would run
    the library's own model (it leaves an ``install``ed PyTorch VAD in place). Same results, less
    memory; safe in any process (ONNX Runtime sessions are thread-safe)."""
    import faster_whisper.vad as library_vad

    if getattr(library_vad.get_vad_model, "_lexiscore_vad", None) is not None:
        return
    model = StreamingOnnxVAD()
    get = functools.lru_cache(lambda: model)
    get._lexiscore_vad = "onnx"  # type: ignore[attr-defined]
    library_vad.get_vad_model = get


class TorchSileroVAD:
    """Speech probabilities per 512-sample frame, as ``faster_whisper.vad.SileroVADModel``."""

    def __init__(self, path: Path | None = None, device: str = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        if self.device.type == "cuda":
            # cuDNN convolutions and RNNs default to TF32 on recent GPUs: probabilities would
            # differ from the CPU's by ~1e-3. Process-wide, so only for processes that do nothing
            # else (``install``'s).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        weights = load_weights(path)

        def tensor(name: str) -> Any:
            return torch.from_numpy(np.ascontiguousarray(weights[name])).to(self.device)

        self.window = tensor("encoder.feature_extractor.forward_basis_buffer")[0, 0].contiguous()
        self.convs = [
            (tensor(f"encoder.conv_layers.{i}.weight"), tensor(f"encoder.conv_layers.{i}.bias"))
            for i in range(4)
        ]
        self.strides = (1, 2, 2, 1)
        self.lstm = torch.nn.LSTM(128, 128).to(self.device).eval()
        w_ih, w_hh, bias = (weights[name][0] for name in LSTM_WEIGHTS)
        with torch.no_grad():
            for name, value in (
                ("weight_ih_l0", w_ih),
                ("weight_hh_l0", w_hh),
                ("bias_ih_l0", bias[:512]),
                ("bias_hh_l0", bias[512:]),
            ):
                getattr(self.lstm, name).copy_(torch.from_numpy(_reorder_gates(value)))
        self.out_weight = tensor("decoder.conv1d.weight")
        self.out_bias = tensor("decoder.conv1d.bias")

    def _encode(self, frames: Any) -> Any:
        """(n, 576) samples -> (n, 128) encoder features."""
        import torch
        import torch.nn.functional as F

        padded = F.pad(frames.unsqueeze(1), (HOP, HOP), mode="reflect")[:, 0]
        # The model drops the first of the five STFT frames of each padded frame.
        windows = padded.unfold(1, N_FFT, HOP)[:, 1:]
        spectrum = torch.fft.rfft(windows * self.window, dim=-1).abs().transpose(1, 2)
        hidden = spectrum
        for (weight, bias), stride in zip(self.convs, self.strides, strict=True):
            hidden = F.relu(F.conv1d(hidden, weight, bias, stride=stride, padding=1))
        return hidden[:, :, 0]

    def __call__(
        self, audio: np.ndarray, num_samples: int = FRAME, context_size_samples: int = CONTEXT
    ) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        _check_input(audio, num_samples, context_size_samples)
        if not audio.shape[0]:
            return np.zeros(0, np.float32)
        total = audio.shape[0] // FRAME
        with torch.inference_mode():
            # Each chunk framed on the CPU when it runs (``framed``: the caller's array is left
            # alone), then moved to the device.
            state = None
            outputs = []
            for start in range(0, total, CHUNK_FRAMES):
                stop = min(start + CHUNK_FRAMES, total)
                chunk = torch.from_numpy(framed(audio, start, stop)).to(self.device)
                encoded = self._encode(chunk)
                hidden, state = self.lstm(encoded.unsqueeze(1), state)
                logits = F.conv1d(F.relu(hidden).permute(1, 2, 0), self.out_weight, self.out_bias)
                outputs.append(torch.sigmoid(logits).reshape(-1))
            return torch.cat(outputs).float().cpu().numpy()


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:  # ImportError, or OSError from a broken CUDA build's libraries
        return False
    return True


def install(engine: str = "auto", device: str = "cpu") -> str:
    """Make this process's ``faster_whisper.vad.get_speech_timestamps`` use ``engine``'s VAD:
    ``torch`` (``TorchSileroVAD`` on ``device``), ``onnx`` (the library's own) or ``auto``
    (torch when it can be imported and loads, else onnx). Returns the engine in use. It replaces
    the library's ``get_vad_model`` for the whole process, so it is meant for processes that do
    nothing else: the preparation processes, which limit PyTorch to one thread
    (``OMP_NUM_THREADS=1`` before it is imported)."""
    import faster_whisper.vad as library_vad

    if engine not in VAD_ENGINES:
        raise ValueError(f"Unknown VAD engine {engine!r}; choose one of {', '.join(VAD_ENGINES)}.")
    if engine == "onnx" or (engine == "auto" and not torch_available()):
        use_streaming_onnx()
        return "onnx"
    try:
        model = TorchSileroVAD(device=device)
    except Exception:
        if engine == "torch":
            raise
        logger.exception("the PyTorch VAD could not load on %s; using ONNX Runtime's", device)
        use_streaming_onnx()
        return "onnx"
    get = functools.lru_cache(lambda: model)
    get._lexiscore_vad = "torch"  # type: ignore[attr-defined]
    library_vad.get_vad_model = get
    return "torch"
