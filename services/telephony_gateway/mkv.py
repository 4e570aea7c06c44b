"""Matroska (MKV) read incrementally from a byte stream, on the ``ebmlite`` EBML library (pure).

Kinesis Video Streams' GetMedia answers with an endless sequence of *chunks*, one per fragment:
an EBML header, then a ``Segment`` of unknown size holding ``Info``, ``Tracks``, ``Tags`` (the
producer's fragment metadata and the service's ``AWS_KINESISVIDEO_*`` tags), a ``Cluster`` (often
of unknown size too) of ``SimpleBlock``s, and after it more ``Tags`` (continuation token, millis
behind now). The audio must be forwarded as it arrives, not when a fragment is complete, so
:class:`MkvStreamReader` walks the stream element by element as bytes come in:

- element IDs, sizes (including EBML's "unknown size"), types and values are ``ebmlite``'s (its
  ``decoding`` functions and the Matroska schema it ships); nothing here re-implements EBML;
- ``Segment`` and ``Cluster`` are *entered* (their children are read one by one, so a live
  cluster's blocks come out as they arrive); an unknown-size master ends where an element that
  is not one of its children begins (EBML's rule: the next chunk's EBML header ends a Segment,
  the post-cluster ``Tags`` end a Cluster);
- every other element is read once complete and decoded by ``ebmlite`` (``Tracks``, ``Tags``,
  ``Info``) or, for ``SimpleBlock``, split into the Matroska block header (track number, 16-bit
  relative timecode, flags) and its frame data.

Anything that does not decode (an unknown element ID, a size past
:attr:`MkvStreamReader.max_element_bytes`, an element where the schema allows none, laced
blocks) raises :class:`MalformedMkv`; :meth:`MkvStreamReader.resync` then skips to the next EBML
header (the next chunk), so one broken fragment costs that fragment's audio, not the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO

import ebmlite
from ebmlite.decoding import decodeIntLength, readElementID, readElementSize

SCHEMA = ebmlite.loadSchema("matroska.xml")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # the EBML header's element ID: every KVS chunk starts with one
_ENTERED = ("Segment", "Cluster")  # masters read child by child
_HEAD_MAX = 12  # an element ID (<= 4 bytes) + a size (<= 8 bytes)


class MalformedMkv(ValueError):
    """The bytes are not the Matroska the reader can place (the message never quotes them).
    ``events`` holds what decoded before the fault (from the same feed)."""

    events: list = []


@dataclass(frozen=True, slots=True)
class SegmentStart:
    pass


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    pass


@dataclass(frozen=True, slots=True)
class Info:
    timecode_scale_ns: int


@dataclass(frozen=True, slots=True)
class Track:
    number: int
    codec_id: str
    sampling_hz: float | None
    channels: int | None
    bit_depth: int | None
    name: str = ""


@dataclass(frozen=True, slots=True)
class Tracks:
    tracks: tuple[Track, ...]


@dataclass(frozen=True, slots=True)
class Tags:
    """The SimpleTags of one ``Tags`` element, name -> value (a repeated name keeps the last)."""

    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClusterStart:
    pass


@dataclass(frozen=True, slots=True)
class ClusterTimecode:
    timecode: int


@dataclass(frozen=True, slots=True)
class Block:
    track: int
    relative_timecode: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ClusterEnd:
    pass


Event = SegmentStart | SegmentEnd | Info | Tracks | Tags | ClusterStart | ClusterTimecode | Block | ClusterEnd


@dataclass
class _Open:
    name: str
    cls: type
    end: int | None  # absolute offset in the stream; None = unknown size


class MkvStreamReader:
    """``feed(bytes)`` -> the events now complete; ``finish()`` at the end of the stream."""

    def __init__(self, *, max_element_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_element_bytes = max_element_bytes
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._pos = 0  # stream offset of the next unread element
        self._open: list[_Open] = []
        self._segment_at: int | None = None  # stream offset of the open Segment (resync restarts after it)
        self._hunting = False  # after a resync that found no EBML header yet: skip until one comes

    @property
    def buffered(self) -> int:
        return len(self._buf) - (self._pos - self._base)

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        try:
            self._drain(events)
        except MalformedMkv as exc:
            exc.events = events
            raise
        finally:
            self._compact()
        return events

    def finish(self) -> tuple[list[Event], int]:
        """The stream ended: what is still open is closed. Returns the events and the bytes of a
        trailing partial element that can never complete (0 when the stream ended cleanly)."""
        events: list[Event] = []
        self._close_done(events)
        partial = self.buffered
        while self._open:
            events.append(self._end(self._open.pop()))
        self._buf.clear()
        self._pos += partial
        self._base = self._pos
        return events, partial

    def resync(self) -> int:
        """Skip to the next EBML header after the current position (the next KVS chunk); returns
        the bytes skipped. The open Segment/Cluster are dropped."""
        anchor = self._pos if self._segment_at is None else self._segment_at
        start = anchor - self._base
        at = self._buf.find(EBML_MAGIC, start + 1)
        skipped = (at if at >= 0 else len(self._buf)) - start
        if at < 0:  # keep a possible partial magic at the end
            skipped = max(0, skipped - (len(EBML_MAGIC) - 1))
        self._pos = anchor + skipped
        self._segment_at = None
        self._hunting = at < 0
        self._open.clear()
        self._compact()
        return skipped

    # -- internals ---------------------------------------------------------------------------------

    def _compact(self) -> None:
        keep_from = self._pos
        if self._segment_at is not None:
            if self._pos - self._segment_at > 2 * self.max_element_bytes:
                self._segment_at = None  # a very long segment: resync from where the reader is
            else:
                keep_from = self._segment_at
        cut = keep_from - self._base
        if cut > 65536 or cut == len(self._buf):
            del self._buf[:cut]
            self._base = keep_from

    def _view(self, start: int, n: int) -> bytes:
        i = start - self._base
        return bytes(self._buf[i:i + n])

    def _end(self, o: _Open) -> Event:
        return SegmentEnd() if o.name == "Segment" else ClusterEnd()

    def _close_done(self, events: list[Event]) -> None:
        while self._open and self._open[-1].end is not None and self._pos >= self._open[-1].end:
            events.append(self._end(self._open.pop()))

    def _head(self) -> tuple[int, int | None, int] | None:
        """(element id, size or None for unknown, header length) of the next element, or None
        when its header is not all here yet."""
        avail = len(self._buf) - (self._pos - self._base)
        if avail <= 0:
            return None
        head = BytesIO(self._view(self._pos, min(avail, _HEAD_MAX)))
        try:
            eid, idlen = readElementID(head)
            size, sizelen = readElementSize(head)
        except (TypeError, ValueError, IndexError, OSError) as exc:  # ebmlite: truncated or invalid header
            if avail < _HEAD_MAX:
                return None  # maybe only truncated: wait for more bytes
            raise MalformedMkv(f"undecodable element header ({type(exc).__name__})") from None
        if idlen + sizelen > avail:  # ebmlite decoded past the bytes here (a header cut by the network)
            return None
        return eid, size, idlen + sizelen

    def _hunt(self) -> bool:
        """While hunting: skip to the next EBML header; False when none is here yet."""
        start = self._pos - self._base
        at = self._buf.find(EBML_MAGIC, start)
        if at < 0:
            self._pos += max(0, len(self._buf) - start - (len(EBML_MAGIC) - 1))
            return False
        self._pos += at - start
        self._hunting = False
        return True

    def _drain(self, events: list[Event]) -> None:
        if self._hunting and not self._hunt():
            return
        while True:
            self._close_done(events)
            head = self._head()
            if head is None:
                return
            eid, size, hlen = head
            cls = SCHEMA.elements.get(eid)
            if cls is None:
                raise MalformedMkv(f"unknown element ID 0x{eid:X}")
            parent = self._open[-1] if self._open else None
            if parent is not None and not parent.cls._isValidChild(eid):
                if parent.end is None:  # an unknown-size master ends where a non-child begins
                    events.append(self._end(self._open.pop()))
                    continue
                raise MalformedMkv(f"{cls.name} inside {parent.name}")
            if parent is None and cls.name not in ("EBML", "Segment", "Void"):
                raise MalformedMkv(f"{cls.name} at the top level (expected an EBML header or a Segment)")
            if cls.name in _ENTERED:
                if cls.name == "Segment":
                    self._segment_at = self._pos
                self._pos += hlen
                self._open.append(_Open(cls.name, cls, None if size is None else self._pos + size))
                events.append(SegmentStart() if cls.name == "Segment" else ClusterStart())
                continue
            if size is None:
                raise MalformedMkv(f"{cls.name} of unknown size")
            if size > self.max_element_bytes:
                raise MalformedMkv(f"{cls.name} of {size} bytes (over {self.max_element_bytes})")
            total = hlen + size
            if len(self._buf) - (self._pos - self._base) < total:
                return  # not complete yet
            raw = self._view(self._pos, total)
            self._pos += total
            event = self._decode(cls.name, raw, hlen)
            if event is not None:
                events.append(event)

    def _decode(self, name: str, raw: bytes, hlen: int) -> Event | None:
        if name == "SimpleBlock":
            return _block(raw[hlen:])
        if name not in ("Tracks", "Tags", "Info", "Timecode"):
            return None  # EBML header, Void, Cues, SeekHead, ...: nothing the audio needs
        try:
            value = SCHEMA.loads(raw)[0].dump()
        except Exception as exc:  # ebmlite raises a variety of errors on bad payloads
            raise MalformedMkv(f"{name} does not decode ({type(exc).__name__})") from None
        if name == "Timecode":
            return ClusterTimecode(int(value))
        if name == "Info":
            return Info(int(value.get("TimecodeScale", 1_000_000)))
        if name == "Tags":
            values: dict[str, str] = {}
            for tag in value.get("Tag", []):
                for simple in tag.get("SimpleTag", []):
                    if "TagName" in simple:
                        values[str(simple["TagName"])] = str(simple.get("TagString", ""))
            return Tags(values)
        tracks = []
        for entry in value.get("TrackEntry", []):
            audio = entry.get("Audio", {})
            tracks.append(Track(number=int(entry.get("TrackNumber", 0)), codec_id=str(entry.get("CodecID", "")),
                                sampling_hz=audio.get("SamplingFrequency"), channels=audio.get("Channels"),
                                bit_depth=audio.get("BitDepth"), name=str(entry.get("Name", ""))))
        return Tracks(tuple(tracks))


def _block(payload: bytes) -> Block:
    """A SimpleBlock's Matroska header: track number (an EBML variable-size integer), a signed
    16-bit timecode relative to the cluster, one flags byte; then the frame."""
    if not payload:
        raise MalformedMkv("empty SimpleBlock")
    length, track = decodeIntLength(payload[0])
    if length > 8 or len(payload) < length + 3:
        raise MalformedMkv("SimpleBlock shorter than its header")
    for b in payload[1:length]:
        track = (track << 8) | b
    rel = int.from_bytes(payload[length:length + 2], "big", signed=True)
    flags = payload[length + 2]
    if flags & 0x06:
        raise MalformedMkv("laced SimpleBlock (Chime sends one frame per block)")
    return Block(track, rel, bytes(payload[length + 3:]))


def simple_block(track: int, relative_timecode: int, data: bytes, *, keyframe: bool = True) -> bytes:
    """The payload of a SimpleBlock (for writers: tests, the KVS stand-in)."""
    assert 0 < track < 127
    return bytes([0x80 | track]) + relative_timecode.to_bytes(2, "big", signed=True) + bytes([0x80 if keyframe else 0]) + data
