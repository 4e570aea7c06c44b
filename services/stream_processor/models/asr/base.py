"""The transcriber interface, its result types, audio preparation and the cloud retry policy.

Plain synchronous code, no Kafka: the Faust agent, ``lupita replay`` and ``bench/asr.py`` call
the same objects.

Times in a :class:`TranscriptResult` are seconds from the start of the audio that was passed in;
:meth:`TranscriptResult.shifted` moves them to call time.
"""

from __future__ import annotations

import io
import logging
import math
import wave
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import numpy as np

from stream_processor.models import cloud
from stream_processor.models.cloud import BackendError, error_summary, is_retryable_status, parse_retry_after  # noqa: F401

log = logging.getLogger("stream_processor.models.asr")

WHISPER_RATE = 16000  # Whisper models take 16 kHz mono float32


# --- errors ------------------------------------------------------------------------------------


class AsrError(RuntimeError):
    """Base class of every transcription error."""


class AudioInputError(AsrError, ValueError):
    """The audio handed to a transcriber cannot be transcribed as it is (the message says why)."""


class AsrBackendError(AsrError, BackendError):
    """A cloud backend failed. ``retryable`` tells whether trying again may help."""


class AsrAuthError(AsrBackendError):
    """The backend refused the credentials (401/403): never retried; fix the API key setting."""


class AsrMalformedResponse(AsrBackendError):
    """The backend answered 2xx with a body that is not the documented JSON."""


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word; ``probability`` is the backend's confidence in [0, 1] (None: not given)."""

    text: str
    start: float
    end: float
    probability: float | None = None


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    """One decoded stretch of speech with its words and the decoder's quality signals."""

    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    # Backend-given confidence when there are no word probabilities (e.g. Deepgram alternative).
    confidence_hint: float | None = None

    @property
    def confidence(self) -> float | None:
        """Mean word probability; else the backend's hint; else exp(avg_logprob); else None."""
        probs = [w.probability for w in self.words if w.probability is not None]
        if probs:
            return float(sum(probs) / len(probs))
        if self.confidence_hint is not None:
            return float(self.confidence_hint)
        if self.avg_logprob is not None:
            return float(math.exp(min(0.0, self.avg_logprob)))
        return None


@dataclass(frozen=True, slots=True)
class TranscriptResult:
    """What a transcriber made of one piece of audio (a speech segment, or the open part of one)."""

    segments: tuple[TranscriptSegment, ...]
    language: str
    is_partial: bool
    backend: str  # "local", "openai", "deepgram"
    model: str
    audio_seconds: float
    # Why text was removed by the guards, e.g. ("silence", "hallucination:amara"), in order.
    guard_actions: tuple[str, ...] = ()
    # Set when a fallback transcriber answered instead of the configured one.
    fallback_from: str | None = None
    fallback_reason: str | None = None

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text).strip()

    @property
    def words(self) -> tuple[Word, ...]:
        return tuple(w for s in self.segments for w in s.words)

    @property
    def is_empty(self) -> bool:
        return not self.text

    @property
    def confidence(self) -> float | None:
        """Average confidence: over all words when the backend gave word probabilities, else the
        mean of the segments' confidences weighted by their length in characters."""
        probs = [w.probability for w in self.words if w.probability is not None]
        if probs:
            return float(sum(probs) / len(probs))
        pairs = [(s.confidence, max(1, len(s.text))) for s in self.segments if s.confidence is not None]
        if not pairs:
            return None
        return float(sum(c * n for c, n in pairs) / sum(n for _, n in pairs))

    def shifted(self, offset_s: float) -> "TranscriptResult":
        """The same result with every time moved by ``offset_s`` (segment time -> call time)."""
        def move(s: TranscriptSegment) -> TranscriptSegment:
            words = tuple(replace(w, start=w.start + offset_s, end=w.end + offset_s) for w in s.words)
            return replace(s, start=s.start + offset_s, end=s.end + offset_s, words=words)

        return replace(self, segments=tuple(move(s) for s in self.segments))


# --- interface ---------------------------------------------------------------------------------


