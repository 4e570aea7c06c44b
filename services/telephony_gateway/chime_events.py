"""Amazon Chime SDK Voice Connector streaming events (EventBridge), parsed and checked (pure).

When a Voice Connector with streaming on carries a call, it writes each call leg's audio to its
own Kinesis Video stream and sends EventBridge events of ``detail-type`` "Chime VoiceConnector
Streaming Status", ``source`` "aws.chime" (Chime SDK administrator guide, "Automating the Amazon
Chime SDK with EventBridge"; AWS's amazon-chime-voiceconnector-transcription and
amazon-transcribe-live-call-analytics samples read the same fields)::

    {"version": "0", "id": "…", "detail-type": "Chime VoiceConnector Streaming Status",
     "source": "aws.chime", "account": "…", "time": "…", "region": "us-east-1", "resources": [],
     "detail": {"streamingStatus": "STARTED", "voiceConnectorId": "…", "transactionId": "…",
                "callId": "…", "direction": "Inbound", "mediaType": "audio/L16",
                "startFragmentNumber": "…", "startTime": "…", "streamArn": "arn:aws:kinesisvideo:…",
                "isCaller": true, "fromNumber": "+1…", "toNumber": "+1…", "version": "0"}}

``STARTED`` comes once per leg (``isCaller`` says which; both legs share ``transactionId`` and
``callId``), ``ENDED`` when streaming of the call ends, ``FAILED`` (``failureReason``) when it
fails. The numbers are phone numbers: they go to the bridge only and never into a log line or an
error message (:class:`~telephony_gateway.errors.BadInput` messages name fields, not values).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import BadInput

DETAIL_TYPE = "Chime VoiceConnector Streaming Status"
SOURCE = "aws.chime"
STATUSES = ("STARTED", "ENDED", "FAILED")
MEDIA_TYPES = ("audio/L16",)
DIRECTIONS = ("Inbound", "Outbound")
_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,256}$")
_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kinesisvideo:[a-z0-9-]+:\d{1,12}:stream/[A-Za-z0-9_.-]{1,256}/\d{1,20}$")
_FRAGMENT_RE = re.compile(r"^\d{1,128}$")


@dataclass(frozen=True)
class StreamingEvent:
    status: str
    transaction_id: str
    call_id: str  # Chime's callId (the MKV fragments carry it as the CallId tag)
    voice_connector_id: str
    direction: str = ""  # Inbound / Outbound
    is_caller: bool | None = None
    stream_arn: str = ""
    start_fragment_number: str = ""
    start_time: str = ""  # detail.startTime (ISO 8601): when the stream of this leg started
    event_time: str = ""  # the envelope's time (ISO 8601): when Chime sent the event
    failure_reason: str = ""
    from_number: str = field(default="", repr=False)
    to_number: str = field(default="", repr=False)


def _text(detail: dict, name: str, *, required: bool = True, pattern: re.Pattern | None = None) -> str:
    value = detail.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise BadInput("invalid_field", f"detail.{name} must be a non-empty string")
    if pattern is not None and not pattern.match(value):
        raise BadInput("invalid_field", f"detail.{name} is not of the documented form")
    return value


def parse(event: object) -> StreamingEvent:
    """The checked event, or BadInput: ``unknown_event`` for another event type or status,
    ``invalid_field`` for a documented field missing or malformed, ``media_format`` for a media
    type other than 16-bit linear PCM."""
    if not isinstance(event, dict):
        raise BadInput("malformed_json", "an event must be a JSON object")
    if event.get("source") != SOURCE or event.get("detail-type") != DETAIL_TYPE:
        raise BadInput("unknown_event", "not a 'Chime VoiceConnector Streaming Status' event of source aws.chime")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise BadInput("invalid_field", "detail must be an object")
    status = detail.get("streamingStatus")
    if status not in STATUSES:
        raise BadInput("unknown_event", f"streamingStatus is not one of {', '.join(STATUSES)}")
    if str(detail.get("version", "0")) != "0":
        raise BadInput("invalid_field", "detail.version is not 0")
    common = dict(status=status, transaction_id=_text(detail, "transactionId", pattern=_ID_RE),
                  call_id=_text(detail, "callId", pattern=_ID_RE),
                  voice_connector_id=_text(detail, "voiceConnectorId", pattern=_ID_RE))
    direction = detail.get("direction", "")
    if direction and direction not in DIRECTIONS:
        raise BadInput("invalid_field", "detail.direction must be Inbound or Outbound")
    if status == "FAILED":
        reason = detail.get("failureReason", "")
        return StreamingEvent(**common, direction=direction, failure_reason=str(reason)[:200])
    if status == "ENDED":
        return StreamingEvent(**common, direction=direction)
    if detail.get("mediaType") not in MEDIA_TYPES:
        raise BadInput("media_format", "detail.mediaType is not audio/L16 (16-bit linear PCM)", fatal=True)
    if not direction:
        raise BadInput("invalid_field", "detail.direction is required on STARTED")
    is_caller = detail.get("isCaller")
    if not isinstance(is_caller, bool):
        raise BadInput("invalid_field", "detail.isCaller must be true or false (which leg this stream carries)")
    numbers = {}
    for name in ("fromNumber", "toNumber"):
        value = detail.get(name, "")
        if not isinstance(value, str):
            raise BadInput("invalid_field", f"detail.{name} must be a string")
        numbers[name] = value
    return StreamingEvent(
        **common, direction=direction, is_caller=is_caller,
        stream_arn=_text(detail, "streamArn", pattern=_ARN_RE),
        start_fragment_number=_text(detail, "startFragmentNumber", pattern=_FRAGMENT_RE),
        start_time=_text(detail, "startTime", required=False),
        event_time=event.get("time") if isinstance(event.get("time"), str) else "",
        from_number=numbers["fromNumber"], to_number=numbers["toNumber"],
    )


def person_number(event: StreamingEvent) -> str:
    """The person's number: the caller of an inbound call, the callee of an outbound one."""
    return event.from_number if event.direction == "Inbound" else event.to_number


