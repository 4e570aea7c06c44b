"""Bad input, classified: every refusal carries a stable ``kind`` (the
``lupita_gateway_bad_input_total{kind}`` label) and a message that never quotes the input (a
custom parameter may hold a phone number)."""

from __future__ import annotations

# Every kind, exported at 0 from the start so dashboards and alerts see each series.
BAD_INPUT_KINDS = (
    "malformed_json",  # a text frame that is not a JSON object
    "binary_frame",  # Twilio sends text frames only
    "unknown_event",  # an event name the protocol does not have
    "invalid_field",  # a documented field missing or of the wrong type/value
    "before_start",  # media/dtmf/mark before the start message
    "second_start",  # a second start message
    "stream_sid",  # a message of another stream on this socket
    "duplicate",  # a sequence number (or a track's chunk) seen already: dropped
    "late",  # a message that arrived after its hole was given up: dropped
    "overlap",  # a frame whose timestamp lies inside the previous frame of its track: dropped
    "oversize_frame",  # a media payload longer than gateway_max_frame_ms: dropped
    "oversize_message",  # a websocket message over gateway_max_message_bytes: call ended
    "media_format",  # an announced or observed format the gateway does not take: call refused
    "custom_parameters",  # the start's customParameters lack a usable phone number
    "stalled",  # no message for gateway_idle_timeout_seconds: call ended
    "signature",  # X-Twilio-Signature missing or wrong: upgrade refused (403)
    # Chime SDK Voice Connector -> Kinesis Video Streams
    "malformed_mkv",  # bytes of a KVS stream that do not decode as Matroska: that fragment skipped
    "missing_tag",  # a fragment without the tags it must carry (fragment number, producer time, ids): skipped
    "recycled_stream",  # a fragment whose CallId/TransactionId tag is another call's: the leg ends there
    "unpaired",  # a leg whose other leg's STARTED event never came: the call runs with one leg
)


class BadInput(Exception):
    """One message (or the whole stream, when ``fatal``) refused for ``kind``."""

    def __init__(self, kind: str, message: str, *, fatal: bool = False) -> None:
        assert kind in BAD_INPUT_KINDS, kind
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.fatal = fatal


class BridgeFailed(Exception):
    """The media bridge refused the call or its stream ended early: ``code`` is the gRPC status
    name (or the Error message's code), ``detail`` the bridge's message."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