class Transcriber(ABC):
    """Spanish speech -> text. Implementations are thread-safe for concurrent ``transcribe`` calls."""

    #: short backend name used in results, logs and metrics labels
    name: str = "?"
    model: str = "?"

    @abstractmethod
    def transcribe(self, pcm: np.ndarray, sample_rate: int, *, vocabulary: tuple[str, ...] = ()) -> TranscriptResult:
        """Final transcript of a closed speech segment (word timings where the backend has them).

        ``vocabulary``: terms of this call to bias the decoding toward (names, places,
        medications; :mod:`stream_processor.models.asr.vocabulary`); backends without a biasing
        mechanism ignore it."""

    def transcribe_partial(self, pcm: np.ndarray, sample_rate: int, *, vocabulary: tuple[str, ...] = ()) -> TranscriptResult:
        """Cheaper hypothesis for a segment that is still open; ``is_partial`` is True.

        Backends without a cheaper mode transcribe normally and mark the result partial.
        """
        return replace(self.transcribe(pcm, sample_rate, vocabulary=vocabulary), is_partial=True)

    def transcribe_many(self, items: list[tuple[np.ndarray, int]], *, vocabulary: tuple[str, ...] = ()) -> list[TranscriptResult]:
        """Finals of several closed segments (``(pcm, sample_rate)`` each), in order. One by one
        here; the local backend packs them into shared windows when configured to."""
        return [self.transcribe(pcm, rate, vocabulary=vocabulary) for pcm, rate in items]

    def transcribe_batch(self, requests: list[list[tuple[np.ndarray, int]]], *,
                         vocabulary: tuple[str, ...] = ()) -> list[list[TranscriptResult]]:
        """:meth:`transcribe_many` of several requests (each the closed segments of one leg; two
        requests may be two calls: nothing is shared between them but the decode), per request in
        order. One request after the other here; the local backend decodes their windows in one
        batched call when configured to."""
        return [self.transcribe_many(items, vocabulary=vocabulary) for items in requests]

    def with_decoding(self, *, beam_size: int | None = None,
                      temperatures: tuple[float, ...] | None = None) -> "Transcriber":
        """This backend decoding finals with another beam size or temperature ladder (None: keep),
        sharing its model and clients. Backends without those knobs (the cloud ones) return
        themselves."""
        return self

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and models."""


# --- audio -------------------------------------------------------------------------------------

MAX_RATE = 192000


def as_mono_float32(pcm: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validate a mono segment and return it as float32 in [-1, 1].

    Accepts float32/float64 in [-1, 1] (1-D, or 2-D with one column) and int16 PCM (scaled by
    1/32768). Anything else is refused with an :class:`AudioInputError` saying what was wrong.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or not 1000 <= int(sample_rate) <= MAX_RATE:
        raise AudioInputError(f"sample_rate must be an integer number of Hz in [1000, {MAX_RATE}], "
                              f"got {sample_rate!r}")
    if not isinstance(pcm, np.ndarray):
        raise AudioInputError(f"audio must be a numpy array, got {type(pcm).__name__}")
    x = pcm
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise AudioInputError(f"audio must be mono (1-D), got an array of shape {pcm.shape}; "
                              "pass one leg at a time")
    if x.dtype == np.int16:
        return (x.astype(np.float32) / 32768.0)
    if x.dtype not in (np.float32, np.float64):
        raise AudioInputError(f"audio must be float32 in [-1, 1] or int16 PCM, got dtype {x.dtype}")
    if x.size and not np.isfinite(x).all():
        raise AudioInputError("audio contains NaN or infinite samples")
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0 + 1e-3:
        raise AudioInputError(f"float audio must lie in [-1, 1] (peak {peak:.3g}); int16 PCM must be "
                              "passed as dtype int16, not as float")
    return x.astype(np.float32, copy=False)


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level of float audio in dB relative to full scale (-inf for digital silence)."""
    if x.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else float("-inf")


