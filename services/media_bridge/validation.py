"""The media-bridge protocol rules as plain synchronous code (no gRPC server, no Kafka).

Every rule violation raises :class:`Violation` carrying the gRPC status code, a short stable
``kind`` (the ``lupita_bridge_errors_total{kind}`` label) and a precise message. Messages never
contain the phone number.

Status codes used (the contract in ``protos/lupita/v1/media_bridge.proto``):

* ``INVALID_ARGUMENT``: a field has a bad value (call id, sample rate, codec, direction, phone,
  leg, payload size, timestamp), and a per-leg sequence number that does not increase. We chose
  INVALID_ARGUMENT over OUT_OF_RANGE for the latter: the contract lists only the five codes here,
  and a repeated or decreasing seq is a bad value of that field, whatever the stream position.
* ``FAILED_PRECONDITION``: order: audio or end before start, a second start, anything after end,
  a stream closed before CallEnd.
* ``ALREADY_EXISTS``: the call id is live on this bridge or ended here recently.
* ``RESOURCE_EXHAUSTED``: a frame sent without a credit; too many live calls.
* ``UNAUTHENTICATED``: missing or wrong bearer token.
"""

from __future__ import annotations

import hmac
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from lupita.audio import BYTES_PER_SAMPLE, SUPPORTED_RATES
from lupita.privacy import InvalidPhoneNumber, normalize_phone
from lupita.v1 import audio_pb2, media_bridge_pb2

CALL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
LEGS = (audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON)
CODECS = (audio_pb2.CODEC_PCM16, audio_pb2.CODEC_MULAW)
DIRECTIONS = (audio_pb2.DIRECTION_OUTBOUND, audio_pb2.DIRECTION_INBOUND)


