"""openai-whisper engine (PyTorch): fp32 on CPU, fp16 on CUDA.

openai-whisper cannot read CTranslate2 files and must not download its own checkpoints, so the
verified ``model.bin`` is converted once into an openai-whisper checkpoint
(``{"dims": {...}, "model_state_dict": {...}}``) in the cache directory. The conversion maps
names, splits the fused self-attention QKV and cross-attention KV projections, and keeps the
fp16 weights; ``whisper.load_model`` then loads it with a strict ``load_state_dict``.

Like the faster-whisper engine it runs Silero VAD first (faster-whisper's copy) and passes the
speech regions as ``clip_timestamps``, so silence gives an empty transcript.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from workers.engines.audio import SAMPLE_RATE, AudioArray
from workers.engines.base import (
    AudioPath,
    CancelCheck,
    ProgressCallback,
    ProgressReporter,
    Segment,
    TranscriptionOptions,
    TranscriptionResult,
    Word,
    begin_transcription,
    finalize_segments,
    fit_prompt,
    join_text,
    reported_language,
)
from workers.engines.ct2 import CT2Model, read_ct2_model
from workers.engines.errors import ModelFormatError
from workers.engines.models import ModelFiles, cached_sha256

# The initial prompt carried into every window with hotwords (`_prompt`): well under the
# decoder's 223 tokens of previous text, so the carried prompt is never cut.
CARRIED_PROMPT_TOKENS = 200

if TYPE_CHECKING:
    import torch
    import whisper

logger = logging.getLogger(__name__)

ENGINE_NAME = "openai-whisper"
CHECKPOINT_FORMAT = 1  # bump when the conversion changes, so old checkpoints are rebuilt

_HOP_LENGTH = 160  # openai-whisper's mel hop at 16 kHz: 100 frames per second
_FRAMES_PER_SECOND = SAMPLE_RATE // _HOP_LENGTH
_MIN_CLIP_FRAMES = 2  # one decoder timestamp step (20 ms)

# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


def _count_layers(model: CT2Model, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in model.variables if (m := pattern.match(name))}
    if not indices or indices != set(range(len(indices))):
        raise ModelFormatError(f"The model's {prefix} layers are missing or not contiguous.")
    return len(indices)


def whisper_dims(model: CT2Model) -> dict[str, int]:
    """Derive openai-whisper's ``ModelDimensions`` from the CTranslate2 variables."""
    if model.spec_name != "WhisperSpec":
        raise ModelFormatError(f"Expected a WhisperSpec model, found {model.spec_name!r}.")
    conv1 = model["encoder/conv1/weight"]
    n_vocab, n_text_state = model["decoder/embeddings/weight"].shape
    return {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(model["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": model.scalar("encoder/num_heads"),
        "n_audio_layer": _count_layers(model, "encoder"),
        "n_vocab": int(n_vocab),
        "n_text_ctx": int(model["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(n_text_state),
        "n_text_head": model.scalar("decoder/num_heads"),
        "n_text_layer": _count_layers(model, "decoder"),
    }


def whisper_state_dict(model: CT2Model, dims: dict[str, int]) -> dict[str, npt.NDArray[Any]]:
    """Map CTranslate2 Whisper variables onto openai-whisper's parameter names."""
    state: dict[str, npt.NDArray[Any]] = {}

    def weight(name: str) -> npt.NDArray[Any]:
        array = model[name]
        if array.dtype.kind != "f":
            raise ModelFormatError(
                f"Variable {name!r} is {array.dtype} (a quantised model); only float16/float32 "
                "CTranslate2 models can be converted."
            )
        return array

    def layer_norm(src: str, dst: str) -> None:
        state[f"{dst}.weight"] = weight(f"{src}/gamma")
        state[f"{dst}.bias"] = weight(f"{src}/beta")

    def linear(src: str, dst: str) -> None:
        state[f"{dst}.weight"] = weight(f"{src}/weight")
        state[f"{dst}.bias"] = weight(f"{src}/bias")

    def self_attention(src: str, dst: str, d: int) -> None:
        qkv_w = weight(f"{src}/linear_0/weight")
        qkv_b = weight(f"{src}/linear_0/bias")
        if qkv_w.shape != (3 * d, d) or qkv_b.shape != (3 * d,):
            raise ModelFormatError(f"{src}: fused QKV has shape {qkv_w.shape}, not {(3 * d, d)}.")
        # The key projection has no bias in Whisper: a key bias adds the same amount to every
        # score of a query, which softmax cancels, so dropping it is exact.
        state[f"{dst}.query.weight"] = qkv_w[:d]
        state[f"{dst}.query.bias"] = qkv_b[:d]
        state[f"{dst}.key.weight"] = qkv_w[d : 2 * d]
        state[f"{dst}.value.weight"] = qkv_w[2 * d :]
        state[f"{dst}.value.bias"] = qkv_b[2 * d :]
        linear(f"{src}/linear_1", f"{dst}.out")
        layer_norm(f"{src}/layer_norm", f"{dst}_ln")

    def cross_attention(src: str, dst: str, d: int) -> None:
        linear(f"{src}/linear_0", f"{dst}.query")
        kv_w = weight(f"{src}/linear_1/weight")
        kv_b = weight(f"{src}/linear_1/bias")
        if kv_w.shape != (2 * d, d) or kv_b.shape != (2 * d,):
            raise ModelFormatError(f"{src}: fused KV has shape {kv_w.shape}, not {(2 * d, d)}.")
        state[f"{dst}.key.weight"] = kv_w[:d]
        state[f"{dst}.value.weight"] = kv_w[d:]
        state[f"{dst}.value.bias"] = kv_b[d:]
        linear(f"{src}/linear_2", f"{dst}.out")
        layer_norm(f"{src}/layer_norm", f"{dst}_ln")

    def mlp(src: str, dst: str) -> None:
        linear(f"{src}/linear_0", f"{dst}.mlp.0")
        linear(f"{src}/linear_1", f"{dst}.mlp.2")
        layer_norm(f"{src}/layer_norm", f"{dst}.mlp_ln")

    d_audio = dims["n_audio_state"]
    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    state["encoder.positional_embedding"] = weight("encoder/position_encodings/encodings")
    for i in range(dims["n_audio_layer"]):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        self_attention(f"{src}/self_attention", f"{dst}.attn", d_audio)
        mlp(f"{src}/ffn", dst)
    layer_norm("encoder/layer_norm", "encoder.ln_post")

    d_text = dims["n_text_state"]
    # decoder/projection is an alias of the embeddings in CTranslate2; openai-whisper ties them.
    state["decoder.token_embedding.weight"] = weight("decoder/embeddings/weight")
    state["decoder.positional_embedding"] = weight("decoder/position_encodings/encodings")
    for i in range(dims["n_text_layer"]):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        self_attention(f"{src}/self_attention", f"{dst}.attn", d_text)
        cross_attention(f"{src}/attention", f"{dst}.cross_attn", d_text)
        mlp(f"{src}/ffn", dst)
    layer_norm("decoder/layer_norm", "decoder.ln")
    return state


def checkpoint_path(model_files: ModelFiles, cache_dir: Path | str) -> Path:
    """Where the converted checkpoint for ``model_files`` lives in ``cache_dir``."""
    name = f"{model_files.profile}-{model_files.sha256[:16]}-v{CHECKPOINT_FORMAT}.pt"
    return Path(cache_dir) / "openai-whisper" / name


_convert_lock = threading.Lock()


def convert_checkpoint(model_files: ModelFiles, cache_dir: Path | str) -> Path:
    """Return an openai-whisper checkpoint for a verified CTranslate2 model, converting once.

    The checkpoint is written atomically (temporary file, then rename) beside a ``.sha256``
    file; a checkpoint whose hash no longer matches is rebuilt. ``model_files`` must come from
    ``prepare_model`` (its model.bin already verified).
    """
    import torch

    target = checkpoint_path(model_files, cache_dir)
    digest_file = target.with_name(target.name + ".sha256")
    with _convert_lock:
        if target.is_file() and digest_file.is_file():
            if cached_sha256(target) == digest_file.read_text().strip():
                return target
            logger.warning(
                "converted checkpoint failed verification; rebuilding", extra={"path": str(target)}
            )

        ct2 = read_ct2_model(model_files.model_bin)
        dims = whisper_dims(ct2)
        arrays = whisper_state_dict(ct2, dims)
        checkpoint = {
            "dims": dims,
            "model_state_dict": {
                key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()
            },
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                torch.save(checkpoint, out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _write_text_atomic(digest_file, cached_sha256(target) + "\n")
        logger.info(
            "converted CTranslate2 model to an openai-whisper checkpoint",
            extra={"profile": model_files.profile, "path": str(target)},
        )
        return target


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _alignment_heads_from_config(model: whisper.Whisper, config_file: Path) -> None:
    import torch

    heads = json.loads(config_file.read_text()).get("alignment_heads")
    if not heads:
        return
    dims = model.dims
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)


# ---------------------------------------------------------------------------------------------
# Progress and cancellation inside whisper.transcribe
# ---------------------------------------------------------------------------------------------
#
# whisper.transcribe() runs to the end in one call; its only per-window hook is the tqdm bar it
# updates after each 30 s window. The engine swaps the module's ``tqdm`` for a shim that, on a
# thread running an engine call, forwards those updates to the job's ProgressReporter (which
# also raises TranscriptionCancelled); on other threads it behaves like tqdm.

_local = threading.local()
_shim_lock = threading.Lock()


class _WindowProgress:
    def __init__(self, reporter: ProgressReporter, scale: float) -> None:
        self._reporter = reporter
        self._scale = scale
        self._frames = 0

    def __enter__(self) -> _WindowProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, frames: int) -> None:
        self._frames += frames
        self._reporter.advance(self._frames / _FRAMES_PER_SECOND * self._scale)


class _TqdmShim:
    def __init__(self, real: Any) -> None:
        self._real = real

    def tqdm(self, *args: Any, **kwargs: Any) -> Any:
        hook = getattr(_local, "hook", None)
        if hook is None:
            return self._real.tqdm(*args, **kwargs)
        return _WindowProgress(*hook)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _install_tqdm_shim() -> None:
    module = importlib.import_module("whisper.transcribe")
    with _shim_lock:
        current = getattr(module, "tqdm")  # noqa: B009 - the module's global, not a typed attr
        if not isinstance(current, _TqdmShim):
            setattr(module, "tqdm", _TqdmShim(current))  # noqa: B010


@contextmanager
def _progress_hook(reporter: ProgressReporter, scale: float) -> Iterator[None]:
    _local.hook = (reporter, scale)
    try:
        yield
    finally:
        _local.hook = None


# ---------------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------------


def speech_clips(audio: AudioArray) -> list[tuple[float, float]]:
    """Speech regions in seconds found by faster-whisper's Silero VAD (default options)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    stamps = get_speech_timestamps(audio, VadOptions())
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


def to_mel_clips(clips: list[tuple[float, float]], audio: AudioArray) -> list[tuple[float, float]]:
    """Snap clips to whole mel frames inside the audio.

    whisper.transcribe() loops forever when a clip ends past the last mel frame (the window it
    slices is empty, so ``seek`` never advances), so ends are clamped to the content frames.
    """
    content_frames = audio.shape[0] // _HOP_LENGTH
    snapped: list[tuple[float, float]] = []
    for start, end in clips:
        first = max(0, round(start * _FRAMES_PER_SECOND))
        last = min(content_frames, round(end * _FRAMES_PER_SECOND))
        if last - first >= _MIN_CLIP_FRAMES:
            snapped.append((first / _FRAMES_PER_SECOND, last / _FRAMES_PER_SECOND))
    return snapped


class OpenAIWhisperEngine:
    """A loaded openai-whisper model. Calls are serialised: the model's decoding state (KV-cache
    hooks, alignment hooks) is not safe to share between threads."""

    name = ENGINE_NAME

    def __init__(
        self,
        model_files: ModelFiles,
        *,
        cache_dir: Path | str,
        device: str = "cpu",
        cpu_threads: int = 2,
    ) -> None:
        import torch
        import whisper

        from workers.engines.silero import use_streaming_onnx

        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}.")
        use_streaming_onnx()  # the VAD that splits long files: bounded memory
        if device == "cpu":
            # A process-wide setting; workers run one engine each.
            torch.set_num_threads(cpu_threads)
        self.profile = model_files.profile
        self.model_files = model_files
        self.device = device
        self.cpu_threads = cpu_threads
        self.fp16 = device == "cuda"
        self.checkpoint = convert_checkpoint(model_files, cache_dir)
        try:
            model = whisper.load_model(os.fspath(self.checkpoint), device=device)
        except RuntimeError as exc:  # strict load_state_dict: names or shapes disagree
            raise ModelFormatError(f"The converted checkpoint does not load: {exc}") from exc
        heads = whisper._ALIGNMENT_HEADS.get(self.profile)
        if heads is not None:
            model.set_alignment_heads(heads)
        else:
            _alignment_heads_from_config(model, model_files.path / "config.json")
        self._model = model
        self._lock = threading.Lock()
        _install_tqdm_shim()
        logger.info(
            "engine loaded",
            extra={"engine": self.name, "profile": self.profile, "device": device},
        )

    def transcribe(
        self,
        audio_path: AudioPath,
        options: TranscriptionOptions,
        progress_callback: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> TranscriptionResult:
        audio, duration, reporter = begin_transcription(
            self.model_files, audio_path, options, progress_callback, should_cancel
        )

        clips = to_mel_clips(speech_clips(audio) if options.vad else [(0.0, duration)], audio)
        language = options.language or ""
        language_probability = 0.0
        raw: list[Segment] = []
        if clips:
            with self._lock:
                if options.language is None:
                    language, language_probability = self._detect_language(audio, clips[0][0])
                raw = self._run(audio, options, language, clips, reporter)
        reporter.finish()

        final = finalize_segments(raw, duration=duration)
        language, language_probability = reported_language(
            options.language, language, language_probability, final
        )
        speech = sum(end - start for start, end in clips)
        return TranscriptionResult(
            text=join_text(final),
            language=language,
            language_probability=round(language_probability, 4),
            duration=round(duration, 3),
            segments=final,
            task=options.task,
            engine_info=self._engine_info(options, speech),
        )

    def _detect_language(self, audio: AudioArray, start: float) -> tuple[str, float]:
        import whisper

        window = whisper.pad_or_trim(audio[int(start * SAMPLE_RATE) :])
        mel = whisper.log_mel_spectrogram(window, self._model.dims.n_mels)
        mel = mel.to(self._model.device).to(self._dtype())
        _, probs = self._model.detect_language(mel)
        assert isinstance(probs, dict)
        language = max(probs, key=probs.__getitem__)
        return language, float(probs[language])

    def _prompt(self, options: TranscriptionOptions) -> str | None:
        """The initial prompt, with the hotwords at its end. openai-whisper has no hotwords: with
        them the prompt is carried into every window (``carry_initial_prompt``), ahead of the
        previous window's words, and the decoder keeps the last 223 tokens of the two. Kept
        within ``CARRIED_PROMPT_TOKENS`` (hotwords at most 64, the prompt's end), the carried
        prompt always fits, hotwords included, and leaves room for the previous words."""
        from whisper.tokenizer import get_tokenizer

        if options.hotwords is None:
            return options.initial_prompt
        tokenizer = get_tokenizer(
            self._model.is_multilingual, num_languages=self._model.num_languages
        )
        hotwords, initial_prompt = fit_prompt(
            tokenizer.encode,
            tokenizer.decode,
            options.hotwords,
            options.initial_prompt,
            total=CARRIED_PROMPT_TOKENS,
        )
        return " ".join(filter(None, [initial_prompt, hotwords])) or None

    def _dtype(self) -> torch.dtype:
        import torch

        return torch.float16 if self.fp16 else torch.float32

    def _run(
        self,
        audio: AudioArray,
        options: TranscriptionOptions,
        language: str,
        clips: list[tuple[float, float]],
        reporter: ProgressReporter,
    ) -> list[Segment]:
        speech = sum(end - start for start, end in clips)
        scale = reporter.total / speech if speech > 0 else 1.0
        prompt = self._prompt(options)
        with _progress_hook(reporter, scale):
            result = self._model.transcribe(
                audio,
                verbose=None,
                language=language,
                task=options.task,
                beam_size=options.beam_size,
                best_of=5,
                word_timestamps=options.word_timestamps,
                initial_prompt=prompt,
                carry_initial_prompt=options.hotwords is not None,
                condition_on_previous_text=True,
                clip_timestamps=[t for clip in clips for t in clip],
                fp16=self.fp16,
            )
        return [
            Segment(
                id=int(seg["id"]),
                start=float(seg["start"]),
                end=float(seg["end"]),
                text=str(seg["text"]),
                avg_logprob=float(seg["avg_logprob"]),
                no_speech_prob=float(seg["no_speech_prob"]),
                words=[
                    Word(
                        float(w["start"]), float(w["end"]), str(w["word"]), float(w["probability"])
                    )
                    for w in seg.get("words") or []
                ],
                seek=int(seg["seek"]),
                tokens=[int(t) for t in seg["tokens"]],
                temperature=float(seg["temperature"]),
                compression_ratio=float(seg["compression_ratio"]),
            )
            for seg in result["segments"]
        ]

    def _engine_info(self, options: TranscriptionOptions, speech: float) -> dict[str, Any]:
        import torch
        import whisper

        return {
            "engine": self.name,
            "engine_version": whisper.__version__,
            "torch_version": torch.__version__,
            "model_profile": self.profile,
            "model_sha256": self.model_files.sha256,
            "checkpoint": self.checkpoint.name,
            "device": self.device,
            "compute_type": "float16" if self.fp16 else "float32",
            "cpu_threads": self.cpu_threads,
            "batched": False,
            "batch_size": None,
            "beam_size": options.beam_size,
            "vad": options.vad,
            "word_timestamps": options.word_timestamps,
            "language_requested": options.language,
            "duration_after_vad": round(speech, 3),
        }