def _kaiser_sinc_phases(up: int, down: int, half_width: int, beta: float) -> tuple[np.ndarray, int]:
    """Polyphase matrix ``(up, taps)`` of a Kaiser-windowed sinc low-pass at the upsampled rate."""
    scale = max(up, down)
    n_half = half_width * scale
    t = np.arange(-n_half, n_half + 1, dtype=np.float64)
    cutoff = 1.0 / scale  # of the upsampled Nyquist: the lower of the two Nyquists
    h = cutoff * np.sinc(cutoff * t) * np.kaiser(t.size, beta) * up  # * up: zero-stuffing gain
    taps = -(-h.size // up)
    h = np.concatenate([h, np.zeros(taps * up - h.size)])
    # phase p holds h[p], h[p + up], h[p + 2 up], ...
    return h.reshape(taps, up).T.copy(), n_half


def resample(x: np.ndarray, from_rate: int, to_rate: int, *, half_width: int = 16, beta: float = 8.0) -> np.ndarray:
    """Rational-ratio polyphase resampling with a Kaiser-windowed sinc filter (numpy only).

    Equivalent to zero-stuffing by ``up``, low-pass filtering below the lower Nyquist and keeping
    every ``down``-th sample, but computed per output sample (``2 * half_width`` taps at the
    lower rate), so 8 kHz -> 16 kHz costs about 33 multiply-adds per output sample. The output
    has ``ceil(len(x) * to_rate / from_rate)`` samples and is aligned with the input (no delay).
    """
    x = np.asarray(x, dtype=np.float32)
    if from_rate == to_rate:
        return x.copy()
    g = math.gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // g, int(from_rate) // g
    phases, n_half = _kaiser_sinc_phases(up, down, half_width, beta)
    taps = phases.shape[1]
    n_out = -(-x.size * up // down)
    if x.size == 0:
        return np.zeros(0, dtype=np.float32)
    pad_left = taps
    pad_right = taps + n_half // up + 2
    xp = np.concatenate([np.zeros(pad_left, np.float32), x, np.zeros(pad_right, np.float32)])
    out = np.empty(n_out, dtype=np.float32)
    j = np.arange(taps)
    block = 32768
    for b0 in range(0, n_out, block):
        n = np.arange(b0, min(n_out, b0 + block), dtype=np.int64)
        m = n * down + n_half  # position in the upsampled, filter-delayed stream
        idx = (m // up)[:, None] - j[None, :] + pad_left
        coeffs = phases[m % up]
        out[n[0]: n[-1] + 1] = np.einsum("ij,ij->i", coeffs, xp[idx]).astype(np.float32)
    return out


def to_whisper_input(pcm: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validated mono float32 at 16 kHz (resampled with :func:`resample` when needed)."""
    x = as_mono_float32(pcm, sample_rate)
    if int(sample_rate) != WHISPER_RATE:
        x = resample(x, int(sample_rate), WHISPER_RATE)
        np.clip(x, -1.0, 1.0, out=x)
    return x


def encode_wav(pcm: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV in memory, at the audio's own rate (what the cloud backends upload)."""
    x = as_mono_float32(pcm, sample_rate)
    pcm16 = np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm16.tobytes())
    return buf.getvalue()


def sanitize_words(words: list[Word], duration_s: float) -> tuple[Word, ...]:
    """Word timings clamped into ``[0, duration_s]`` and made monotonic.

    Whisper's cross-attention alignment occasionally puts a word's start a few ms before the
    previous word's end, or past the end of the audio; downstream code (turns, overlaps, words
    per minute) relies on ``start <= end <= next start``.
    """
    out: list[Word] = []
    prev_end = 0.0
    for w in words:
        text = w.text.strip()
        if not text:
            continue
        start = min(max(float(w.start), prev_end, 0.0), duration_s)
        end = min(max(float(w.end), start), duration_s)
        prob = None if w.probability is None else min(1.0, max(0.0, float(w.probability)))
        out.append(Word(text, round(start, 3), round(end, 3), prob))
        prev_end = end
    return tuple(out)


# --- retries (cloud backends) ------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class RetryPolicy(cloud.RetryPolicy):
    """:class:`stream_processor.models.cloud.RetryPolicy` logging as the transcriber's."""

    label: str = "asr"
    stage: str = "transcriber"
