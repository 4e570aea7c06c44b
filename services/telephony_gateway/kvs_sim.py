"""Chime's side, played locally: MKV fragments as a Voice Connector writes them to Kinesis Video
Streams, and a stand-in for KVS's ``GetDataEndpoint`` / ``GetMedia`` HTTP APIs serving them (for
tests and ``bench/gateway.py``; the real service cannot be reached here).

**Fragments** (:func:`fragment`) are GetMedia chunks as the KVS parser library reads them: an EBML
header, then a ``Segment`` of unknown size with ``Info``, ``Tracks`` (one audio track,
``A_PCM/INT/LIT``, 8000 Hz, mono, 16 bit: Chime's ``audio/L16``), ``Tags`` holding the producer's
persistent fragment metadata (``TransactionId``, ``VoiceConnectorId`` — the two the Chime
administrator guide names — and ``CallId``, which AWS's live-call-analytics transcriber compares to
detect a recycled stream) together with the service's ``AWS_KINESISVIDEO_FRAGMENT_NUMBER``,
``AWS_KINESISVIDEO_SERVER_TIMESTAMP`` and ``AWS_KINESISVIDEO_PRODUCER_TIMESTAMP`` (seconds with
millisecond decimals), a ``Cluster`` of unknown size (``Timecode``, one ``SimpleBlock`` per 20 ms
frame), then ``Tags`` with ``AWS_KINESISVIDEO_CONTINUATION_TOKEN`` and
``AWS_KINESISVIDEO_MILLIS_BEHIND_NOW``. Everything is encoded with ``ebmlite``.

**The server** (:class:`KvsServer`, aiohttp on 127.0.0.1) speaks the two REST-JSON operations the
gateway calls through boto3: ``POST /getDataEndpoint`` (answers its own URL) and ``POST
/getMedia`` (``StreamARN``, ``StartSelector``) answering ``200`` with ``Content-Type:
video/webm`` and the chunks as a streamed body. Each ``StartSelectorType`` does what GetMedia's
API reference says: ``FRAGMENT_NUMBER`` starts with the chunk *after* ``AfterFragmentNumber``
(numbers compared as integers); ``SERVER_TIMESTAMP`` / ``PRODUCER_TIMESTAMP`` with the chunk
*containing* ``StartTimestamp`` (epoch seconds, as boto3 sends it), read from each fragment's
``AWS_KINESISVIDEO_SERVER_TIMESTAMP`` / ``..._PRODUCER_TIMESTAMP`` tag: a fragment contains the
times from its own timestamp up to the next fragment's, and a time before the first fragment
starts at the first; ``EARLIEST`` at the first, ``NOW`` at the end. (AWS's Chime and Connect
samples pass the event's ``startFragmentNumber`` as ``AfterFragmentNumber`` as if it were
inclusive; under the documented reading that skips the first fragment, which is why the gateway
starts by timestamp.) A stream may hold raw bytes (damage), a stall
(the body stops without ending) and a "live" end (the body stays open until :meth:`KvsStream.close`).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from .mkv import SCHEMA, MkvStreamReader, Tags, simple_block

FRAME_MS = 20
RATE = 8000
CODEC = "A_PCM/INT/LIT"


def _ebml_header() -> bytes:
    return bytes(SCHEMA["EBML"].encode({"EBMLVersion": 1, "EBMLReadVersion": 1, "EBMLMaxIDLength": 4,
                                        "EBMLMaxSizeLength": 8, "DocType": "matroska", "DocTypeVersion": 2,
                                        "DocTypeReadVersion": 2}))


def _tags(values: dict[str, str]) -> bytes:
    return bytes(SCHEMA["Tags"].encode({"Tag": [{"Targets": {}, "SimpleTag": [
        {"TagName": k, "TagString": v} for k, v in values.items()]}]}))


def fragment(pcm: np.ndarray, *, fragment_number: str, producer_ts_ms: int, tags: dict[str, str],
             codec: str = CODEC, rate: float = RATE, channels: int = 1, frame_ms: int = FRAME_MS,
             aws_tags: dict[str, str] | None = None, cluster_timecode: int | None = None) -> bytes:
    """One GetMedia chunk holding ``pcm`` (int16 mono) as ``frame_ms`` SimpleBlocks.
    ``aws_tags`` replaces the service's tags (None = the three usual ones); a key with value
    None... is simply left out by passing a dict without it."""
    samples = int(rate) * frame_ms // 1000 * channels
    data = np.asarray(pcm, dtype="<i2").tobytes()
    blocks = []
    for i, start in enumerate(range(0, len(data), samples * 2)):
        blocks.append(bytes(SCHEMA["SimpleBlock"].encode(simple_block(1, i * frame_ms, data[start:start + samples * 2]))))
    service = aws_tags if aws_tags is not None else {
        "AWS_KINESISVIDEO_FRAGMENT_NUMBER": fragment_number,
        "AWS_KINESISVIDEO_SERVER_TIMESTAMP": f"{(producer_ts_ms + 250) / 1000:.3f}",
        "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP": f"{producer_ts_ms / 1000:.3f}",
    }
    tracks = bytes(SCHEMA["Tracks"].encode({"TrackEntry": [{
        "TrackNumber": 1, "TrackUID": 1, "TrackType": 2, "Name": "AUDIO", "CodecID": codec,
        "Audio": {"SamplingFrequency": float(rate), "Channels": channels, "BitDepth": 16}}]}))
    info = bytes(SCHEMA["Info"].encode({"TimecodeScale": 1_000_000, "MuxingApp": "chime-sim", "WritingApp": "chime-sim"}))
    cluster = (bytes(SCHEMA["Cluster"].encode({}, infinite=True))
               + bytes(SCHEMA["Timecode"].encode(producer_ts_ms if cluster_timecode is None else cluster_timecode))
               + b"".join(blocks))
    after = _tags({"AWS_KINESISVIDEO_CONTINUATION_TOKEN": fragment_number, "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW": "0"})
    return (_ebml_header() + bytes(SCHEMA["Segment"].encode({}, infinite=True)) + info + tracks
            + _tags({**tags, **service}) + cluster + after)


ERROR_TEXT = {"3002": "Error writing to the stream", "4000": "Requested fragment is not found",
              "5000": "Internal error"}


def error_chunk(error_id: str) -> bytes:
    """GetMedia's in-band error: a chunk whose Tags hold AWS_KINESISVIDEO_ERROR_CODE (text) and
    AWS_KINESISVIDEO_ERROR_ID (the integer code)."""
    return (_ebml_header() + bytes(SCHEMA["Segment"].encode({}, infinite=True))
            + _tags({"AWS_KINESISVIDEO_ERROR_CODE": ERROR_TEXT.get(error_id, "Error"), "AWS_KINESISVIDEO_ERROR_ID": error_id}))


def _timestamp(chunk: bytes, tag: str) -> float | None:
    """A fragment's ``tag`` (seconds) from its leading Tags, None without it."""
    try:
        for ev in MkvStreamReader().feed(chunk):
            if isinstance(ev, Tags) and tag in ev.values:
                return float(ev.values[tag])
    except ValueError:
        return None
    return None


