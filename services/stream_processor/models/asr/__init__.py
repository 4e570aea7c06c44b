"""Spanish speech recognition for the transcriber stage: plain synchronous code, no Kafka.

- :mod:`.base`: the :class:`Transcriber` interface, result dataclasses (:class:`TranscriptResult`,
  :class:`TranscriptSegment`, :class:`Word`), audio checks and numpy polyphase resampling, the
  cloud retry policy and the error types.
- :mod:`.whisper_local`: the default backend, faster-whisper with the packaged Whisper base
  weights (int8 on the CPU).
- :mod:`.openai_backend` / :mod:`.deepgram_backend`: cloud backends via their official clients.
- :mod:`.guards`: silence, known-hallucination and repetition-loop guards, applied to every backend.
- :mod:`.settings` / :mod:`.factory`: ``LUPITA_ASR_*`` settings and the backend chosen from them,
  with the cloud -> local fallback.

Importing this package loads neither faster-whisper nor a cloud client; the backends import
them when built.
"""

from stream_processor.models.asr.base import (
    AsrAuthError,
    AsrBackendError,
    AsrError,
    AsrMalformedResponse,
    AudioInputError,
    RetryPolicy,
    Transcriber,
    TranscriptResult,
    TranscriptSegment,
    Word,
)
from stream_processor.models.asr.factory import FallbackTranscriber, build_transcriber
from stream_processor.models.asr.guards import GuardConfig
from stream_processor.models.asr.settings import AsrSettings

__all__ = [
    "AsrAuthError",
    "AsrBackendError",
    "AsrError",
    "AsrMalformedResponse",
    "AsrSettings",
    "AudioInputError",
    "FallbackTranscriber",
    "GuardConfig",
    "RetryPolicy",
    "Transcriber",
    "TranscriptResult",
    "TranscriptSegment",
    "Word",
    "build_transcriber",
]