def person_leg_is_caller(direction: str) -> bool:
    """Which stream carries the person: on an inbound call the caller is the person; on an
    outbound call (Lupita dials) the callee is."""
    return direction == "Inbound"


# -- the record on the gateway's Kafka topic (telephony.chime.events) --------------------------------
# The control API publishes each checked event there, keyed by its transaction id (so both legs'
# STARTED and the ENDED of one call land on one partition, whose owner runs the call); the person's
# number travels encrypted (LUPITA_PHONE_ENCRYPTION_KEY), never in clear, and the other number not
# at all.

RECORD_VERSION = 1


def record_key(event: StreamingEvent) -> bytes:
    return event.transaction_id.encode()


def to_record(event: StreamingEvent, encrypt: Callable[[str], str]) -> bytes:
    """The event as the topic's JSON value; ``encrypt`` turns the person's number into its
    ciphertext (base64) and raises BadInput for a number that is not one."""
    value = {"v": RECORD_VERSION, "status": event.status, "transactionId": event.transaction_id,
             "callId": event.call_id, "voiceConnectorId": event.voice_connector_id, "direction": event.direction}
    if event.status == "STARTED":
        value.update(isCaller=event.is_caller, streamArn=event.stream_arn,
                     startFragmentNumber=event.start_fragment_number, startTime=event.start_time,
                     eventTime=event.event_time, phone=encrypt(person_number(event)))
    elif event.status == "FAILED":
        value["failureReason"] = event.failure_reason
    return json.dumps(value, separators=(",", ":")).encode()


def from_record(value: bytes, decrypt: Callable[[str], str]) -> StreamingEvent:
    """The event of a topic record (BadInput ``malformed_json`` for a record that is not one)."""
    try:
        v = json.loads(value)
        status = v["status"]
        common = dict(status=status, transaction_id=str(v["transactionId"]), call_id=str(v["callId"]),
                      voice_connector_id=str(v["voiceConnectorId"]), direction=str(v.get("direction", "")))
        if status == "STARTED":
            phone = decrypt(v["phone"])
            number = {"from_number": phone} if common["direction"] == "Inbound" else {"to_number": phone}
            return StreamingEvent(**common, is_caller=bool(v["isCaller"]), stream_arn=str(v["streamArn"]),
                                  start_fragment_number=str(v["startFragmentNumber"]),
                                  start_time=str(v.get("startTime") or ""), event_time=str(v.get("eventTime") or ""),
                                  **number)
        if status in ("ENDED", "FAILED"):
            return StreamingEvent(**common, failure_reason=str(v.get("failureReason", "")))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput("malformed_json", f"a record of the Chime events topic is not one: {type(exc).__name__}") from None
    raise BadInput("unknown_event", "a record of the Chime events topic with an unknown status")