def chime_tags(transaction_id: str, call_id: str, voice_connector_id: str = "vc-sim") -> dict[str, str]:
    return {"TransactionId": transaction_id, "VoiceConnectorId": voice_connector_id, "CallId": call_id}


def fragments_of(pcm: np.ndarray, *, first_number: int, start_ms: int, tags: dict[str, str],
                 fragment_ms: int = 1000, **kw) -> list[tuple[str, bytes]]:
    """``pcm`` cut into fragments of ``fragment_ms`` with increasing numbers and producer times."""
    per = RATE * fragment_ms // 1000
    out = []
    for i, start in enumerate(range(0, len(pcm), per)):
        number = str(first_number + i)
        out.append((number, fragment(pcm[start:start + per], fragment_number=number,
                                     producer_ts_ms=start_ms + i * fragment_ms, tags=tags, **kw)))
    return out


@dataclass
class KvsStream:
    """One stream's content: items are (fragment number, chunk bytes); a number of None marks raw
    bytes (damage) that are sent as they are."""

    arn: str
    items: list[tuple[str | None, bytes]] = field(default_factory=list)
    stall_after: int | None = None  # the stream's items before it stops without ending (every request)
    live: bool = False  # keep the body open after the last item until close()
    speed: float = 0.0  # 0 = as fast as the reader takes; 1 = one fragment per its duration
    pieces: int = 1  # with speed: each fragment written in this many pieces spread over its duration
    # with speed 1: the wall-clock time (ms) the producer began the first item; each piece is then
    # sent when the producer would have finished it (KVS live: a reader that starts late gets the
    # backlog at once, then keeps pace), instead of pacing from the request
    wall_t0_ms: float | None = None
    fragment_ms: int = 1000
    hold_at: int | None = None  # item index before which a body waits for release() (a producer pausing)
    # GetMedia requests answered with these (HTTP status, x-amzn-ErrorType), one per request, in order
    http_errors: list[tuple[int, str]] = field(default_factory=list)
    # item index -> AWS_KINESISVIDEO_ERROR_ID: when a body reaches that item it sends GetMedia's
    # in-band error chunk instead and stops (served once: the next request goes on)
    inband_errors: dict[int, str] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    written: int = 0  # bytes handed to the connection (a write waits while the reader's TCP window is full)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self) -> None:
        self._closed.set()
        self._released.set()

    def release(self) -> None:
        self._released.set()


