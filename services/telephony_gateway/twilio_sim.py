"""A Twilio Media Streams client: what Twilio sends for a ``<Stream>``, made from a stereo recording.

Used by the tests and ``bench/gateway.py`` to play Twilio's side against a real gateway on
127.0.0.1: ``connected``, ``start`` (with ``customParameters``), the two tracks' ``media``
messages (20 ms of 8 kHz mu-law each, ``chunk`` per track from 1, ``timestamp`` in ms since the
stream started, one ``sequenceNumber`` across the stream), and ``stop``; the upgrade carries an
``X-Twilio-Signature`` made with Twilio's SDK. Left column = Lupita = Twilio's ``outbound`` track,
right column = the person = ``inbound``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import connect

from lupita.audio import mulaw_encode

from . import signature
from . import twilio_messages as tw

FRAME_MS = 20
FRAME_SAMPLES = tw.SAMPLE_RATE * FRAME_MS // 1000  # 160
# Column of the stereo array -> Twilio track.
COLUMN_TRACKS = ("outbound", "inbound")


def new_sids() -> tuple[str, str, str]:
    """(streamSid, callSid, accountSid) shaped like Twilio's: a two-letter prefix + 32 hex."""
    return "MZ" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex, "AC" + uuid.uuid4().hex


@dataclass
class TwilioCall:
    """The messages of one stream, in Twilio's order."""

    stream_sid: str
    call_sid: str
    account_sid: str
    messages: list[dict]
    audio_ms: int
    # media message index -> (track, chunk), for latency bookkeeping
    media: list[tuple[int, str, int, int]] = field(default_factory=list)  # (message index, track, chunk, timestamp ms)


def build_call(stereo: np.ndarray, custom_parameters: dict[str, str], *, tracks: tuple[str, ...] = ("inbound", "outbound"),
               sids: tuple[str, str, str] | None = None, dtmf: str = "", mark: str = "") -> TwilioCall:
    """The messages for ``stereo`` (``(n, 2)`` int16 at 8 kHz): padded to whole 20 ms frames, both
    tracks interleaved in timestamp order (outbound first at equal timestamps)."""
    stereo = np.asarray(stereo, dtype=np.int16)
    if stereo.ndim != 2 or stereo.shape[1] != 2:
        raise ValueError(f"expected stereo audio of shape (n, 2), got {stereo.shape}")
    stream_sid, call_sid, account_sid = sids or new_sids()
    n_frames = -(-len(stereo) // FRAME_SAMPLES)
    padded = np.zeros((n_frames * FRAME_SAMPLES, 2), dtype=np.int16)
    padded[: len(stereo)] = stereo
    seq = 1
    messages = [tw.connected_message(),
                tw.start_message(seq, stream_sid, call_sid, account_sid=account_sid, tracks=tracks,
                                 custom_parameters=custom_parameters)]
    call = TwilioCall(stream_sid, call_sid, account_sid, messages, n_frames * FRAME_MS)
    encoded = {track: mulaw_encode(padded[:, COLUMN_TRACKS.index(track)]) for track in tracks}
    for i in range(n_frames):
        for track in COLUMN_TRACKS:
            if track not in tracks:
                continue
            seq += 1
            payload = encoded[track][i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES]
            call.media.append((len(messages), track, i + 1, i * FRAME_MS))
            messages.append(tw.media_message(seq, stream_sid, track, i + 1, i * FRAME_MS, payload))
        if i == n_frames // 2:
            if dtmf:
                seq += 1
                messages.append(tw.dtmf_message(seq, stream_sid, dtmf))
            if mark:
                seq += 1
                messages.append(tw.mark_message(seq, stream_sid, mark))
    seq += 1
    messages.append(tw.stop_message(seq, stream_sid, call_sid, account_sid=account_sid))
    return call


def upgrade_headers(auth_token: str, url: str) -> dict[str, str]:
    """The X-Twilio-Signature header Twilio sends for a websocket to ``url``."""
    signed, params = _split(url)
    return {signature.HEADER: signature.sign(auth_token, signed, params)}


def _split(url: str) -> tuple[str, dict[str, str]]:
    from urllib.parse import parse_qsl, urlsplit

    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}", dict(parse_qsl(p.query, keep_blank_values=True))


@dataclass
class StreamResult:
    close_code: int | None = None
    close_reason: str = ""
    sent: int = 0
    # message index -> perf_counter() when it was written (media only)
    sent_at: dict[int, float] = field(default_factory=dict)
    started_wall_us: int = 0
    started_perf: float = 0.0  # perf_counter() at started_wall_us (sent_at -> wall clock)

    def sent_wall_ms(self, index: int) -> float:
        """Wall-clock time (unix ms) when message ``index`` was written."""
        return self.started_wall_us / 1000 + (self.sent_at[index] - self.started_perf) * 1000


async def stream(url: str, messages: list, *, auth_token: str = "", sign_as: str | None = None,
                 headers: dict[str, str] | None = None, speed: float = 0.0,
                 media_index: list[tuple[int, str, int, int]] | None = None, close_timeout_s: float = 60.0,
                 progress: dict | None = None) -> StreamResult:
    """Send ``messages`` (dicts, or str/bytes sent as they are) over one websocket to ``url``, paced
    by the media timestamps when ``speed`` > 0 (1.0 = real time), then wait for the gateway to
    close the socket. Returns how it closed. ``sign_as``: the URL Twilio dialled, when it differs
    from ``url`` (TLS ends in front of the gateway: Twilio signs ``wss://``). ``progress["n"]`` is
    kept at the number of messages written so far (for a watcher)."""
    hdrs = dict(headers or {})
    if auth_token:
        hdrs.update(upgrade_headers(auth_token, sign_as or url))
    result = StreamResult()
    offsets = {i: ts for i, _, _, ts in (media_index or [])}
    async with connect(url, additional_headers=hdrs, max_size=None, open_timeout=30, compression=None) as ws:
        t0 = time.perf_counter()
        result.started_wall_us = time.time_ns() // 1000
        result.started_perf = time.perf_counter()
        try:
            for i, msg in enumerate(messages):
                if speed > 0 and i in offsets:
                    delay = t0 + offsets[i] / 1000 / speed - time.perf_counter()
                    if delay > 0.001:
                        await asyncio.sleep(delay)
                data = msg if isinstance(msg, (str, bytes)) else json.dumps(msg)
                await ws.send(data)
                if i in offsets:
                    result.sent_at[i] = time.perf_counter()
                result.sent += 1
                if progress is not None:
                    progress["n"] = result.sent
        except Exception:  # the gateway closed the socket mid-stream: report how
            pass
        try:
            await asyncio.wait_for(ws.wait_closed(), close_timeout_s)
        except asyncio.TimeoutError:
            await ws.close()
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    return result