class Violation(Exception):
    """A protocol violation: ends the stream with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, kind: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.message = message

    @property
    def code_name(self) -> str:
        return self.code.name

    def __repr__(self) -> str:
        return f"Violation({self.code.name}, {self.kind!r}, {self.message!r})"


def _invalid(kind: str, message: str) -> Violation:
    return Violation(grpc.StatusCode.INVALID_ARGUMENT, kind, message)


def _order(kind: str, message: str) -> Violation:
    return Violation(grpc.StatusCode.FAILED_PRECONDITION, kind, message)


def parse_client_message(data: bytes) -> media_bridge_pb2.ClientMessage | Violation:
    """The StreamCall request deserializer: the parsed ClientMessage, or a :class:`Violation`
    (returned, not raised) when ``data`` is not a valid ClientMessage.

    It must not raise: grpc.aio re-raises a deserializer's exception from the servicer's request
    iterator, where it is indistinguishable from a lost connection (the stream used to end OK,
    with no Error and no count). Returned as a value, the refusal reaches the session in message
    order, after whatever valid messages came before it. The message names the size and the
    parser's reason, never the bytes (they may hold a phone number).
    """
    try:
        return media_bridge_pb2.ClientMessage.FromString(data)
    except Exception as exc:  # DecodeError (wire format, invalid UTF-8 in a string field, ...)
        return _invalid(
            "undecodable",
            f"a message of {len(data)} bytes is not a valid {media_bridge_pb2.ClientMessage.DESCRIPTOR.full_name} "
            f"protobuf: {exc}",
        )


def leg_name(leg: int) -> str:
    return {audio_pb2.LEG_LUPITA: "lupita", audio_pb2.LEG_PERSON: "person"}.get(leg, str(leg))


def check_call_id(call_id: str) -> None:
    if not call_id:
        raise _invalid("call_id", "call_id is required")
    if CALL_ID_RE.fullmatch(call_id):
        return
    rule = "call_id must be 1-128 characters of [A-Za-z0-9_-] starting with a letter or digit (it becomes part of an S3 key)"
    if len(call_id) > 128:
        raise _invalid("call_id", f"{rule}; it has {len(call_id)} characters")
    if not call_id[0].isascii() or not call_id[0].isalnum():
        raise _invalid("call_id", f"{rule}; it starts with {call_id[0]!r}")
    bad = next(i for i, c in enumerate(call_id) if not (c.isascii() and (c.isalnum() or c in "_-")))
    # name the offending character, not the value (a client might put anything in it)
    raise _invalid("call_id", f"{rule}; character {bad + 1} is {call_id[bad]!r}")


@dataclass(frozen=True)
class ValidStart:
    """A checked CallStart; ``phone`` is the normalised number (never log it)."""

    call_id: str
    direction: int
    sample_rate_hz: int
    codec: int
    phone: str
    start: media_bridge_pb2.CallStart


def check_start(start: media_bridge_pb2.CallStart) -> ValidStart:
    check_call_id(start.call_id)
    if start.sample_rate_hz not in SUPPORTED_RATES:
        raise _invalid(
            "sample_rate",
            f"sample_rate_hz must be 8000 or 16000, got {start.sample_rate_hz}",
        )
    if start.codec not in CODECS:
        raise _invalid(
            "codec", f"codec must be CODEC_PCM16 or CODEC_MULAW, got {_enum_name(audio_pb2.Codec, start.codec)}"
        )
    if start.direction not in DIRECTIONS:
        raise _invalid(
            "direction",
            "direction must be DIRECTION_OUTBOUND or DIRECTION_INBOUND, got "
            f"{_enum_name(audio_pb2.Direction, start.direction)}",
        )
    if start.started_at_us < 0:
        raise _invalid("timestamp", f"started_at_us must be >= 0, got {start.started_at_us}")
    if not start.caller.phone_number:
        raise _invalid("phone", "caller.phone_number is required")
    try:
        phone = normalize_phone(start.caller.phone_number)
    except InvalidPhoneNumber as exc:
        # the message names the rule, never the value
        raise _invalid("phone", f"caller.phone_number is not a phone number: {exc}") from None
    return ValidStart(
        call_id=start.call_id,
        direction=start.direction,
        sample_rate_hz=start.sample_rate_hz,
        codec=start.codec,
        phone=phone,
        start=start,
    )


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def frame_samples(payload_len: int, codec: int) -> int:
    return payload_len // BYTES_PER_SAMPLE[codec]


class CallProtocol:
    """Order, sequence and credit rules of one call stream.

    Feed every client message to :meth:`check` in arrival order; it raises :class:`Violation`
    or returns the oneof name (``"start"``, ``"frame"``, ``"end"``). A frame that passes has
    consumed one credit; :meth:`grant` gives credits back when frames are acknowledged.
    """

    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    ENDED = "ended"

    def __init__(self, *, max_frame_ms: int, initial_credits: int) -> None:
        self.max_frame_ms = max_frame_ms
        self.initial_credits = initial_credits
        self.state = self.AWAITING_START
        self.start: ValidStart | None = None
        self.credits = 0
        self.last_seq: dict[int, int] = {}

    def check(self, msg: media_bridge_pb2.ClientMessage) -> str:
        kind = msg.WhichOneof("msg")
        if kind is None:
            raise _invalid("empty_message", "ClientMessage has none of start, frame, end set")
        if self.state == self.ENDED:
            raise _order("after_end", f"{kind} received after CallEnd: CallEnd must be the last message")
        if kind == "start":
            if self.state != self.AWAITING_START:
                raise _order("second_start", "second CallStart on this stream: CallStart is sent once")
            self.start = check_start(msg.start)
            self.state = self.STREAMING
            self.credits = self.initial_credits
        elif kind == "frame":
            if self.state != self.STREAMING:
                raise _order("before_start", "AudioFrame before CallStart: CallStart must come first")
            self._check_frame(msg.frame)
        else:  # end
            if self.state != self.STREAMING:
                raise _order("before_start", "CallEnd before CallStart: CallStart must come first")
            if msg.end.ended_at_us < 0:
                raise _invalid("timestamp", f"ended_at_us must be >= 0, got {msg.end.ended_at_us}")
            self.state = self.ENDED
        return kind

    def _check_frame(self, frame: media_bridge_pb2.AudioFrame) -> None:
        assert self.start is not None
        if frame.leg not in LEGS:
            raise _invalid(
                "leg", f"frame leg must be LEG_LUPITA or LEG_PERSON, got {_enum_name(audio_pb2.Leg, frame.leg)}"
            )
        leg = leg_name(frame.leg)
        if frame.seq < 1:
            raise _invalid("seq", f"frame seq must be >= 1 (leg {leg})")
        last = self.last_seq.get(frame.leg)
        if last is not None and frame.seq <= last:
            raise _invalid(
                "seq",
                f"frame seq {frame.seq} on leg {leg} is not greater than the previous seq {last}: "
                "sequence numbers must strictly increase per leg",
            )
        if frame.capture_ts_us < 0:
            raise _invalid("timestamp", f"frame capture_ts_us must be >= 0, got {frame.capture_ts_us} (leg {leg} seq {frame.seq})")
        size = len(frame.payload)
        if size == 0:
            raise _invalid("payload", f"frame payload is empty (leg {leg} seq {frame.seq})")
        width = BYTES_PER_SAMPLE[self.start.codec]
        if size % width:
            raise _invalid(
                "payload",
                f"frame payload of {size} bytes is not a whole number of {width}-byte samples "
                f"(leg {leg} seq {frame.seq})",
            )
        max_samples = self.start.sample_rate_hz * self.max_frame_ms // 1000
        if size // width > max_samples:
            raise _invalid(
                "payload",
                f"frame of {size // width} samples is longer than {self.max_frame_ms} ms "
                f"({max_samples} samples at {self.start.sample_rate_hz} Hz; leg {leg} seq {frame.seq})",
            )
        if self.credits <= 0:
            raise Violation(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "credits",
                f"frame sent without credit (leg {leg} seq {frame.seq}): wait for FlowControl "
                "credits before sending more frames",
            )
        self.credits -= 1
        self.last_seq[frame.leg] = frame.seq

    def grant(self, credits: int) -> None:
        self.credits += credits


class CallRegistry:
    """Live call ids of this bridge plus a bounded LRU of recently ended ones."""

    def __init__(self, *, max_calls: int, recent_size: int) -> None:
        self.max_calls = max_calls
        self.recent_size = recent_size
        self.live: set[str] = set()
        self.recent: OrderedDict[str, None] = OrderedDict()

    def admit(self, call_id: str) -> None:
        if call_id in self.live:
            raise Violation(grpc.StatusCode.ALREADY_EXISTS, "duplicate_call", f"call {call_id} is already live on this bridge")
        if call_id in self.recent:
            raise Violation(
                grpc.StatusCode.ALREADY_EXISTS, "duplicate_call", f"call {call_id} already ended on this bridge; call ids are single-use"
            )
        if len(self.live) >= self.max_calls:
            raise Violation(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too_many_calls",
                f"this bridge already carries its maximum of {self.max_calls} calls; retry on another instance",
            )
        self.live.add(call_id)

    def release(self, call_id: str, *, remember: bool = True) -> None:
        """The call ended (``remember``: refuse its id from now on) or never started."""
        self.live.discard(call_id)
        if remember and self.recent_size:
            self.recent[call_id] = None
            self.recent.move_to_end(call_id)
            while len(self.recent) > self.recent_size:
                self.recent.popitem(last=False)

    def __len__(self) -> int:
        return len(self.live)


def check_bearer(metadata: Iterable[tuple[str, str | bytes]], tokens: Iterable[str]) -> None:
    """Accept ``authorization: Bearer <token>`` when ``<token>`` is one of ``tokens``."""
    values = [v for k, v in metadata if k.lower() == "authorization"]
    if not values:
        raise Violation(
            grpc.StatusCode.UNAUTHENTICATED, "auth", "missing 'authorization: Bearer <token>' metadata"
        )
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    scheme, _, presented = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Violation(grpc.StatusCode.UNAUTHENTICATED, "auth", "authorization metadata must be 'Bearer <token>'")
    presented_b = presented.strip().encode()
    ok = False
    for token in tokens:  # compare with every token: no early exit on a match
        ok |= hmac.compare_digest(presented_b, token.encode())
    if not ok:
        raise Violation(grpc.StatusCode.UNAUTHENTICATED, "auth", "invalid bearer token")