class KvsServer:
    def __init__(self) -> None:
        self.streams: dict[str, KvsStream] = {}
        self.endpoint_requests: list[str] = []  # the StreamARN of each GetDataEndpoint
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._tasks: set[asyncio.Task] = set()
        app = web.Application()
        app.router.add_post("/getDataEndpoint", self._endpoint)
        app.router.add_post("/getMedia", self._get_media)
        self.app = app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, stream: KvsStream) -> KvsStream:
        self.streams[stream.arn] = stream
        return stream

    async def start(self, port: int = 0) -> "KvsServer":
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def close(self) -> None:
        for stream in self.streams.values():
            stream.close()
        if self.runner is not None:
            await self.runner.cleanup()

    @staticmethod
    def _error(status: int, kind: str, message: str) -> web.Response:
        return web.json_response({"message": message}, status=status, headers={"x-amzn-ErrorType": kind})

    async def _endpoint(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.endpoint_requests.append(str(body.get("StreamARN")))
        if body.get("APIName") != "GET_MEDIA" or body.get("StreamARN") not in self.streams:
            return self._error(404, "ResourceNotFoundException", "no such stream")
        return web.json_response({"DataEndpoint": self.url})

    async def _get_media(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = self.streams.get(body.get("StreamARN"))
        if stream is None:
            return self._error(404, "ResourceNotFoundException", "no such stream")
        stream.requests.append(body)
        if stream.http_errors:
            status, kind = stream.http_errors.pop(0)
            return self._error(status, kind, f"{kind} (stand-in)")
        selector = body.get("StartSelector") or {}
        kind = selector.get("StartSelectorType")
        numbered = [i for i, (n, _) in enumerate(stream.items) if n is not None]
        if kind == "FRAGMENT_NUMBER":
            after = selector.get("AfterFragmentNumber", "")
            if not str(after).isdigit():
                return self._error(400, "InvalidArgumentException", "AfterFragmentNumber is required")
            start = next((i for i in numbered if int(stream.items[i][0]) > int(after)), len(stream.items))
        elif kind in ("SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP"):
            at = selector.get("StartTimestamp")
            if not isinstance(at, (int, float)):
                return self._error(400, "InvalidArgumentException", "StartTimestamp is required")
            tag = f"AWS_KINESISVIDEO_{kind}"
            timed = [(i, _timestamp(stream.items[i][1], tag)) for i in numbered]
            containing = [i for i, ts in timed if ts is not None and ts <= at]
            start = containing[-1] if containing else (numbered[0] if numbered else len(stream.items))
        elif kind == "EARLIEST":
            start = 0
        elif kind == "NOW":
            start = len(stream.items)
        else:
            return self._error(400, "InvalidArgumentException", "unsupported StartSelectorType")
        response = web.StreamResponse(status=200, headers={"Content-Type": "video/webm"})
        await response.prepare(request)
        try:
            for index, (number, data) in enumerate(stream.items[start:], start):
                if index in stream.inband_errors:
                    await response.write(error_chunk(stream.inband_errors.pop(index)))
                    await response.write_eof()  # "an error that caused GetMedia to stop"
                    return response
                if stream.hold_at is not None and index == stream.hold_at:
                    await stream._released.wait()
                # a stalled producer never wrote fragment ``stall_after`` onwards: a reader that
                # reconnects (a new GetMedia request) does not get more than the first one did
                if stream.stall_after is not None and index >= stream.stall_after:
                    await stream._closed.wait()  # stalled: nothing more, the body never ends
                    return response
                if stream.speed and number is not None:
                    step = -(-len(data) // stream.pieces)
                    for k, at in enumerate(range(0, len(data), step)):  # a live producer's bytes arrive over the fragment
                        if stream.wall_t0_ms is not None:
                            due = stream.wall_t0_ms + (index + (k + 1) / stream.pieces) * stream.fragment_ms
                            delay = (due - time.time() * 1000) / 1000
                            if delay > 0:
                                await asyncio.sleep(delay)
                            await response.write(data[at:at + step])
                        else:
                            await response.write(data[at:at + step])
                            await asyncio.sleep(stream.fragment_ms / 1000 / stream.speed / stream.pieces)
                        stream.written += min(step, len(data) - at)
                else:
                    await response.write(data)
                    stream.written += len(data)
            if stream.live:
                await stream._closed.wait()
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response


def streaming_event(status: str, *, transaction_id: str, call_id: str, stream_arn: str = "", is_caller: bool | None = None,
                    start_fragment_number: str = "", direction: str = "Inbound", from_number: str = "",
                    to_number: str = "", voice_connector_id: str = "vc-sim", start_ms: int | None = None, **extra) -> dict:
    """An EventBridge event as Chime sends it (the documented example's shape). ``start_ms``:
    the stream's start (epoch ms) as ``startTime`` and the envelope's ``time`` (ISO 8601)."""
    when = "2026-12-02T15:00:00Z"
    if start_ms is not None:
        when = datetime.datetime.fromtimestamp(start_ms / 1000, datetime.timezone.utc).isoformat(timespec="milliseconds")
        when = when.replace("+00:00", "Z")
    detail = {"streamingStatus": status, "voiceConnectorId": voice_connector_id, "transactionId": transaction_id,
              "callId": call_id, "direction": direction, "version": "0"}
    if status == "STARTED":
        detail.update(mediaType="audio/L16", startFragmentNumber=start_fragment_number,
                      startTime=when, streamArn=stream_arn, isCaller=is_caller,
                      fromNumber=from_number, toNumber=to_number)
    elif status == "ENDED":
        detail.update(endTime="2026-12-02T15:01:00Z")
    elif status == "FAILED":
        detail.update(failTime="2026-12-02T15:01:00Z", failureReason="Internal failure")
    detail.update(extra)
    return {"version": "0", "id": "00000000-0000-0000-0000-000000000000",
            "detail-type": "Chime VoiceConnector Streaming Status", "source": "aws.chime",
            "account": "111122223333", "time": when, "region": "us-east-1",
            "resources": [], "detail": detail}


def stream_arn(name: str) -> str:
    return f"arn:aws:kinesisvideo:us-east-1:111122223333:stream/ChimeVoiceConnector-{name}/1700000000000"


__all__ = ["KvsServer", "KvsStream", "chime_tags", "fragment", "fragments_of", "stream_arn", "streaming_event", "json"]
