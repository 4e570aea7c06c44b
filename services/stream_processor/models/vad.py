"""Streaming, batched voice activity detection with Silero VAD (ONNX); pure, no Kafka.

Three pieces, each usable on its own (the Faust agent, ``lupita replay`` and ``bench/vad.py``
call the same code):

- :class:`SileroModel`: the Silero VAD ONNX graph in one onnxruntime session. Inputs
  ``input[B, context + window]``, ``state[2, B, 128]``, ``sr``; the batch dimension carries
  independent streams (row ``b`` of the output depends only on row ``b`` of the inputs).
  8 kHz: windows of 256 samples + 32 samples of context; 16 kHz: 512 + 64.
- :class:`Segmenter`: per stream, turns the probability of each window into segment
  ``start``/``end`` events in stream sample time, with exactly the semantics of silero's
  offline ``get_speech_timestamps`` (hysteresis ``threshold``/``neg_threshold``, minimum speech,
  minimum silence, padding, maximum segment length split at the longest inner silence), but
  incrementally: an event is emitted as soon as no later audio can change it.
- :class:`BatchedVad`: per-stream model state rows, context tails and pending samples keyed by a
  stream id (e.g. ``"call_id:leg"``); :meth:`BatchedVad.step` runs ONE batched inference per
  sample rate over every stream that has a full window ready. :meth:`BatchedVad.export_state`
  / :meth:`BatchedVad.import_state` carry a stream across worker restarts and rebalances
  (a JSON-safe dict: model state row, context, pending samples, segmenter, sample counter).

Concatenating the segments of a stream fed in arbitrary pieces, batched with any other
streams, and exported/imported at any point, gives the same result as running silero's
``get_speech_timestamps`` over the whole stream at once (``use_max_poss_sil_at_max_speech``
mode, its default).
"""

from __future__ import annotations

import base64
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lupita.audio import SUPPORTED_RATES

WINDOW_SAMPLES = {8000: 256, 16000: 512}
CONTEXT_SAMPLES = {8000: 32, 16000: 64}
STATE_SHAPE = (2, 128)  # one stream's row of the model state [2, B, 128]
INSTALL_HINT = "pip install --no-deps silero-vad==6.2.3"
MODEL_FILE = "silero_vad.onnx"
# silero's get_speech_timestamps: a silence must exceed this to be a place to cut an over-long segment.
MIN_SILENCE_AT_MAX_SPEECH_MS = 98
EXPORT_VERSION = 1

assert set(WINDOW_SAMPLES) == set(SUPPORTED_RATES)


def _check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or int(sample_rate) not in WINDOW_SAMPLES:
        raise ValueError(f"sample rate must be one of {tuple(WINDOW_SAMPLES)} Hz, got {sample_rate!r}")
    return int(sample_rate)


# --- model ---------------------------------------------------------------------------------


def model_path() -> Path:
    """Path of ``silero_vad/data/silero_vad.onnx`` in the installed ``silero-vad`` package.

    Found with ``importlib.util.find_spec``, which locates the package without importing it
    (``import silero_vad`` imports torch, which this project does not install).
    """
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the silero-vad package is not installed; install it with: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / MODEL_FILE
        if path.is_file():
            return path
    raise RuntimeError(
        f"silero-vad is installed but has no data/{MODEL_FILE}; reinstall it with: {INSTALL_HINT}"
    )


