"""Joining a leg's contiguous 20 ms source frames into longer bridge frames (pure).

Why: one gRPC message per 20 ms frame is most of the gateway's CPU (and of the bridge's), and the
bridge carries audio to Kafka in records of ``chunk_ms`` (100 ms) anyway. Frames joined up to the
bridge's chunk length reach Kafka no later: the bridge closes a record when the audio that fills
it arrives, and a joined frame is sent at that same moment (both count from the call's first
frame and restart after a gap). What it changes is the number of messages (5x fewer at 100 ms).

Only contiguous frames are joined: a gap flushes what is held first, and the next frame's ``seq``
then skips one number, so the bridge still sees "a gap in seq = audio lost upstream"
(``media_bridge.proto``), and the capture time jumps as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Joined:
    seq: int
    capture_ts_us: int
    payload: bytes


@dataclass
class FrameJoiner:
    """Per leg: :meth:`add` frames in order; it returns the bridge frames now complete."""

    target_ms: float
    _parts: list[bytes] = field(default_factory=list)
    _ts: int = 0
    _ms: float = 0.0
    _seq: int = 0
    _gap: bool = False

    def add(self, capture_ts_us: int, payload: bytes, dur_ms: float, *, after_gap: bool) -> list[Joined]:
        out: list[Joined] = []
        if after_gap:
            out += self.flush()
            self._gap = True
        if not self._parts:
            self._ts = capture_ts_us
        self._parts.append(payload)
        self._ms += dur_ms
        if self._ms >= self.target_ms - 1e-6:
            out += self.flush()
        return out

    def flush(self) -> list[Joined]:
        if not self._parts:
            return []
        self._seq += 2 if self._gap and self._seq else 1
        self._gap = False
        joined = Joined(self._seq, self._ts, b"".join(self._parts))
        self._parts, self._ms = [], 0.0
        return [joined]
