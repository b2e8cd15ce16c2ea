"""Exceptions raised by the Whisper engines and the model resolver.

They carry a stable ``code`` so that a job can store why it failed and the API can map the
failure to a response without parsing messages.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class for every error raised by ``workers.engines``."""

    code = "engine_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProfileError(EngineError, ValueError):
    """A model profile or language that cannot be used (unknown, or a conflicting pair)."""

    code = "invalid_model_profile"


class UnsupportedLanguageError(ProfileError):
    """A language code that Whisper does not know."""

    code = "unsupported_language"


class ModelError(EngineError):
    """The model files cannot be used."""

    code = "model_error"


class ModelNotFoundError(ModelError):
    """The model files for a profile are not installed where they were looked for."""

    code = "model_not_found"


class ModelIntegrityError(ModelError):
    """A model file's sha256 differs from the pinned value: it is corrupt or was tampered with."""

    code = "model_integrity"


class ModelFormatError(ModelError):
    """A model file cannot be parsed or converted (unexpected layout or data type)."""

    code = "model_format"


class TranscriptionCancelled(EngineError):
    """The caller's ``should_cancel`` returned true; the transcription stopped part-way."""

    code = "cancelled"

    def __init__(self, message: str = "Transcription cancelled.", *, seconds_done: float = 0.0):
        super().__init__(message)
        self.seconds_done = seconds_done


class AudioDecodeError(EngineError):
    """The engine could not decode the audio file it was given."""

    code = "audio_decode_failed"