class SileroModel:
    """The Silero VAD ONNX model in one onnxruntime session (CPU), loaded once.

    ``intra_op_num_threads`` (default 1) is the number of threads one inference may use; the
    onnxruntime wheels from PyPI use their own thread pool (not OpenMP), so OMP_NUM_THREADS
    does not apply. Thread-safe for concurrent :meth:`run` calls (onnxruntime sessions are).
    """

    def __init__(self, path: str | Path | None = None, *, intra_op_num_threads: int = 1) -> None:
        import onnxruntime as ort

        if intra_op_num_threads < 1:
            raise ValueError(f"intra_op_num_threads must be >= 1, got {intra_op_num_threads}")
        self.path = Path(path) if path is not None else model_path()
        if not self.path.is_file():
            raise RuntimeError(f"VAD model file {self.path} not found; install it with: {INSTALL_HINT}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.intra_op_num_threads = intra_op_num_threads
        self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = {rate: np.array(rate, dtype=np.int64) for rate in WINDOW_SAMPLES}

    def run(self, x: np.ndarray, state: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """One window for each of ``B`` streams.

        ``x``: float32 ``[B, context + window]`` (the stream's previous context samples, then
        its next window), ``state``: float32 ``[2, B, 128]``. Returns ``(probabilities[B],
        new_state[2, B, 128])``.
        """
        rate = _check_rate(sample_rate)
        width = CONTEXT_SAMPLES[rate] + WINDOW_SAMPLES[rate]
        if x.ndim != 2 or x.shape[1] != width or x.shape[0] < 1:
            raise ValueError(f"input must be [B, {width}] at {rate} Hz, got {list(x.shape)}")
        if state.shape != (STATE_SHAPE[0], x.shape[0], STATE_SHAPE[1]):
            raise ValueError(f"state must be [2, {x.shape[0]}, 128], got {list(state.shape)}")
        out, new_state = self._session.run(
            None,
            {"input": np.ascontiguousarray(x, dtype=np.float32),
             "state": np.ascontiguousarray(state, dtype=np.float32),
             "sr": self._sr[rate]},
        )
        return out[:, 0], new_state


# --- segmentation --------------------------------------------------------------------------


class VadSettings(BaseSettings):
    """Segmentation settings (silero's ``get_speech_timestamps`` parameters), declared here once:
    the vad stage's settings (:class:`stream_processor.stages.vad.settings.VadStageSettings`)
    extend this class, and the environment names are ``LUPITA_<FIELD>`` (``LUPITA_VAD_THRESHOLD``...).

    vad_threshold: a window with probability >= this is speech; vad_neg_threshold: while in
    speech, a window below this is silence (None: ``max(threshold - 0.15, 0.01)``);
    vad_min_speech_ms: shorter segments are dropped; vad_min_silence_ms: silence that ends a
    segment; vad_speech_pad_ms: added on both sides (halved when two segments are closer than
    twice the padding); vad_max_segment_s: longer speech is split at its longest inner silence
    (> 98 ms), or cut hard; at most 30 s (Whisper's window, and a segment's audio travels inline
    in its Kafka record).
    """

    model_config = SettingsConfigDict(env_prefix="LUPITA_", frozen=True, extra="ignore", hide_input_in_errors=True)

    vad_threshold: float = Field(default=0.5, gt=0, lt=1)
    vad_neg_threshold: float | None = Field(default=None, gt=0, lt=1)
    vad_min_speech_ms: int = Field(default=250, ge=0)
    vad_min_silence_ms: int = Field(default=300, ge=0)
    vad_speech_pad_ms: int = Field(default=100, ge=0)
    vad_max_segment_s: float = Field(default=15.0, gt=0, le=30, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> "VadSettings":
        if self.vad_neg_threshold is not None and not self.vad_neg_threshold <= self.vad_threshold:
            raise ValueError(f"vad_neg_threshold must be in (0, vad_threshold={self.vad_threshold}], "
                             f"got {self.vad_neg_threshold}")
        if self.vad_max_segment_s * 1000 <= 2 * self.vad_speech_pad_ms + 32:
            raise ValueError(
                f"vad_max_segment_s must be longer than twice vad_speech_pad_ms plus one window "
                f"({(2 * self.vad_speech_pad_ms + 32) / 1000:g} s), got {self.vad_max_segment_s}"
            )
        return self

    @property
    def effective_neg_threshold(self) -> float:
        return self.vad_neg_threshold if self.vad_neg_threshold is not None else max(self.vad_threshold - 0.15, 0.01)

    def segmentation(self) -> dict[str, Any]:
        """The segmentation parameters as a stream state records them (a state is only imported
        under the same ones)."""
        return {"threshold": self.vad_threshold, "neg_threshold": self.vad_neg_threshold,
                "min_speech_ms": self.vad_min_speech_ms, "min_silence_ms": self.vad_min_silence_ms,
                "speech_pad_ms": self.vad_speech_pad_ms, "max_segment_s": self.vad_max_segment_s}


@dataclass(frozen=True)
class SegmentEvent:
    """A segment opened (``start``) or closed (``end``), in samples of its stream.

    ``seq`` numbers the segments of a stream from 0. An ``end`` event repeats the start.
    Samples are padded positions (what to cut from the stream's audio).
    """

    kind: Literal["start", "end"]
    seq: int
    start_sample: int
    end_sample: int | None
    sample_rate: int

    @property
    def start_s(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def end_s(self) -> float | None:
        return None if self.end_sample is None else self.end_sample / self.sample_rate


class Segmenter:
    """Streaming port of silero's ``get_speech_timestamps`` for one stream (pure).

    :meth:`push` takes the probability of each successive window (window ``i`` covers samples
    ``[i * W, (i + 1) * W)``, ``W`` = 256 at 8 kHz, 512 at 16 kHz) and returns the events it
    makes final; :meth:`finish` takes the real number of samples of the stream (the last
    window may have been zero-padded) and closes everything.

    When an event is emitted: ``start`` once the segment can no longer be dropped as too short
    (about ``min_speech_ms`` after speech begins); ``end`` when the segment closed (``min_silence_ms``
    of silence) and no following segment can start within ``2 * speech_pad_ms`` of it (with the
    defaults, at once).
    """

    def __init__(self, sample_rate: int, settings: VadSettings = VadSettings()) -> None:
        self.sample_rate = _check_rate(sample_rate)
        self.settings = settings
        sr = self.sample_rate
        self.window = WINDOW_SAMPLES[sr]
        # Same arithmetic (floats) as silero's get_speech_timestamps_from_probs.
        self._min_speech = sr * settings.vad_min_speech_ms / 1000
        self._pad = sr * settings.vad_speech_pad_ms / 1000
        self._max_speech = sr * settings.vad_max_segment_s - self.window - 2 * self._pad
        self._min_silence = sr * settings.vad_min_silence_ms / 1000
        self._min_silence_at_max = sr * MIN_SILENCE_AT_MAX_SPEECH_MS / 1000
        self._thr = settings.vad_threshold
        self._neg = settings.effective_neg_threshold
        # state (all ints/bools: see to_dict)
        self.windows = 0  # windows pushed so far
        self._triggered = False
        self._temp_end = 0
        self._possible_ends: list[tuple[int, int]] = []
        self._open_start: int | None = None  # raw start of the segment in progress
        self._open_seq: int | None = None  # its seq once its start event was emitted
        self._open_padded: int | None = None
        self._pending: tuple[int, int, int] | None = None  # (seq, padded start, raw end): end not final yet
        self._next_seq = 0
        self.finished = False

    # -- public ---------------------------------------------------------------------------

    def push(self, probability: float) -> list[SegmentEvent]:
        if self.finished:
            raise ValueError("segmenter already finished")
        p = float(probability)
        if not (0.0 <= p <= 1.0):
            raise ValueError(f"speech probability must be in [0, 1], got {probability!r}")
        cur = self.windows * self.window
        self.windows += 1
        events: list[SegmentEvent] = []
        self._advance(p, cur, events)
        self._maybe_confirm_open(cur, events)
        self._maybe_finalize_pending(cur, events)
        return events

    def finish(self, total_samples: int) -> list[SegmentEvent]:
        """Close the stream: ``total_samples`` real samples were covered by the pushed windows."""
        if self.finished:
            raise ValueError("segmenter already finished")
        low = (self.windows - 1) * self.window + 1 if self.windows else 0
        if not (low <= total_samples <= self.windows * self.window):
            raise ValueError(
                f"total_samples={total_samples} does not fit {self.windows} window(s) of {self.window} samples"
            )
        events: list[SegmentEvent] = []
        if self._open_start is not None:
            # A confirmed segment always qualifies here (its length bound was checked), so the
            # `or` only spares a recomputation; unconfirmed ones follow silero's rule.
            if self._open_seq is not None or total_samples - self._open_start > self._min_speech:
                self._append(total_samples, events)
            self._clear_open()
        if self._pending is not None:
            seq, start, raw_end = self._pending
            self._emit_end(seq, start, int(min(total_samples, raw_end + self._pad)), events)
        self._triggered = False
        self.finished = True
        return events

    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "triggered": self._triggered,
            "temp_end": self._temp_end,
            "possible_ends": [list(pe) for pe in self._possible_ends],
            "open_start": self._open_start,
            "open_seq": self._open_seq,
            "open_padded": self._open_padded,
            "pending": list(self._pending) if self._pending is not None else None,
            "next_seq": self._next_seq,
            "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], sample_rate: int, settings: VadSettings = VadSettings()) -> Segmenter:
        seg = cls(sample_rate, settings)
        try:
            seg.windows = _nonneg_int(data["windows"])
            seg._triggered = bool(data["triggered"])
            seg._temp_end = _nonneg_int(data["temp_end"])
            seg._possible_ends = [(_nonneg_int(a), _nonneg_int(b)) for a, b in data["possible_ends"]]
            seg._open_start = _opt_int(data["open_start"])
            seg._open_seq = _opt_int(data["open_seq"])
            seg._open_padded = _opt_int(data["open_padded"])
            pending = data["pending"]
            if pending is not None:
                seg._pending = tuple(_nonneg_int(v) for v in pending)  # type: ignore[assignment]
            seg._next_seq = _nonneg_int(data["next_seq"])
            seg.finished = bool(data["finished"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed segmenter state: {exc!r}") from None
        if seg._pending is not None and len(seg._pending) != 3:
            raise ValueError("malformed segmenter state: pending must hold 3 integers")
        if (seg._open_start is None) == seg._triggered:
            raise ValueError("malformed segmenter state: open_start and triggered disagree")
        return seg

    # -- silero's loop, one window at a time ------------------------------------------------

    def _advance(self, p: float, cur: int, events: list[SegmentEvent]) -> None:
        if p >= self._thr and self._temp_end:
            silence = cur - self._temp_end
            if silence > self._min_silence_at_max:
                self._possible_ends.append((self._temp_end, silence))
            self._temp_end = 0
        if p >= self._thr and not self._triggered:
            self._triggered = True
            self._open_start = cur
            return
        if self._triggered and cur - self._open_start > self._max_speech:  # type: ignore[operator]
            if self._possible_ends:
                # Cut at the longest silence inside the segment (first one on ties, like max()).
                cut, silence = max(self._possible_ends, key=lambda pe: pe[1])
                self._append(cut, events)
                resume = cut + silence
                if resume < cut + cur:  # silero's condition: speech resumed after that silence
                    self._open_start = resume
                else:
                    self._triggered = False
                self._temp_end = 0
                self._possible_ends = []
            else:
                self._append(cur, events)
                self._temp_end = 0
                self._triggered = False
                self._possible_ends = []
                return
        if p < self._neg and self._triggered:
            if not self._temp_end:
                self._temp_end = cur
            if cur - self._temp_end < self._min_silence:
                return
            end = self._temp_end
            if self._open_seq is not None or end - self._open_start > self._min_speech:  # type: ignore[operator]
                self._append(end, events)
            self._clear_open()
            self._temp_end = 0
            self._triggered = False
            self._possible_ends = []

    # -- incremental padding and emission --------------------------------------------------

    def _maybe_confirm_open(self, cur: int, events: list[SegmentEvent]) -> None:
        """Emit the start of the open segment once it can no longer be dropped as too short.

        Its end will be at least the pending silence start (``temp_end``), or past this
        window's first sample; silero drops a segment only when ``end - start <= min_speech``.
        """
        if self._open_start is None or self._open_seq is not None:
            return
        least_end = self._temp_end if self._temp_end else cur + 1
        if least_end - self._open_start > self._min_speech:
            self._open_seq, self._open_padded = self._emit_start(self._open_start, events)

    def _maybe_finalize_pending(self, cur: int, events: list[SegmentEvent]) -> None:
        """Emit the end of a closed segment once no later segment can come within 2 * pad."""
        if self._pending is None:
            return
        seq, start, raw_end = self._pending
        reach = raw_end + 2 * self._pad
        if self._open_start is not None and self._open_start < reach:
            return  # this (unconfirmed) segment may still survive and share the padding
        if cur + self.window < reach:
            return  # a segment starting at the next window would still be too close
        if raw_end + self._pad > cur + 1:
            # The stream could still end before the padded end (silero clips it there). Not
            # reachable while ends are window-aligned (they are until finish()); kept as a guard.
            return
        self._emit_end(seq, start, int(raw_end + self._pad), events)

    def _append(self, raw_end: int, events: list[SegmentEvent]) -> None:
        """The open segment is complete: silero appends it to its list of speeches."""
        if self._open_seq is None:
            self._open_seq, self._open_padded = self._emit_start(self._open_start, events)  # type: ignore[arg-type]
        assert self._pending is None
        self._pending = (self._open_seq, self._open_padded, raw_end)  # type: ignore[assignment]
        self._clear_open()

    def _emit_start(self, raw_start: int, events: list[SegmentEvent]) -> tuple[int, int]:
        """Padding between the previous segment (if its end is not final) and this one, as silero does."""
        if self._pending is not None:
            seq, start, raw_end = self._pending
            silence = raw_start - raw_end
            if silence < 2 * self._pad:
                end = raw_end + int(silence // 2)
                padded = int(max(0, raw_start - silence // 2))
            else:
                end = int(raw_end + self._pad)  # the stream runs at least to raw_start: no clipping
                padded = int(max(0, raw_start - self._pad))
            self._emit_end(seq, start, end, events)
        else:
            padded = int(max(0, raw_start - self._pad))
        seq = self._next_seq
        self._next_seq += 1
        events.append(SegmentEvent("start", seq, padded, None, self.sample_rate))
        return seq, padded

    def _emit_end(self, seq: int, start: int, end: int, events: list[SegmentEvent]) -> None:
        events.append(SegmentEvent("end", seq, start, end, self.sample_rate))
        self._pending = None

    def _clear_open(self) -> None:
        self._open_start = self._open_seq = self._open_padded = None


def _nonneg_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _nonneg_int(value)


def segments_from_probabilities(
    probabilities: list[float] | np.ndarray, sample_rate: int, total_samples: int,
    settings: VadSettings = VadSettings(),
) -> list[tuple[int, int]]:
    """All ``(start, end)`` sample pairs of a finished stream (convenience over :class:`Segmenter`)."""
    seg = Segmenter(sample_rate, settings)
    events = [e for p in probabilities for e in seg.push(p)]
    events += seg.finish(total_samples)
    return [(e.start_sample, e.end_sample) for e in events if e.kind == "end"]  # type: ignore[misc]


# --- batched streaming ----------------------------------------------------------------------


@dataclass(frozen=True)
class WindowResult:
    """The outcome of one window of one stream."""

    stream_id: str
    start_sample: int  # stream sample time of the window's first sample
    probability: float
    events: tuple[SegmentEvent, ...]


class _Stream:
    __slots__ = ("sample_rate", "state", "context", "pending", "samples_in", "segmenter")

    def __init__(self, sample_rate: int, settings: VadSettings) -> None:
        self.sample_rate = sample_rate
        self.state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.context = np.zeros(CONTEXT_SAMPLES[sample_rate], dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)
        self.samples_in = 0  # samples fed since the stream began
        self.segmenter = Segmenter(sample_rate, settings)


def to_float_samples(samples: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """PCM16 little-endian bytes, int16 samples or float samples in [-1, 1] -> float32 in [-1, 1)."""
    if isinstance(samples, (bytes, bytearray, memoryview)):
        data = bytes(samples)
        if len(data) % 2:
            raise ValueError(f"PCM16 audio must have an even number of bytes, got {len(data)}")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    if not isinstance(samples, np.ndarray):
        raise ValueError(f"audio must be PCM16 bytes or a numpy array, got {type(samples).__name__}")
    if samples.ndim != 1:
        raise ValueError(f"audio must be one channel (1-D), got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / np.float32(32768.0)
    if samples.dtype in (np.float32, np.float64):
        x = samples.astype(np.float32, copy=False)
        if x.size and (not np.all(np.isfinite(x)) or float(np.max(np.abs(x))) > 1.0):
            raise ValueError("float audio must be finite and within [-1, 1]")
        return x
    raise ValueError(f"audio samples must be int16 or float32/float64, got {samples.dtype}")


class BatchedVad:
    """Silero VAD over many independent streams, one batched inference per step.

    ``feed`` appends audio to a stream (opening it on first use, at that sample rate);
    ``step`` runs one window of every stream that has one ready; ``drain`` steps until no
    stream has a full window; ``finish`` runs a stream's zero-padded tail and closes it.
    Results and segment events are in stream sample time.
    """

    def __init__(self, model: SileroModel, settings: VadSettings = VadSettings()) -> None:
        self.model = model
        self.settings = settings
        self._streams: dict[str, _Stream] = {}

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def stream_ids(self) -> list[str]:
        return list(self._streams)

    def _get(self, stream_id: str) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise ValueError(f"unknown VAD stream {stream_id!r}") from None

    def feed(self, stream_id: str, samples: bytes | np.ndarray, sample_rate: int) -> int:
        """Append audio to ``stream_id``; returns how many full windows it has ready."""
        if not isinstance(stream_id, str) or not stream_id:
            raise ValueError(f"stream id must be a non-empty string, got {stream_id!r}")
        rate = _check_rate(sample_rate)
        x = to_float_samples(samples)
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream(rate, self.settings)
        elif stream.sample_rate != rate:
            raise ValueError(
                f"stream {stream_id!r} is at {stream.sample_rate} Hz; got audio at {rate} Hz (a stream keeps one rate)"
            )
        if stream.segmenter.finished:
            raise ValueError(f"stream {stream_id!r} is finished")
        if x.size:
            stream.pending = np.concatenate((stream.pending, x)) if stream.pending.size else x.copy()
            stream.samples_in += int(x.size)
        return stream.pending.size // WINDOW_SAMPLES[rate]

    def ready(self) -> list[str]:
        """Streams with at least one full window pending, in the order they were opened."""
        return [sid for sid, s in self._streams.items() if s.pending.size >= WINDOW_SAMPLES[s.sample_rate]]

    def step(self) -> list[WindowResult]:
        """One window of every ready stream: one model run per sample rate present."""
        groups: dict[int, list[tuple[str, _Stream]]] = {}
        for sid, s in self._streams.items():
            if s.pending.size >= WINDOW_SAMPLES[s.sample_rate]:
                groups.setdefault(s.sample_rate, []).append((sid, s))
        results: dict[str, WindowResult] = {}
        for rate, members in groups.items():
            for (sid, s), r in zip(members, self._run_group(rate, members)):
                results[sid] = r
        return [results[sid] for sid in self._streams if sid in results]

    def drain(self, max_steps: int | None = None) -> list[WindowResult]:
        """Step until no stream has a full window (or ``max_steps`` steps); all results in order."""
        out: list[WindowResult] = []
        steps = 0
        while max_steps is None or steps < max_steps:
            batch = self.step()
            if not batch:
                break
            out.extend(batch)
            steps += 1
        return out

    def _run_group(self, rate: int, members: list[tuple[str, _Stream]]) -> list[WindowResult]:
        window, ctx = WINDOW_SAMPLES[rate], CONTEXT_SAMPLES[rate]
        x = np.empty((len(members), ctx + window), dtype=np.float32)
        state = np.empty((STATE_SHAPE[0], len(members), STATE_SHAPE[1]), dtype=np.float32)
        for b, (_, s) in enumerate(members):
            x[b, :ctx] = s.context
            x[b, ctx:] = s.pending[:window]
            state[:, b, :] = s.state
        probs, new_state = self.model.run(x, state, rate)
        out = []
        for b, (sid, s) in enumerate(members):
            s.state = new_state[:, b, :].copy()
            s.context = x[b, -ctx:].copy()
            s.pending = s.pending[window:]
            start = s.segmenter.windows * window
            p = float(probs[b])
            out.append(WindowResult(sid, start, p, tuple(s.segmenter.push(p))))
        return out

    def finish(self, stream_id: str) -> list[WindowResult]:
        """End of a stream: run its remaining windows (the last one zero-padded, as silero does),
        close its segments and forget it. The final events are in the last result (a result with
        probability NaN and no window if the stream had no audio left to run)."""
        s = self._get(stream_id)
        window = WINDOW_SAMPLES[s.sample_rate]
        out: list[WindowResult] = []
        while s.pending.size:
            if s.pending.size < window:
                s.pending = np.concatenate((s.pending, np.zeros(window - s.pending.size, dtype=np.float32)))
            out.extend(self._run_group(s.sample_rate, [(stream_id, s)]))
        final = tuple(s.segmenter.finish(s.samples_in))
        del self._streams[stream_id]
        if out:
            last = out[-1]
            out[-1] = WindowResult(last.stream_id, last.start_sample, last.probability, last.events + final)
        elif final:
            out.append(WindowResult(stream_id, s.samples_in, math.nan, final))
        return out

    def discard(self, stream_id: str) -> None:
        """Forget a stream without closing its segments (e.g. a call that was cancelled)."""
        self._get(stream_id)
        del self._streams[stream_id]

    # -- state carried across restarts/rebalances -----------------------------------------

    def export_state(self, stream_id: str) -> dict[str, Any]:
        """A JSON-safe snapshot of a stream (floats as base64 little-endian float32, exact)."""
        s = self._get(stream_id)
        return {
            "v": EXPORT_VERSION,
            "sample_rate": s.sample_rate,
            "settings": self.settings.segmentation(),
            "samples_in": s.samples_in,
            "state": _b64(s.state),
            "context": _b64(s.context),
            "pending": _b64(s.pending),
            "segmenter": s.segmenter.to_dict(),
        }

    def import_state(self, stream_id: str, data: dict[str, Any]) -> None:
        """Re-open a stream from :meth:`export_state` (refused if it is already open here)."""
        if not isinstance(stream_id, str) or not stream_id:
            raise ValueError(f"stream id must be a non-empty string, got {stream_id!r}")
        if stream_id in self._streams:
            raise ValueError(f"VAD stream {stream_id!r} is already open; discard it before importing")
        if not isinstance(data, dict) or data.get("v") != EXPORT_VERSION:
            raise ValueError(f"not a VAD stream state of version {EXPORT_VERSION}")
        try:
            rate = _check_rate(data["sample_rate"])
            if data["settings"] != self.settings.segmentation():
                raise ValueError(
                    f"state was exported with segmentation settings {data['settings']}, these are "
                    f"{self.settings.segmentation()}"
                )
            s = _Stream(rate, self.settings)
            s.samples_in = _nonneg_int(data["samples_in"])
            s.state = _unb64(data["state"], STATE_SHAPE[0] * STATE_SHAPE[1]).reshape(STATE_SHAPE)
            s.context = _unb64(data["context"], CONTEXT_SAMPLES[rate])
            s.pending = _unb64(data["pending"], None)
            s.segmenter = Segmenter.from_dict(data["segmenter"], rate, self.settings)
        except KeyError as exc:
            raise ValueError(f"VAD stream state lacks {exc.args[0]!r}") from None
        if s.segmenter.windows * WINDOW_SAMPLES[rate] + s.pending.size != s.samples_in:
            raise ValueError("VAD stream state is inconsistent: windows run + pending samples != samples fed")
        self._streams[stream_id] = s


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _unb64(text: Any, size: int | None) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed base64 in VAD stream state: {exc}") from None
    if len(raw) % 4 or (size is not None and len(raw) != 4 * size):
        raise ValueError(f"VAD stream state holds {len(raw)} bytes where {size} float32 were expected")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
