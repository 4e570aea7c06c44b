"""Stereo WAV muxing of the two call legs (pure: no Kafka, no S3).

Left channel = ``LEG_LUPITA``, right channel = ``LEG_PERSON``. Each chunk is placed on a
common timeline at ``round((start_ts_us - origin_us) * sample_rate / 1e6)`` samples, where the
origin is the call start (or the earliest chunk, if a chunk was captured before the bridge's
start stamp, so no audio is ever cut). Gaps are filled with silence; overlaps are resolved
deterministically (chunks are taken in ``chunk_seq`` order and the samples already placed win,
so the later chunk loses its overlapping head). A chunk that starts within
``align_tolerance_ms`` of where the previous chunk of its leg ended is treated as contiguous
(capture timestamps jitter; a real gap or overlap is larger than that).

The output is produced in pieces (:meth:`StereoMuxer.iter_wav`): first the 44-byte RIFF header,
then interleaved little-endian PCM16 blocks, so a multipart upload never holds the whole
file; only the compressed chunk payloads stay in memory.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from lupita.audio import BYTES_PER_SAMPLE, SUPPORTED_RATES, decode_pcm16
from stream_processor.records import LEG_NAMES, LEGS  # noqa: F401  (channel order: left, right)

CHANNELS = 2
SAMPLE_WIDTH = 2
HEADER_BYTES = 44
# A RIFF file cannot describe more than 4 GiB.
MAX_DATA_BYTES = 0xFFFFFFFF - (HEADER_BYTES - 8)


class ChunkLike(Protocol):
    """What the muxer reads from a chunk (``lupita.v1.events_pb2.AudioChunk`` fits)."""

    leg: int
    chunk_seq: int
    start_ts_us: int
    sample_rate_hz: int
    codec: int
    payload: bytes
    frame_count: int


class InvalidChunk(ValueError):
    """A chunk that cannot be placed in this recording (wrong rate, codec, leg, length, or
    placed beyond the length limit); ``leg``/``chunk_seq`` name it when one chunk is at fault."""

    def __init__(self, message: str, *, leg: int | None = None, chunk_seq: int | None = None) -> None:
        super().__init__(message)
        self.leg = leg
        self.chunk_seq = chunk_seq


@dataclass(frozen=True)
class _Placement:
    offset: int  # first output sample
    skip: int  # samples of the chunk dropped at its head (overlap)
    length: int  # samples written
    chunk: ChunkLike


@dataclass
class LegStats:
    chunks: int = 0
    frames: int = 0  # 20 ms frames as counted by the bridge (AudioChunk.frame_count)
    samples: int = 0  # samples written to the channel
    gaps: int = 0  # silent stretches inserted before a chunk (not counting the tail)
    gap_samples: int = 0
    overlap_samples_dropped: int = 0
    first_offset: int | None = None  # sample offset of the first chunk

    def as_dict(self) -> dict:
        return {
            "chunks": self.chunks,
            "frames": self.frames,
            "samples": self.samples,
            "gaps_filled": self.gaps,
            "gap_samples": self.gap_samples,
            "overlap_samples_dropped": self.overlap_samples_dropped,
            "first_sample_offset": self.first_offset,
        }


@dataclass
class MuxPlan:
    """Where every sample goes; computed before any audio is decoded."""

    sample_rate: int
    origin_us: int
    total_frames: int  # stereo frames (samples per channel)
    legs: dict[int, list[_Placement]]
    stats: dict[int, LegStats] = field(default_factory=dict)

    @property
    def data_bytes(self) -> int:
        return self.total_frames * CHANNELS * SAMPLE_WIDTH

    @property
    def file_bytes(self) -> int:
        return HEADER_BYTES + self.data_bytes

    @property
    def duration_seconds(self) -> float:
        return self.total_frames / self.sample_rate


def wav_header(sample_rate: int, data_bytes: int, channels: int = CHANNELS) -> bytes:
    """Canonical 44-byte PCM16 RIFF/WAVE header."""
    if data_bytes > MAX_DATA_BYTES:
        raise ValueError(f"recording too long for a WAV file ({data_bytes} data bytes)")
    block_align = channels * SAMPLE_WIDTH
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16
        )
        + b"data"
        + struct.pack("<I", data_bytes)
    )


class StereoMuxer:
    """Collects the chunks of one call and writes them as one time-aligned stereo WAV.

    Keyword-only arguments:
        sample_rate: the call's rate (8000 or 16000); chunks at another rate are refused.
        call_started_us: the call start (unix microseconds); the timeline origin unless a chunk
            starts earlier.
        align_tolerance_ms: a chunk starting this close to the end of the previous chunk of its
            leg is appended contiguously instead of by its timestamp.
        max_seconds: refuse chunks placed beyond this length (a bogus timestamp must not turn
            into hours of silence).
    """

    def __init__(
        self,
        *,
        sample_rate: int,
        call_started_us: int,
        align_tolerance_ms: float = 10.0,
        max_seconds: float = 4 * 3600,
    ) -> None:
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported sample rate {sample_rate} (supported: {SUPPORTED_RATES})")
        self.sample_rate = sample_rate
        self.call_started_us = call_started_us
        self.tolerance = int(round(align_tolerance_ms * sample_rate / 1000.0))
        self.max_samples = int(max_seconds * sample_rate)
        self._chunks: dict[int, dict[int, ChunkLike]] = {leg: {} for leg in LEGS}

    # -- input ---------------------------------------------------------------------------------

    def add(self, chunk: ChunkLike) -> None:
        """Add one chunk; a second chunk with the same (leg, chunk_seq) replaces the first."""
        if chunk.leg not in self._chunks:
            raise InvalidChunk(f"chunk {chunk.chunk_seq}: unknown leg {chunk.leg}")
        if chunk.sample_rate_hz != self.sample_rate:
            raise InvalidChunk(
                f"chunk {chunk.chunk_seq} of leg {LEG_NAMES[chunk.leg]}: sample rate "
                f"{chunk.sample_rate_hz} Hz differs from the call's {self.sample_rate} Hz"
            )
        width = BYTES_PER_SAMPLE.get(chunk.codec)
        if width is None:
            raise InvalidChunk(f"chunk {chunk.chunk_seq}: unsupported codec {chunk.codec}")
        if len(chunk.payload) % width:
            raise InvalidChunk(
                f"chunk {chunk.chunk_seq}: payload of {len(chunk.payload)} bytes is not a whole "
                f"number of {width}-byte samples"
            )
        self._chunks[chunk.leg][chunk.chunk_seq] = chunk

    def chunk_count(self, leg: int) -> int:
        return len(self._chunks[leg])

    def remove(self, leg: int, chunk_seq: int) -> None:
        self._chunks[leg].pop(chunk_seq, None)

    # -- planning ------------------------------------------------------------------------------

    def plan(self) -> MuxPlan:
        """Place every chunk on the timeline (no decoding). Raises InvalidChunk past max_seconds."""
        starts = [c.start_ts_us for leg in LEGS for c in self._chunks[leg].values()]
        origin = min([self.call_started_us, *starts])
        legs: dict[int, list[_Placement]] = {}
        stats: dict[int, LegStats] = {}
        total = 0
        for leg in LEGS:
            placements: list[_Placement] = []
            st = LegStats()
            cursor = 0
            for seq in sorted(self._chunks[leg]):
                chunk = self._chunks[leg][seq]
                n = len(chunk.payload) // BYTES_PER_SAMPLE[chunk.codec]
                offset = int(round((chunk.start_ts_us - origin) * self.sample_rate / 1e6))
                if placements and abs(offset - cursor) <= self.tolerance:
                    offset = cursor  # capture-timestamp jitter: contiguous
                if offset + n > self.max_samples:
                    raise InvalidChunk(
                        f"chunk {seq} of leg {LEG_NAMES[leg]} ends {(offset + n) / self.sample_rate:.1f} s "
                        f"after the call start, beyond the {self.max_samples / self.sample_rate:.0f} s limit",
                        leg=leg,
                        chunk_seq=seq,
                    )
                st.chunks += 1
                st.frames += chunk.frame_count
                if st.first_offset is None:
                    st.first_offset = offset
                skip = max(0, cursor - offset)
                if offset > cursor:
                    st.gaps += 1
                    st.gap_samples += offset - cursor
                length = n - skip
                st.overlap_samples_dropped += min(skip, n)
                if length > 0:
                    placements.append(_Placement(offset + skip, skip, length, chunk))
                    st.samples += length
                    cursor = offset + skip + length
            legs[leg] = placements
            stats[leg] = st
            total = max(total, cursor)
        if total * CHANNELS * SAMPLE_WIDTH > MAX_DATA_BYTES:
            raise InvalidChunk("recording too long for a WAV file")
        return MuxPlan(self.sample_rate, origin, total, legs, stats)

    # -- output --------------------------------------------------------------------------------

    def iter_wav(self, plan: MuxPlan | None = None, *, block_frames: int = 65536) -> Iterator[bytes]:
        """The WAV file in pieces: the header, then interleaved PCM16 blocks of <= block_frames."""
        plan = plan or self.plan()
        yield wav_header(plan.sample_rate, plan.data_bytes)
        yield from self.iter_pcm(plan, block_frames=block_frames)

    def iter_pcm(self, plan: MuxPlan, *, block_frames: int = 65536) -> Iterator[bytes]:
        """Interleaved little-endian PCM16 (left, right) for frames [0, total) in blocks."""
        cursors = {leg: _LegReader(plan.legs[leg]) for leg in LEGS}
        for start in range(0, plan.total_frames, block_frames):
            end = min(start + block_frames, plan.total_frames)
            block = np.zeros((end - start, CHANNELS), dtype="<i2")
            for channel, leg in enumerate(LEGS):
                cursors[leg].fill(block[:, channel], start, end)
            yield block.tobytes()

    def wav_bytes(self) -> bytes:
        """The whole file at once (tests and tools; the archive streams iter_wav)."""
        return b"".join(self.iter_wav())


class _LegReader:
    """Walks one leg's placements forward, decoding each chunk once."""

    def __init__(self, placements: list[_Placement]) -> None:
        self.placements = placements
        self.index = 0
        self._decoded: tuple[int, np.ndarray] | None = None

    def _samples(self, i: int) -> np.ndarray:
        if self._decoded is None or self._decoded[0] != i:
            p = self.placements[i]
            pcm = decode_pcm16(p.chunk.payload, p.chunk.codec)
            self._decoded = (i, pcm[p.skip : p.skip + p.length])
        return self._decoded[1]

    def fill(self, out: np.ndarray, start: int, end: int) -> None:
        """Write this leg's samples for output frames [start, end) into ``out`` (zeros = silence)."""
        i = self.index
        while i < len(self.placements):
            p = self.placements[i]
            p_end = p.offset + p.length
            if p_end <= start:
                i += 1
                self.index = i
                continue
            if p.offset >= end:
                break
            lo = max(start, p.offset)
            hi = min(end, p_end)
            out[lo - start : hi - start] = self._samples(i)[lo - p.offset : hi - p.offset]
            if p_end > end:
                break
            i += 1
            self.index = i
