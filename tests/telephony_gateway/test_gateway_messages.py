"""Twilio's message shapes, the signature and the settings (pure: no sockets)."""

from __future__ import annotations

import json

import pytest

from telephony_gateway import signature
from telephony_gateway import twilio_messages as tw
from telephony_gateway.errors import BadInput
from telephony_gateway.settings import GatewaySettings

SID, CALL, ACC = "MZ" + "a" * 32, "CA" + "b" * 32, "AC" + "c" * 32


def test_the_documented_messages_round_trip_through_build_and_parse():
    start = tw.parse(json.dumps(tw.start_message(1, SID, CALL, account_sid=ACC, tracks=("inbound", "outbound"),
                                                 custom_parameters={"phone": "+52 951 555 0142"})))
    assert isinstance(start, tw.Start) and start.call_sid == CALL and start.tracks == ("inbound", "outbound")
    assert (start.encoding, start.sample_rate, start.channels) == ("audio/x-mulaw", 8000, 1)
    assert "555" not in repr(start)  # custom parameters (a phone number) are kept out of repr
    media = tw.parse(json.dumps(tw.media_message(7, SID, "outbound", 3, 40, b"\x7f" * 160)))
    assert (media.sequence_number, media.track, media.chunk, media.timestamp_ms, media.payload) == (
        7, "outbound", 3, 40, b"\x7f" * 160)
    assert isinstance(tw.parse(json.dumps(tw.stop_message(9, SID, CALL, account_sid=ACC))), tw.Stop)
    assert tw.parse(json.dumps(tw.dtmf_message(8, SID, "5"))).digit == "5"
    assert tw.parse(json.dumps(tw.mark_message(6, SID, "m"))).name == "m"
    assert tw.parse(json.dumps(tw.connected_message())).protocol == "Call"


@pytest.mark.parametrize("text, kind", [
    ("{oops", "malformed_json"),
    ("[]", "malformed_json"),
    ('{"event": 3}', "invalid_field"),
    ('{"event": "transcription"}', "unknown_event"),
    ('{"event": "media", "sequenceNumber": "2", "streamSid": "MZ1", "media": {"track": "sideways", "chunk": "1", '
     '"timestamp": "0", "payload": "AAAA"}}', "invalid_field"),
    ('{"event": "media", "sequenceNumber": "-2", "streamSid": "MZ1", "media": {"track": "inbound", "chunk": "1", '
     '"timestamp": "0", "payload": "AAAA"}}', "invalid_field"),
    ('{"event": "media", "sequenceNumber": "2", "streamSid": "MZ1", "media": {"track": "inbound", "chunk": "1", '
     '"timestamp": "0", "payload": "@@@"}}', "invalid_field"),
    ('{"event": "media", "sequenceNumber": "2", "media": {"track": "inbound", "chunk": "1", "timestamp": "0", '
     '"payload": "AAAA"}}', "invalid_field"),
    ('{"event": "start", "streamSid": "MZ1", "start": {"callSid": "CA1", "tracks": [], "mediaFormat": {}}}',
     "invalid_field"),
])
def test_bad_messages_are_refused_with_their_class_and_without_their_content(text, kind):
    with pytest.raises(BadInput) as err:
        tw.parse(text)
    assert err.value.kind == kind
    assert "AAAA" not in err.value.message and "@@@" not in err.value.message


def test_the_signature_covers_the_wss_url_and_the_query_parameters():
    token = "tok"
    url, params = signature.signed_url("wss://gw.example.org", "10.0.0.5:8765", "/twilio?x=1")
    assert (url, params) == ("wss://gw.example.org/twilio", {"x": "1"})
    sig = signature.sign(token, url, params)
    assert signature.valid(token, sig, url, params)
    assert not signature.valid(token, sig, url, {"x": "2"})
    assert not signature.valid("other", sig, url, params)
    assert not signature.valid(token, None, url, params)
    assert signature.signed_url("", "gw.internal:8765", "/twilio")[0] == "wss://gw.internal:8765/twilio"


def test_settings_refuse_an_unsigned_gateway_unless_asked_and_odd_frame_lengths():
    with pytest.raises(ValueError, match="LUPITA_GATEWAY_TWILIO_AUTH_TOKEN"):
        GatewaySettings(gateway_twilio_auth_token="")
    assert GatewaySettings(gateway_twilio_auth_token="", gateway_allow_unsigned=True).gateway_allow_unsigned
    with pytest.raises(ValueError):
        GatewaySettings(gateway_twilio_auth_token="t", gateway_bridge_frame_ms=50)
    with pytest.raises(ValueError, match="PUBLIC_URL"):
        GatewaySettings(gateway_twilio_auth_token="t", gateway_public_url="https://gw.example.org")
