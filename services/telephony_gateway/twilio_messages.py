"""Twilio Media Streams websocket messages (plain code: no socket, no bridge).

The shapes are Twilio's documented ones (twilio.com/docs/voice/media-streams/websocket-messages)::

    {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    {"event": "start", "sequenceNumber": "1", "streamSid": "MZ...",
     "start": {"accountSid": "AC...", "streamSid": "MZ...", "callSid": "CA...",
               "tracks": ["inbound", "outbound"], "customParameters": {...},
               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
    {"event": "media", "sequenceNumber": "3", "streamSid": "MZ...",
     "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": "<base64 mu-law>"}}
    {"event": "dtmf", "sequenceNumber": "5", "streamSid": "MZ...", "dtmf": {"track": "inbound_track", "digit": "1"}}
    {"event": "mark", "sequenceNumber": "4", "streamSid": "MZ...", "mark": {"name": "my label"}}
    {"event": "stop", "sequenceNumber": "5", "streamSid": "MZ...", "stop": {"accountSid": "AC...", "callSid": "CA..."}}

``sequenceNumber``, ``chunk`` and ``timestamp`` are decimal strings (integers are accepted too).
``timestamp`` is milliseconds since the stream started, ``chunk`` counts a track's media messages
from 1, ``sequenceNumber`` counts every message of the stream from 1. :func:`parse` returns one
dataclass per event or raises :class:`~telephony_gateway.errors.BadInput`; the messages it raises
name fields, never values.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import BadInput

# The only format Twilio streams (and the only one this adapter takes).
MULAW_ENCODING = "audio/x-mulaw"
SAMPLE_RATE = 8000
CHANNELS = 1
TRACKS = ("inbound", "outbound")


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    sequence_number: int | None
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    encoding: str
    sample_rate: int
    channels: int
    # Never logged: it may carry the caller's number.
    custom_parameters: dict[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Media:
    sequence_number: int
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Dtmf:
    sequence_number: int | None
    stream_sid: str
    track: str
    digit: str = field(repr=False)  # a keypress may be a PIN: never logged


@dataclass(frozen=True, slots=True)
class Mark:
    sequence_number: int | None
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    sequence_number: int | None
    stream_sid: str
    call_sid: str


Event = Connected | Start | Media | Dtmf | Mark | Stop


def parse(text: str | bytes) -> Event:
    """One websocket message -> its event, or :class:`BadInput` (``malformed_json``,
    ``unknown_event``, ``invalid_field``)."""
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput("malformed_json", f"message of {len(text)} characters is not JSON ({type(exc).__name__})") from None
    if not isinstance(msg, dict):
        raise BadInput("malformed_json", f"message is a JSON {type(msg).__name__}, not an object")
    event = msg.get("event")
    if not isinstance(event, str):
        raise BadInput("invalid_field", "message has no string 'event'")
    parser = _PARSERS.get(event)
    if parser is None:
        # the name is Twilio's vocabulary, not user data, but bound its length anyway
        raise BadInput("unknown_event", f"unknown event {event[:40]!r}")
    return parser(msg)


def _obj(msg: dict, name: str) -> dict:
    value = msg.get(name)
    if not isinstance(value, dict):
        raise BadInput("invalid_field", f"{msg.get('event')} message has no object {name!r}")
    return value


def _str(obj: dict, name: str, where: str, *, required: bool = True) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadInput("invalid_field", f"{where}.{name} must be a non-empty string")
    return value


def _int(obj: dict, name: str, where: str, *, required: bool = True, minimum: int = 0) -> int | None:
    value = obj.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool):
        value = None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        value = int(value)
    if not isinstance(value, int) or value < minimum:
        raise BadInput("invalid_field", f"{where}.{name} must be an integer >= {minimum} (a decimal string)")
    return value


def _stream_sid(msg: dict, inner: dict | None = None) -> str:
    sid = msg.get("streamSid")
    if sid is None and inner is not None:
        sid = inner.get("streamSid")
    if not isinstance(sid, str) or not sid:
        raise BadInput("invalid_field", f"{msg.get('event')} message has no streamSid")
    return sid


def _connected(msg: dict) -> Connected:
    return Connected(protocol=_str(msg, "protocol", "connected"), version=_str(msg, "version", "connected", required=False))


def _start(msg: dict) -> Start:
    start = _obj(msg, "start")
    fmt = start.get("mediaFormat")
    if not isinstance(fmt, dict):
        raise BadInput("invalid_field", "start.mediaFormat must be an object")
    tracks = start.get("tracks")
    if not isinstance(tracks, list) or not tracks or not all(isinstance(t, str) for t in tracks):
        raise BadInput("invalid_field", "start.tracks must be a non-empty list of strings")
    params = start.get("customParameters") or {}
    if not isinstance(params, dict):
        raise BadInput("invalid_field", "start.customParameters must be an object")
    return Start(
        sequence_number=_int(msg, "sequenceNumber", "start", required=False, minimum=1),
        stream_sid=_stream_sid(msg, start),
        account_sid=_str(start, "accountSid", "start", required=False),
        call_sid=_str(start, "callSid", "start"),
        tracks=tuple(tracks),
        encoding=_str(fmt, "encoding", "start.mediaFormat"),
        sample_rate=_int(fmt, "sampleRate", "start.mediaFormat", minimum=1),
        channels=_int(fmt, "channels", "start.mediaFormat", required=False, minimum=1) or CHANNELS,
        custom_parameters={str(k): str(v) for k, v in params.items()},
    )


def _media(msg: dict) -> Media:
    media = _obj(msg, "media")
    track = _str(media, "track", "media")
    if track not in TRACKS:
        raise BadInput("invalid_field", f"media.track must be one of {TRACKS}")
    raw = media.get("payload")
    if not isinstance(raw, str) or not raw:
        raise BadInput("invalid_field", "media.payload must be a non-empty base64 string")
    try:
        payload = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("invalid_field", f"media.payload ({len(raw)} characters) is not valid base64") from None
    return Media(
        sequence_number=_int(msg, "sequenceNumber", "media", minimum=1),
        stream_sid=_stream_sid(msg),
        track=track,
        chunk=_int(media, "chunk", "media", minimum=0),
        timestamp_ms=_int(media, "timestamp", "media", minimum=0),
        payload=payload,
    )


def _dtmf(msg: dict) -> Dtmf:
    dtmf = _obj(msg, "dtmf")
    return Dtmf(
        sequence_number=_int(msg, "sequenceNumber", "dtmf", required=False, minimum=1),
        stream_sid=_stream_sid(msg),
        track=_str(dtmf, "track", "dtmf", required=False),
        digit=_str(dtmf, "digit", "dtmf"),
    )


def _mark(msg: dict) -> Mark:
    mark = _obj(msg, "mark")
    return Mark(
        sequence_number=_int(msg, "sequenceNumber", "mark", required=False, minimum=1),
        stream_sid=_stream_sid(msg),
        name=_str(mark, "name", "mark", required=False),
    )


def _stop(msg: dict) -> Stop:
    stop = msg.get("stop") if isinstance(msg.get("stop"), dict) else {}
    return Stop(
        sequence_number=_int(msg, "sequenceNumber", "stop", required=False, minimum=1),
        stream_sid=_stream_sid(msg),
        call_sid=_str(stop, "callSid", "stop", required=False),
    )


_PARSERS: dict[str, Any] = {
    "connected": _connected,
    "start": _start,
    "media": _media,
    "dtmf": _dtmf,
    "mark": _mark,
    "stop": _stop,
}


# --- the other direction: what a Twilio-format client sends (the simulator and the tests) -------


def connected_message() -> dict:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start_message(seq: int, stream_sid: str, call_sid: str, *, account_sid: str, tracks: tuple[str, ...],
                  custom_parameters: dict[str, str], encoding: str = MULAW_ENCODING,
                  sample_rate: int = SAMPLE_RATE, channels: int = CHANNELS) -> dict:
    return {
        "event": "start",
        "sequenceNumber": str(seq),
        "start": {
            "accountSid": account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": list(tracks),
            "customParameters": dict(custom_parameters),
            "mediaFormat": {"encoding": encoding, "sampleRate": sample_rate, "channels": channels},
        },
        "streamSid": stream_sid,
    }


def media_message(seq: int, stream_sid: str, track: str, chunk: int, timestamp_ms: int, payload: bytes) -> dict:
    return {
        "event": "media",
        "sequenceNumber": str(seq),
        "media": {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "streamSid": stream_sid,
    }


def dtmf_message(seq: int, stream_sid: str, digit: str) -> dict:
    return {"event": "dtmf", "streamSid": stream_sid, "sequenceNumber": str(seq),
            "dtmf": {"track": "inbound_track", "digit": digit}}


def mark_message(seq: int, stream_sid: str, name: str) -> dict:
    return {"event": "mark", "sequenceNumber": str(seq), "streamSid": stream_sid, "mark": {"name": name}}


def stop_message(seq: int, stream_sid: str, call_sid: str, *, account_sid: str) -> dict:
    return {"event": "stop", "sequenceNumber": str(seq),
            "stop": {"accountSid": account_sid, "callSid": call_sid}, "streamSid": stream_sid}
