"""Putting a stream's messages back in sequence-number order, within a bounded window (pure).

A websocket rides on TCP, so Twilio's messages normally arrive in order; when they do not (a
proxy, a vendor-side retry), the gateway holds at most ``window`` messages waiting for a hole to
fill. A hole that stays open longer than the window is given up: the messages after it are
released, and the missing numbers are counted (their audio becomes a gap on its track). A number
seen before is a ``duplicate``; one that arrives after its hole was given up is ``late``; both
are dropped, counted, never forwarded twice or out of order.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Given-up numbers remembered to tell "late" from "duplicate" (bounded).
_SKIPPED_MEMORY = 4096


@dataclass
class ReorderStats:
    reordered: int = 0  # messages that arrived ahead of a hole and were held
    duplicates: int = 0
    late: int = 0
    skipped: int = 0  # sequence numbers never seen (given up)


class Reorderer(Generic[T]):
    """Feed ``(seq, item)`` with :meth:`push`; it returns the items now in order."""

    def __init__(self, window: int, *, next_seq: int | None = None) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self.next_seq = next_seq
        self.stats = ReorderStats()
        self._held: list[tuple[int, int, T]] = []  # heap of (seq, arrival, item)
        self._held_seqs: set[int] = set()
        self._skipped: OrderedDict[int, None] = OrderedDict()
        self._arrivals = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def push(self, seq: int, item: T) -> tuple[list[T], str | None]:
        """Returns (items released in order, ``"duplicate"``/``"late"`` if this one was dropped)."""
        if self.next_seq is None:
            self.next_seq = seq
        if seq < self.next_seq or seq in self._held_seqs:
            if seq in self._skipped:
                self.stats.late += 1
                return [], "late"
            self.stats.duplicates += 1
            return [], "duplicate"
        if seq > self.next_seq:
            self.stats.reordered += 1
        self._arrivals += 1
        heapq.heappush(self._held, (seq, self._arrivals, item))
        self._held_seqs.add(seq)
        return self._release(), None

    def flush(self) -> list[T]:
        """Everything still held, in order (the stream ended: holes are given up)."""
        out: list[T] = []
        while self._held:
            out += self._give_up_to(self._held[0][0])
            out += self._release()
        return out

    def _release(self) -> list[T]:
        out: list[T] = []
        while True:
            while self._held and self._held[0][0] == self.next_seq:
                seq, _, item = heapq.heappop(self._held)
                self._held_seqs.discard(seq)
                out.append(item)
                self.next_seq = seq + 1
            if not self._held:
                return out
            lowest = self._held[0][0]
            newest = max(self._held_seqs)
            # a hole may be waited for while the window holds both it and the newest message
            if len(self._held) <= self.window and newest - self.next_seq <= self.window:
                return out
            out += self._give_up_to(lowest)

    def _give_up_to(self, seq: int) -> list[T]:
        for missing in range(self.next_seq, seq):
            self._skipped[missing] = None
            self.stats.skipped += 1
        while len(self._skipped) > _SKIPPED_MEMORY:
            self._skipped.popitem(last=False)
        self.next_seq = seq
        return []
