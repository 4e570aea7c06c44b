"""Amazon Chime SDK Voice Connector calls: two Kinesis Video streams (one per leg) into one bridge call.

Flow: the control API publishes streaming events (:mod:`~telephony_gateway.chime_events`) to
Kafka; the pod that owns their partition hands them to :class:`ChimeCalls`. ``STARTED`` events are **paired by transaction id** (one with ``isCaller``
true, one false; a leg whose partner does not come within ``gateway_chime_pair_seconds`` runs
alone, counted ``unpaired``); the pair becomes a :class:`ChimeSession`. ``ENDED``/``FAILED`` tell
the session the call is over (it still reads each stream's tail).

Per leg, a :class:`KvsLeg` calls ``GetMedia`` (boto3's ``kinesis-video-media`` client, endpoint
from ``GetDataEndpoint``; both clients are built once per process, :func:`aws_client`) in its own
thread. The first read starts by ``SERVER_TIMESTAMP`` (documented: the chunk *containing* the
time) at the leg's ``startTime`` less a margin and skips fragments numbered before the event's
``startFragmentNumber`` (``FRAGMENT_NUMBER`` is documented as the chunk *after* the fragment: it
would lose the first one; :func:`first_selector`); a reconnection or a restart reads
``FRAGMENT_NUMBER`` after the last fragment forwarded, where "after" is what is wanted.
boto3 is blocking: the bytes go through a bounded queue, so a slow bridge stops the thread's
reads and TCP pushes back on KVS. The bytes go
through :class:`~telephony_gateway.mkv.MkvStreamReader` and :class:`LegParser` (pure), which checks
the track (``A_PCM/INT/LIT`` 8 kHz mono 16-bit, else ``media_format``), reads each fragment's
tags (``AWS_KINESISVIDEO_FRAGMENT_NUMBER``, ``AWS_KINESISVIDEO_PRODUCER_TIMESTAMP``, Chime's
``TransactionId``/``CallId``), drops repeated fragments, and dates each block: the fragment's
producer timestamp + the block's offset inside the fragment.

**One clock.** Both legs' producer timestamps come from the Voice Connector's clock; the bridge
call starts at the earlier of the two legs' first frames, and each frame's position is its
producer time minus that start, so the legs are aligned by construction. Each leg then goes
through the Twilio path's :class:`~telephony_gateway.timeline.TrackTimeline` (gaps, overlaps,
oversize frames, the first frames' rate check) and :class:`~telephony_gateway.joiner.FrameJoiner`.

**Ends.** ``ENDED`` (then each stream's end or ``gateway_chime_end_grace_seconds`` without bytes):
``completed``; ``FAILED``: ``disconnect``; both streams ended without an event (a GetMedia that
ends, reconnected after the last fragment, brings nothing new): ``completed``; no bytes for
``gateway_chime_idle_seconds``: ``stalled``; a fragment of another call on a stream that carried
this one (the stream was recycled): that leg ends (``recycled_stream``).

**Restart and hand-off.** After each fragment a leg forwarded, the call's checkpoint
(:mod:`~telephony_gateway.checkpoint`, a compacted Kafka topic every pod reads) records its
number. Calls arrive as records of this pod's partitions of the events topic
(:mod:`~telephony_gateway.chime_bus`); whichever pod owns a call's partition next (after a
rebalance, a crash or a restart) replays its STARTED events, finds the checkpoint and goes on as a
new bridge call ``chime-<transactionId>-p<N>`` (bridge call ids are single-use), reading each
stream after its checkpointed fragment. A planned move (:meth:`ChimeSession.pause`, then
:meth:`~ChimeSession.unpause` or :meth:`~ChimeSession.hand_off`) stops the legs between two frames
and checkpoints that exact point, so nothing is sent twice; after a crash, at most the fragment
in flight is in both parts.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field

import grpc

from lupita.privacy import InvalidPhoneNumber, encrypt_phone, normalize_phone
from lupita.v1 import audio_pb2, media_bridge_pb2 as pb

from . import chime_events as ce
from . import metrics as m
from . import mkv
from .bridge_client import BridgeCall
from .checkpoint import CheckpointTable, Fenced
from .errors import BadInput, BridgeFailed
from .joiner import FrameJoiner
from .session import SessionBase, SessionReport
from .settings import GatewaySettings
from .timeline import TrackTimeline

log = logging.getLogger("telephony_gateway.chime")

SOURCE = "chime"
RATE = 8000
CODEC_ID = "A_PCM/INT/LIT"
LEG_NAMES = {audio_pb2.LEG_PERSON: "person", audio_pb2.LEG_LUPITA: "lupita"}
TAG_FRAGMENT = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
TAG_PRODUCER = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"
TAG_ERROR = "AWS_KINESISVIDEO_ERROR_CODE"  # "String description of an error that caused GetMedia to stop"
TAG_ERROR_ID = "AWS_KINESISVIDEO_ERROR_ID"  # its integer code
# GetMedia's documented in-band error codes: 4000 (fragment not found) and the 45xx KMS key
# faults do not heal by asking again; 3002 (error writing to the stream), 5000 (internal error)
# and undocumented ones are tried again after the last fragment forwarded.
KVS_ERROR_IDS = ("3002", "4000", "4500", "4501", "4502", "4503", "4504", "4505", "4506", "5000")
KVS_FINAL_ERROR_IDS = frozenset(i for i in KVS_ERROR_IDS if i.startswith("4"))
# GetMedia's documented HTTP errors: throttling is tried again with backoff, the rest ends the leg
HTTP_RETRY_CODES = frozenset({"ClientLimitExceededException", "ConnectionLimitExceededException"})
HTTP_FINAL_CODES = frozenset({"ResourceNotFoundException", "NotAuthorizedException", "InvalidEndpointException",
                              "InvalidArgumentException", "AccessDeniedException"})
RETRY_ATTEMPTS = 6  # reads in a row that bring no new fragment before a leg gives up ("error")
RETRY_BASE_SECONDS = 0.2  # backoff: base * 2^(attempt-1), at most RETRY_MAX_SECONDS, jittered down to half
RETRY_MAX_SECONDS = 5.0
TAG_CONTINUATION = "AWS_KINESISVIDEO_CONTINUATION_TOKEN"  # GetMedia writes it after each whole fragment
READ_BYTES = 16384
QUEUE_ITEMS = 32


# -- one leg's stream, parsed (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Audio:
    fragment: int
    at_ms: float  # producer clock, ms since the epoch
    pcm: bytes


@dataclass(frozen=True, slots=True)
class FragmentDone:
    fragment: int


@dataclass(frozen=True, slots=True)
class Recycled:
    pass


@dataclass(frozen=True, slots=True)
class KvsError:
    """GetMedia's in-band error tags: the body stops after them."""

    error_id: str  # AWS_KINESISVIDEO_ERROR_ID as sent (the metric label is bounded by source_error_code)

    @property
    def final(self) -> bool:
        return self.error_id in KVS_FINAL_ERROR_IDS


def source_error_code(error: BaseException | KvsError) -> tuple[str, bool]:
    """(bounded metric label, whether asking again may help) for a GetMedia failure."""
    if isinstance(error, KvsError):
        return ("kvs_" + error.error_id if error.error_id in KVS_ERROR_IDS else "kvs_other"), not error.final
    response = getattr(error, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in HTTP_RETRY_CODES:
            return code, True
        if code in HTTP_FINAL_CODES:
            return code, False
        return ("http_5xx", True) if status >= 500 else ("http_other", False)
    return "connection", True  # the connection broke, timed out or could not be made


def retry_delay(attempt: int, rand: float) -> float:
    """Seconds before read ``attempt`` (1, 2, ...) after a failure; ``rand`` in [0, 1)."""
    full = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1))
    return full * (0.5 + rand / 2)


class LegParser:
    """MKV events of one leg's GetMedia body -> :class:`Audio` / :class:`FragmentDone` /
    :class:`Recycled` / :class:`BadInput` (``media_format`` is fatal)."""

    def __init__(self, *, transaction_id: str, call_id: str, done_through: int | None = None,
                 start_at: int | None = None) -> None:
        self.transaction_id = transaction_id
        self.call_id = call_id
        self.done_through = done_through  # fragments up to this number were forwarded already
        # the event's startFragmentNumber: fragments numbered below it precede this call on the
        # stream (a start by timestamp serves some of them) and are skipped without a count
        self.start_at = start_at
        self.before_start = 0
        self.partial: tuple[int, float] | None = None  # (fragment, last block time) of one cut short
        self.ours_seen = False
        self.reconnected()
        self._reset()

    def reconnected(self) -> None:
        """A new GetMedia body starts: its first fragment may be the last one done (an inclusive
        start selector serves it again): that one is skipped without a count."""
        self.resume_point = self.done_through
        self.new_fragments = 0

    def _reset(self) -> None:
        self._tags: dict[str, str] = {}
        self._fragment: int | None = None
        self._producer_ms = 0.0
        self._skip = False
        self._cluster_tc = 0
        self._first_tc: int | None = None
        self._scale_ns = 1_000_000
        self._audio_track: int | None = None
        self._cluster_seen = False
        self._complete = False  # the fragment's post-cluster tags (continuation token) came
        self._skip_until_ms: float | None = None
        self._last_at: float | None = None

    def feed(self, events: list) -> list:
        out: list = []
        for ev in events:
            if isinstance(ev, mkv.SegmentStart):
                self._reset()
            elif isinstance(ev, mkv.Info):
                self._scale_ns = ev.timecode_scale_ns or 1_000_000
            elif isinstance(ev, mkv.Tracks):
                self._check_tracks(ev)
            elif isinstance(ev, mkv.Tags):
                self._tags.update(ev.values)
                if self._cluster_seen and TAG_CONTINUATION in ev.values:
                    self._complete = True
                if TAG_ERROR in ev.values or TAG_ERROR_ID in ev.values:
                    out.append(KvsError(str(ev.values.get(TAG_ERROR_ID, ""))[:12]))
            elif isinstance(ev, mkv.ClusterStart):
                self._cluster_seen = True
                out += self._start_fragment()
            elif isinstance(ev, mkv.ClusterTimecode):
                self._cluster_tc = ev.timecode
            elif isinstance(ev, mkv.Block):
                if self._skip or self._fragment is None or ev.track != self._audio_track:
                    continue
                tc = self._cluster_tc + ev.relative_timecode
                if self._first_tc is None:
                    self._first_tc = tc
                at = self._producer_ms + (tc - self._first_tc) * self._scale_ns / 1e6
                if self._skip_until_ms is not None and at <= self._skip_until_ms:
                    continue  # forwarded before the body broke off: not again
                self._last_at = at
                out.append(Audio(self._fragment, at, ev.data))
            elif isinstance(ev, mkv.SegmentEnd):
                if self._fragment is not None and not self._skip:
                    if self._complete:
                        self.done_through = self._fragment
                        self.partial = None
                        out.append(FragmentDone(self._fragment))
                    elif self._last_at is not None:
                        # the body ended inside this fragment: the next body serves it again
                        self.partial = (self._fragment, self._last_at)
                self._fragment = None
        self.new_fragments += sum(isinstance(o, (Audio, FragmentDone)) for o in out)  # progress of this body
        return out

    def _check_tracks(self, ev: mkv.Tracks) -> None:
        audio = [t for t in ev.tracks if t.codec_id.startswith("A_")]
        if len(audio) != 1:
            raise BadInput("media_format", f"the fragment has {len(audio)} audio tracks; Chime writes one per stream", fatal=True)
        t = audio[0]
        if t.codec_id != CODEC_ID or t.sampling_hz != RATE or (t.channels or 1) != 1 or (t.bit_depth or 16) != 16:
            raise BadInput("media_format", f"track {t.number} is {t.codec_id[:30]!r} {t.sampling_hz} Hz {t.channels} channel(s) "
                           f"{t.bit_depth} bit: the gateway takes {CODEC_ID} {RATE} Hz mono 16 bit (audio/L16)", fatal=True)
        self._audio_track = t.number

    def _start_fragment(self) -> list:
        tags = self._tags
        number, producer = tags.get(TAG_FRAGMENT, ""), tags.get(TAG_PRODUCER, "")
        if not number.isdigit() or not producer:
            self._skip = True
            return [BadInput("missing_tag", f"a fragment without {TAG_FRAGMENT} or {TAG_PRODUCER}: skipped")]
        try:
            self._producer_ms = float(producer) * 1000.0
        except ValueError:
            self._skip = True
            return [BadInput("missing_tag", f"{TAG_PRODUCER} is not a number of seconds: fragment skipped")]
        if self._audio_track is None:
            self._skip = True
            return [BadInput("missing_tag", "a fragment without a Tracks element: skipped")]
        fragment = int(number)  # fragment numbers are big decimal strings: compared as integers
        if self.start_at is not None and fragment < self.start_at:
            self._skip = True
            self.before_start += 1
            return []
        call_id, txn = tags.get("CallId"), tags.get("TransactionId")
        if call_id is None and txn is None:
            self._skip = True
            return [BadInput("missing_tag", "a fragment with neither a CallId nor a TransactionId tag: skipped")]
        if (call_id is not None and call_id != self.call_id) or (txn is not None and txn != self.transaction_id):
            self._skip = True
            if self.ours_seen:
                return [BadInput("recycled_stream", "the stream carries another call's fragments now (CallId/TransactionId tag)",
                                 fatal=True), Recycled()]
            return [BadInput("recycled_stream", "a fragment of another call before this call's first one: skipped")]
        self.ours_seen = True
        resume_point, self.resume_point = self.resume_point, None
        if self.done_through is not None and fragment <= self.done_through:
            self._skip = True
            if fragment == resume_point:
                return []  # the resume point itself, served again by an inclusive start selector
            return [BadInput("duplicate", f"fragment {number[-12:]} is not after fragment {str(self.done_through)[-12:]}: dropped")]
        self._fragment = fragment
        self._first_tc = None
        if self.partial is not None and self.partial[0] == fragment:
            self._skip_until_ms = self.partial[1]
        return []


# -- one leg's GetMedia connection -----------------------------------------------------------------

_CLIENTS: dict[tuple, object] = {}
_CLIENTS_LOCK = threading.Lock()
_CLIENTS_MAX = 64  # data endpoints are few per region; the cache is bounded all the same
_SESSION = None
POOL_CONNECTIONS = 512  # one GetMedia body holds a connection for its whole leg


_ENDPOINTS: dict[str, tuple[str, float]] = {}  # stream ARN -> (GET_MEDIA data endpoint, monotonic time asked)
ENDPOINT_TTL_SECONDS = 300.0
_ENDPOINTS_MAX = 4096


def _cached_endpoint(arn: str) -> str | None:
    """GetDataEndpoint's answer for ``arn`` if asked within ``ENDPOINT_TTL_SECONDS`` (AWS's
    guidance is to cache it; Chime reuses its streams, and a leg's reconnects ask again)."""
    hit = _ENDPOINTS.get(arn)
    if hit is None or time.monotonic() - hit[1] > ENDPOINT_TTL_SECONDS:
        return None
    return hit[0]


def _cache_endpoint(arn: str, endpoint: str) -> None:
    if len(_ENDPOINTS) >= _ENDPOINTS_MAX:
        _ENDPOINTS.pop(next(iter(_ENDPOINTS)), None)
    _ENDPOINTS[arn] = (endpoint, time.monotonic())


def aws_client(settings: GatewaySettings, service: str, endpoint: str):
    """The process's boto3 client for ``service`` at ``endpoint`` (empty = AWS's own), built once
    and shared by every leg's thread: building one costs tens of ms of CPU (the service model is
    loaded and the endpoint rules resolved) and was the bulk of a call's start. boto3 clients are
    thread-safe, sessions are not: clients are built from one session under a lock."""
    import boto3
    from botocore.config import Config

    key = (service, endpoint or "", settings.gateway_chime_region, settings.gateway_chime_idle_seconds)
    client = _CLIENTS.get(key)
    if client is not None:
        return client
    global _SESSION
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            if _SESSION is None:
                _SESSION = boto3.session.Session()
            cfg = Config(region_name=settings.gateway_chime_region, connect_timeout=5,
                         read_timeout=settings.gateway_chime_idle_seconds + 5,
                         retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=POOL_CONNECTIONS)
            client = _SESSION.client(service, config=cfg, endpoint_url=endpoint or None)
            if len(_CLIENTS) >= _CLIENTS_MAX:
                _CLIENTS.pop(next(iter(_CLIENTS)))  # the oldest
            _CLIENTS[key] = client
    return client



def _close_quietly(body) -> None:
    try:
        body.close()
    except Exception:  # noqa: BLE001 - closing a broken connection
        pass


class _Eof:
    pass


class _Stop:
    """stop() was called: not the stream's end (nothing is finished or checkpointed)."""


class KvsLeg:
    """Reads one stream in a thread; :meth:`get` gives its bytes (``_Eof`` at the body's end, an
    exception if the request failed, ``_Stop`` after :meth:`stop`). At most ``QUEUE_ITEMS`` reads
    wait in the queue: then the thread stops reading (backpressure to TCP)."""

    def __init__(self, settings: GatewaySettings, stream_arn: str, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.arn = stream_arn
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()  # bounded by _slots (the thread cannot await)
        self._slots = threading.BoundedSemaphore(QUEUE_ITEMS)
        self._stop = threading.Event()
        self.read_bytes = 0  # taken off the connection (what the gateway holds is this minus what it forwarded)
        self._body = None
        self._thread: threading.Thread | None = None

    def start(self, selector: dict) -> None:
        self._thread = threading.Thread(target=self._run, args=(selector,), name="kvs-getmedia", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        body = self._body
        if body is not None:
            # Never close the body here: the reader thread may sit in a blocking read of a live
            # stream that has nothing more to send, holding the buffered reader's lock, and close()
            # would block the event loop until that read times out (idle + 5 s). Shut the socket
            # down instead (the read returns at once) and close in a thread of its own.
            raw = getattr(body, "_raw_stream", None)
            conn = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed
                    pass
            threading.Thread(target=_close_quietly, args=(body,), name="kvs-close", daemon=True).start()
        # what is queued is dropped (the thread sees _stop within 0.5 s); a reader waiting wakes
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_Stop())

    async def get(self, timeout: float):
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if not isinstance(item, _Stop):
            try:
                self._slots.release()
            except ValueError:  # dropped by stop() meanwhile
                pass
        return item

    def _put(self, item) -> bool:
        """From the thread: one handoff (no future per read); blocks while the queue is full."""
        while not self._stop.is_set():
            if self._slots.acquire(timeout=0.5):
                try:
                    self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
                except RuntimeError:  # the loop is gone
                    return False
                return True
        return False

    def _client(self):
        s = self.settings
        endpoint = s.gateway_chime_get_media_endpoint
        if not endpoint:
            endpoint = _cached_endpoint(self.arn)
            if endpoint is None:
                control = aws_client(s, "kinesisvideo", s.gateway_chime_kvs_endpoint)
                endpoint = control.get_data_endpoint(StreamARN=self.arn, APIName="GET_MEDIA")["DataEndpoint"]
                _cache_endpoint(self.arn, endpoint)
        return aws_client(s, "kinesis-video-media", endpoint)

    def _run(self, selector: dict) -> None:
        try:
            try:
                resp = self._client().get_media(StreamARN=self.arn, StartSelector=selector)
            except Exception:
                _ENDPOINTS.pop(self.arn, None)  # the next read asks GetDataEndpoint again
                raise
            self._body = body = resp["Payload"]
            # what has arrived, not a full buffer: StreamingBody.read(n) waits for n bytes, which a
            # live stream's tail may never bring (urllib3 >= 2's read1 returns what is there)
            read = getattr(getattr(body, "_raw_stream", None), "read1", None) or body.read
            while not self._stop.is_set():
                data = read(READ_BYTES)
                if not data:
                    break
                self.read_bytes += len(data)
                if not self._put(data):
                    return
            self._put(_Eof())
        except Exception as exc:  # noqa: BLE001 - reported to the session, which decides
            self._put(exc)


# -- the call ------------------------------------------------------------------------------------


class _LegEnd(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why  # "end", "stalled", "recycled", "media_format", "error", "shutdown"


@dataclass
class LegPlan:
    event: ce.StreamingEvent
    leg: int  # LEG_PERSON / LEG_LUPITA
    done_through: int | None = None

    @property
    def name(self) -> str:
        return LEG_NAMES[self.leg]


def _iso_time(text: str) -> datetime.datetime | None:
    try:
        t = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=datetime.timezone.utc)


def first_selector(event: ce.StreamingEvent, margin_s: float) -> dict:
    """GetMedia's StartSelector for a leg's first read.

    GetMedia's API reference documents ``FRAGMENT_NUMBER`` as "the chunk *after* a specific
    fragment", so ``AfterFragmentNumber=startFragmentNumber`` would lose the call's first
    fragment if the service does what it says. ``SERVER_TIMESTAMP`` is documented as "the chunk
    *containing* a fragment with the specified timestamp": starting at the leg's ``startTime``
    (else the event's ``time``) minus ``margin_s`` reaches the first fragment whichever reading
    is true, and the parser skips what precedes ``startFragmentNumber`` (numbers compared as
    integers) and still checks each fragment's CallId/TransactionId. Server timestamps are
    KVS's ingestion clock, increasing with the fragment number (producer timestamps are the
    Voice Connector's and need not be). Without either time: ``FRAGMENT_NUMBER``, the only
    thing left."""
    for text in (event.start_time, event.event_time):
        at = _iso_time(text)
        if at is not None:
            return {"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": at - datetime.timedelta(seconds=margin_s)}
    return {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": event.start_fragment_number}


def call_key(transaction_id: str) -> str:
    return "chime-" + re.sub(r"[^A-Za-z0-9_-]", "-", transaction_id)[:100]


class ChimeSession(SessionBase):
    """One Chime call (two streams, or one when unpaired) into one bridge call."""

    source = SOURCE

    def __init__(self, legs: list[ce.StreamingEvent], settings: GatewaySettings, channel: grpc.aio.Channel,
                 store: CheckpointTable | None, *, part: int = 1, done_through: dict[bool, int] | None = None,
                 partial: dict[bool, tuple[int, float]] | None = None, phone: str | None = None) -> None:
        super().__init__(log)
        self.settings = settings
        self.channel = channel
        self.store = store
        self.part = part
        self.tp = None  # the events topic's partition this call is keyed to (its owner runs it)
        self.partial = partial or {}  # isCaller -> (fragment, producer ms of the last block sent): a hand-off's point
        self.legs: list[_Leg] = []
        self._gate = asyncio.Event()  # cleared while paused (a rebalance): the legs stop between two frames
        self._gate.set()
        self.paused = False
        self.handed_off = False
        self.opening = False  # between the "opened" checkpoint and the bridge's answer
        self.opened = False  # this part's bridge call may exist (written to the checkpoint before it is opened)
        self._saves: set[asyncio.Task] = set()
        first = legs[0]
        self.transaction_id = first.transaction_id
        self.chime_call_id = first.call_id
        self.direction = first.direction
        self.key = call_key(first.transaction_id)
        self.report.call_id = self.key if part == 1 else f"{self.key}-p{part}"
        self.report.call_sid = first.call_id
        person_is_caller = ce.person_leg_is_caller(first.direction)
        done_through = done_through or {}
        self.plans = [LegPlan(ev, audio_pb2.LEG_PERSON if ev.is_caller == person_is_caller else audio_pb2.LEG_LUPITA,
                              done_through.get(bool(ev.is_caller))) for ev in legs]
        caller = next((ev for ev in legs if ev.is_caller), first)
        self._phone = phone if phone is not None else ce.person_number(caller)
        self.ended_status = ""  # ENDED / FAILED once the event came
        self._ended = asyncio.Event()
        self._shutdown = False
        self._lock = asyncio.Lock()
        self._kvs: list[KvsLeg] = []
        self._started_at_us = 0
        self._end_ms = 0.0
        self._phone_enc: str | None = None
        self.fatal = ""  # a leg's fault that ends the whole call ("media_format")

    def source_ended(self, status: str) -> None:
        self.ended_status = status
        self._ended.set()

    def fail(self, why: str) -> None:
        """One leg's stream is not what the gateway takes: the whole call ends (no half-recorded
        call in a format nobody checked)."""
        if not self.fatal:
            self.fatal = why
            for k in self._kvs:
                k.stop()

    def shutdown(self) -> None:
        self._shutdown = True
        self._ended.set()
        for k in self._kvs:
            k.stop()

    # -- hand-off (the call's partition moves to another gateway pod) ---------------------------------

    async def pause(self) -> None:
        """Stop forwarding between two frames, send what the joiners hold, and checkpoint the exact
        point reached on each leg (acknowledged before this returns). The KVS readers wait (their
        queues fill, TCP holds the rest). :meth:`unpause` goes on; :meth:`hand_off` ends the part."""
        if self.paused or self.handed_off:
            return
        self.paused = True
        self._gate.clear()
        deadline = time.monotonic() + self.settings.gateway_chime_handoff_seconds
        # polling the legs' flags: a leg parks at the gate or waits for bytes within one frame's work
        while (self.opening or any(leg.busy for leg in self.legs)) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        exact = not self.opening and not any(leg.busy for leg in self.legs)
        if exact and self.bridge is not None and not self.bridge.finished:
            try:
                await asyncio.wait_for(asyncio.gather(*(leg._flush() for leg in self.legs)),
                                       max(0.1, deadline - time.monotonic()))
            except (TimeoutError, BridgeFailed):
                exact = False
        if not exact:
            log.warning("hand-off: the legs did not stop between two frames in time; the next part goes on from the "
                        "last whole fragment (what was sent after it is in both parts)", extra=self.extra())
        try:
            await self._save(wait=True, exact=exact)
        except Fenced:
            pass
        except Exception as exc:  # noqa: BLE001 - Kafka down: the next owner goes on from the last checkpoint written
            log.error("hand-off checkpoint not written", extra=self.extra(error=f"{type(exc).__name__}: {str(exc)[:200]}"))

    def unpause(self) -> None:
        self.paused = False
        self._gate.set()

    def hand_off(self) -> None:
        """The call goes on elsewhere: end this part (reason ``handoff``) without touching its checkpoint."""
        self.handed_off = True
        self._ended.set()
        for k in self._kvs:
            k.stop()
        self._gate.set()

    async def gate(self) -> None:
        """Where a leg may stop: waits while paused; ends the leg once the call was handed off."""
        if not self._gate.is_set():
            await self._gate.wait()
        if self.handed_off:
            raise _LegEnd("handoff")

    # -- checkpoint ------------------------------------------------------------------------------

    def _state(self, exact: bool = False) -> dict:
        if self._phone_enc is None:
            self._phone_enc = base64.b64encode(encrypt_phone(self._phone, self.settings.encryption_key_bytes)).decode()
        legs = []
        by_leg = {leg.plan.leg: leg for leg in self.legs}
        for p in self.plans:
            leg = by_leg.get(p.leg)
            partial = self.partial.get(bool(p.event.is_caller))
            if exact and leg is not None and leg.cur is not None and leg.cur[0] != p.done_through:
                partial = leg.cur
            elif partial is not None and p.done_through is not None and partial[0] <= p.done_through:
                partial = None
            legs.append({"isCaller": p.event.is_caller, "streamArn": p.event.stream_arn,
                         "startFragmentNumber": p.event.start_fragment_number,
                         "voiceConnectorId": p.event.voice_connector_id,
                         "startTime": p.event.start_time, "eventTime": p.event.event_time,
                         "doneThrough": None if p.done_through is None else str(p.done_through),
                         "partial": None if partial is None else [str(partial[0]), partial[1]]})
        return {"transactionId": self.transaction_id, "callId": self.chime_call_id, "direction": self.direction,
                "part": self.part, "opened": self.opened, "phone": self._phone_enc, "legs": legs}

    async def _save(self, *, wait: bool, exact: bool = False) -> None:
        """Write the checkpoint; ``wait``: until the broker acknowledged it. Raises Fenced when a
        later part of the call exists (this pod lost it without knowing)."""
        if self.store is None or self.handed_off:
            return
        ack = await self.store.save(self.key, self._state(exact))
        if wait:
            await ack
        else:
            task = asyncio.ensure_future(ack)
            self._saves.add(task)
            task.add_done_callback(self._saved)

    def _saved(self, task: asyncio.Future) -> None:
        self._saves.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("checkpoint not acknowledged", extra=self.extra(error=str(task.exception())[:200]))

    async def _checkpoint(self) -> None:
        """After a whole fragment of a leg went to the bridge: not waited for (the next one supersedes it)."""
        try:
            await self._save(wait=False)
        except Fenced:
            log.warning("the call went on as a later part on another pod: this part ends", extra=self.extra())
            self.hand_off()

    # -- run -------------------------------------------------------------------------------------

    async def run(self) -> SessionReport:
        outcome = "rejected"
        loop = asyncio.get_running_loop()
        try:
            try:
                normalize_phone(self._phone)
            except InvalidPhoneNumber as exc:
                raise BadInput("custom_parameters", f"the person's number in the streaming event is not usable: {exc}",
                               fatal=True) from None
            await self._save(wait=True)
            if self.handed_off:  # the partition moved while the first checkpoint was written
                raise _Done("handoff")
            legs = self.legs
            for plan in self.plans:
                kvs = KvsLeg(self.settings, plan.event.stream_arn, loop)
                self._kvs.append(kvs)
                parser = LegParser(transaction_id=self.transaction_id, call_id=self.chime_call_id,
                                   done_through=plan.done_through, start_at=int(plan.event.start_fragment_number))
                parser.partial = self.partial.get(bool(plan.event.is_caller))
                legs.append(_Leg(self, plan, kvs, parser))
            for leg in legs:
                leg.connect()
            firsts = await self._first_audio(legs)
            if self.fatal:
                raise _Done(self.fatal)
            if not firsts or self.handed_off:
                outcome = self._outcome([leg.why for leg in legs])
                raise _Done(outcome)
            self._started_at_us = int(min(firsts) * 1000)
            try:
                await self.gate()
            except _LegEnd:
                raise _Done("handoff") from None
            self.opening = True
            try:
                self.opened = True  # before the bridge call can exist: a resumer then takes the next part
                await self._save(wait=True)
                await self._open_bridge()
            finally:
                self.opening = False
            self.went_live()
            results = await asyncio.gather(*(leg.forward() for leg in legs))
            outcome = self._outcome(results)
        except _Done as done:
            outcome = done.outcome
        except Fenced:
            outcome = "handoff"
            log.warning("the call went on as a later part on another pod: this part ends", extra=self.extra())
        except BadInput as exc:
            self.bad(exc)
            outcome = "media_format" if exc.kind == "media_format" else "rejected"
        except BridgeFailed as exc:
            outcome = "bridge_error"
            self.bridge_failed(exc)
        finally:
            for k in self._kvs:
                k.stop()
        if self.handed_off:
            outcome = "handoff"
        outcome = await self.end_bridge(outcome, self._started_at_us + int(self._end_ms * 1000))
        self.finish(outcome)
        return self.report

    def _outcome(self, whys: list[str]) -> str:
        if self.handed_off:
            return "handoff"
        if self._shutdown:
            return "shutdown"
        if self.fatal or "media_format" in whys:
            return self.fatal or "media_format"
        if self.bridge is not None and self.bridge.finished and not self.bridge.ending:
            return "bridge_error"
        if self.ended_status == "FAILED":
            return "disconnect"
        if all(w == "recycled" for w in whys):
            return "recycled_stream"
        if "stalled" in whys and not self.ended_status:
            return "stalled"
        if "error" in whys and not self.ended_status:
            return "disconnect"  # GetMedia failed before the call's end: the source went away
        return "completed"

    async def _first_audio(self, legs: list["_Leg"]) -> list[float]:
        """Each leg's first frame time (producer clock, ms), waiting for both legs (a leg that ends
        first does not hold the other)."""
        results = await asyncio.gather(*(leg.first() for leg in legs))
        return [r for r in results if r is not None]

    async def _open_bridge(self) -> None:
        s = self.settings
        consent = s.gateway_chime_recording_consent
        start = pb.CallStart(
            call_id=self.report.call_id,
            direction=audio_pb2.DIRECTION_INBOUND if self.direction == "Inbound" else audio_pb2.DIRECTION_OUTBOUND,
            sample_rate_hz=RATE, codec=audio_pb2.CODEC_PCM16, recording_consent=consent, started_at_us=self._started_at_us,
            caller=pb.CallerMetadata(phone_number=self._phone, region=s.gateway_chime_region_label, language=s.gateway_chime_language,
                                     consent_source=s.gateway_chime_consent_source if consent else ""),
        )
        self.bridge = BridgeCall(self.channel, s.bridge_token, start, close_timeout_s=s.gateway_bridge_close_seconds)
        await self.bridge.open()
        log.info("call started", extra=self.extra(legs=[p.name for p in self.plans], part=self.part, consent=consent))

    async def send(self, leg: int, seq: int, capture_ts_us: int, payload: bytes) -> None:
        async with self._lock:  # one writer on the gRPC stream
            await self.bridge.send(pb.AudioFrame(leg=leg, seq=seq, capture_ts_us=capture_ts_us, payload=payload))


class _Done(Exception):
    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class _Leg:
    """One leg of a ChimeSession: its connection(s), parser, timeline and joiner."""

    def __init__(self, session: ChimeSession, plan: LegPlan, kvs: KvsLeg, parser: LegParser) -> None:
        self.s = session
        self.plan = plan
        self.kvs = kvs
        self.parser = parser
        self.reader = mkv.MkvStreamReader()
        self.pending: list = []
        self.why = "end"
        self.timeline: TrackTimeline | None = None
        self.joiner = FrameJoiner(session.settings.gateway_bridge_frame_ms)
        self.blocks = 0
        self.first_at: float | None = None
        self.busy = False  # forwarding an item (a pause waits until no leg is)
        self.cur: tuple[int, float] | None = None  # (fragment, producer ms) of the last block forwarded

    def connect(self, after: int | None = None) -> None:
        if after is None and self.plan.done_through is None:
            selector = first_selector(self.plan.event, self.s.settings.gateway_chime_start_margin_seconds)
            if selector["StartSelectorType"] == "FRAGMENT_NUMBER":
                self.s.log.warning("the STARTED event has no usable startTime or time: GetMedia starts after "
                                   "startFragmentNumber, so that fragment is not read",
                                   extra=self.s.extra(leg=self.plan.name))
        else:
            # after a fragment this leg has forwarded: FRAGMENT_NUMBER is documented as "the chunk
            # after" it, which is exactly what is wanted (an inclusive reading serves it again and
            # the parser skips it silently)
            mark = after if after is not None else self.plan.done_through
            selector = {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": str(mark)}
        self.parser.reconnected()
        self.reader = mkv.MkvStreamReader()
        if self.kvs._thread is not None:  # a reconnection: a fresh reader thread and queue
            self.kvs = KvsLeg(self.s.settings, self.plan.event.stream_arn, self.kvs.loop)
            self.s._kvs.append(self.kvs)
        self.kvs.start(selector)

    async def _items(self) -> list:
        """The next parsed items of this leg; raises _LegEnd when the leg is over."""
        s = self.s
        settings = s.settings
        while True:
            timeout = settings.gateway_chime_end_grace_seconds if s.ended_status else settings.gateway_chime_idle_seconds
            try:
                item = await self.kvs.get(timeout)
            except asyncio.TimeoutError:
                if s._shutdown:
                    raise _LegEnd("shutdown") from None
                if s.ended_status:
                    raise _LegEnd("end") from None
                s.bad(BadInput("stalled", f"{self.plan.name} stream: no bytes for {timeout:.0f} s", fatal=True))
                raise _LegEnd("stalled") from None
            if s._shutdown:
                raise _LegEnd("shutdown")
            if s.fatal:
                raise _LegEnd(s.fatal)
            if isinstance(item, _Stop):
                raise _LegEnd("handoff" if s.handed_off else "shutdown")
            if isinstance(item, _Eof) or isinstance(item, Exception):
                failure, self.kvs_error = (item if isinstance(item, Exception) else self.kvs_error), None
                retry = False
                if failure is not None:  # an HTTP error, a broken connection, or in-band error tags
                    code, retry = source_error_code(failure)
                    m.SOURCE_ERRORS.labels(SOURCE, code).inc()
                    s.log.warning("GetMedia failed", extra=s.extra(leg=self.plan.name, error=code, will_retry=retry,
                                                                    detail=str(failure)[:200]))
                    if not retry:
                        raise _LegEnd("error")
                events, partial = self.reader.finish()
                out = self._parse(events)
                if partial:
                    s.bad(BadInput("malformed_mkv", f"{self.plan.name} stream ended inside an element ({partial} bytes)"))
                if s._shutdown or (not retry and (not self.parser.new_fragments or s.ended_status)):
                    if out:
                        self.pending_end = True
                        return out
                    raise _LegEnd("end")
                if retry:
                    self.attempts = 1 if self.parser.new_fragments else self.attempts + 1
                    if self.attempts > RETRY_ATTEMPTS:
                        s.log.warning("GetMedia keeps failing: the leg ends", extra=s.extra(leg=self.plan.name))
                        raise _LegEnd("error")
                    await asyncio.sleep(retry_delay(self.attempts, random.random()))
                    if s._shutdown:
                        raise _LegEnd("shutdown")
                    if s.fatal:
                        raise _LegEnd(s.fatal)
                else:
                    self.attempts = 0
                self.connect(after=self.parser.done_through)  # the body ended mid-call: go on after the last fragment
                if out:
                    return out
                continue
            out = self._parse(self._feed(item))
            if out:
                return out

    pending_end = False
    kvs_error: KvsError | None = None  # in-band error tags of the current body (it stops after them)
    attempts = 0  # failed reads in a row without a new fragment

    def _feed(self, data: bytes) -> list:
        """MKV events of these bytes; damage is counted (once per damaged stretch) and skipped up
        to the next chunk, whose events follow."""
        events: list = []
        for _ in range(64):  # bounded: each round consumes bytes
            try:
                return events + self.reader.feed(data)
            except mkv.MalformedMkv as exc:
                self.s.bad(BadInput("malformed_mkv", f"{self.plan.name} stream: {exc}; skipped to the next fragment"))
                events += exc.events
                self.reader.resync()
                data = b""
        return events

    def _parse(self, events: list) -> list:
        out = []
        for item in self.parser.feed(events):
            if isinstance(item, KvsError):
                self.kvs_error = item
            elif isinstance(item, BadInput):
                self.s.bad(item)
                if item.fatal and item.kind == "media_format":
                    self.s.fail("media_format")
                    raise _LegEnd("media_format")
            else:
                out.append(item)
        return out

    async def first(self) -> float | None:
        """Reads until this leg's first audio (kept for forward()); None when the leg ended first."""
        try:
            while True:
                items = await self._items()
                self.pending += items
                for item in items:
                    if isinstance(item, Recycled):
                        self.why = "recycled"
                        return None
                    if isinstance(item, Audio):
                        self.first_at = item.at_ms
                        return item.at_ms
                if self.pending_end:
                    self.why = "end"
                    return None
        except _LegEnd as end:
            self.why = end.why
            return None
        except BadInput as exc:  # media_format from the track check
            self.s.bad(exc)
            self.why = "media_format"
            self.s.fail("media_format")
            return None

    async def forward(self) -> str:
        s = self.s
        self.timeline = TrackTimeline(started_at_us=s._started_at_us, sample_rate=RATE, bytes_per_sample=2,
                                      max_frame_ms=s.settings.gateway_max_frame_ms,
                                      check_frames=s.settings.gateway_format_check_frames, name=self.plan.name)
        try:
            items, self.pending = self.pending, []
            if self.first_at is None:  # the leg ended before its first audio
                return self.why
            while True:
                for item in items:
                    self.busy = False
                    await s.gate()
                    self.busy = True
                    if isinstance(item, Recycled):
                        await self._flush()
                        return "recycled"
                    if isinstance(item, Audio):
                        await self._audio(item)
                    elif isinstance(item, FragmentDone):
                        await self._flush()
                        self.plan.done_through = item.fragment
                        await s._checkpoint()
                if self.pending_end:
                    await self._flush()
                    return "end"
                if s.bridge.finished and not s.bridge.ending:
                    raise s.bridge.failure()
                self.busy = False
                items = await self._items()
                self.busy = True
        except _LegEnd as end:
            self.busy = True
            if end.why != "handoff":
                await self._flush()
            return end.why
        except BadInput as exc:
            s.bad(exc)
            s.fail("media_format")
            return "media_format"
        finally:
            self.busy = False
            self.kvs.stop()

    async def _audio(self, a: Audio) -> None:
        s = self.s
        self.cur = (a.fragment, a.at_ms)
        started_ms = s._started_at_us / 1000
        gaps = self.timeline.stats.gaps
        try:
            placed = self.timeline.place(self.blocks + 1, round(a.at_ms - started_ms), len(a.pcm))
        except BadInput as exc:
            s.bad(exc)
            if exc.fatal:
                s.fail("media_format")
                raise _LegEnd("media_format") from None
            return
        self.blocks += 1
        after_gap = self.timeline.stats.gaps > gaps
        name = self.plan.name
        if after_gap:
            m.GAPS.labels(SOURCE, name).inc()
            m.GAP_SECONDS.labels(SOURCE, name).inc(placed.gap_ms / 1000)
            s.report.gaps[name] = s.report.gaps.get(name, 0) + 1
        dur = self.timeline.duration_ms(len(a.pcm))
        for j in self.joiner.add(placed.capture_ts_us, a.pcm, dur, after_gap=after_gap):
            await s.send(self.plan.leg, j.seq, j.capture_ts_us, j.payload)
        m.FRAMES.labels(SOURCE, name).inc()
        s.report.frames[name] = s.report.frames.get(name, 0) + 1
        s._end_ms = max(s._end_ms, a.at_ms - started_ms + dur)

    async def _flush(self) -> None:
        if self.s.bridge is None or self.s.bridge.finished:
            return
        for j in self.joiner.flush():
            await self.s.send(self.plan.leg, j.seq, j.capture_ts_us, j.payload)


# -- the calls of one gateway ------------------------------------------------------------------------


@dataclass
class _Pending:
    legs: dict[bool, ce.StreamingEvent] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None
    tp: object = None


class ChimeCalls:
    """Streaming events in (the records of this pod's partitions of the events topic,
    :mod:`~telephony_gateway.chime_bus`), sessions out: pairing, ends, resume from a checkpoint,
    hand-off, and which offsets may be committed."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.settings: GatewaySettings = gateway.settings
        self.bus = None  # ChimeBus, set by the gateway when the Chime path is on
        self.pending: dict[str, _Pending] = {}
        self.sessions: dict[str, ChimeSession] = {}
        self.tasks: set[asyncio.Task] = set()
        self.finished: dict[str, list[SessionReport]] = {}  # key -> the reports of its parts, in order
        self.holds: dict[str, tuple[object, int]] = {}  # key -> (partition, offset of its first event) while pending/live
        self.next_offset: dict[object, int] = {}  # partition -> the offset after the last record handled

    @property
    def store(self) -> CheckpointTable | None:
        return self.bus.table if self.bus is not None else None

    # -- records ------------------------------------------------------------------------------------

    def consumed(self, tp, offset: int) -> None:
        self.next_offset[tp] = offset + 1

    def _hold(self, key: str, tp, offset: int) -> None:
        held = self.holds.get(key)
        if held is None or held[0] != tp or offset < held[1]:
            self.holds[key] = (tp, offset)

    def on_record(self, tp, offset: int, ev: ce.StreamingEvent) -> str:
        """One event of a partition this pod owns (records come in offset order); returns what
        became of it (the ``lupita_gateway_chime_events_consumed_total`` result)."""
        self.consumed(tp, offset)
        try:
            result = self._on_event(tp, offset, ev)
        except BadInput as exc:
            m.BAD_INPUT.labels(SOURCE, exc.kind).inc()
            log.warning("bad input", extra={"stage": SOURCE, "call_id": call_key(ev.transaction_id), "kind": exc.kind,
                                            "error": exc.message})
            result = "replayed"
        m.CHIME_CONSUMED.labels(result).inc()
        return result

    def _on_event(self, tp, offset: int, ev: ce.StreamingEvent) -> str:
        key = call_key(ev.transaction_id)
        if ev.status == "STARTED":
            m.EVENTS.labels(SOURCE, "started").inc()
            session = self.sessions.get(key)
            if session is not None:
                if any(p.event.is_caller == ev.is_caller for p in session.plans):
                    return "replayed"  # read again after a rebalance, or EventBridge delivered it twice
                raise BadInput("second_start", "a STARTED event for a call already streaming with its other leg alone")
            state = self.store.get(key) if self.store is not None else None
            if state is not None and state.get("done"):
                return "replayed"  # finished (here or on another pod): its events are read again only by a replay
            if state is not None:
                if self._resume(key, state, tp) is not None:
                    self._hold(key, tp, offset)
                    return "started"
                return "bad"
            p = self.pending.setdefault(key, _Pending(tp=tp))
            if ev.is_caller in p.legs:
                return "replayed"
            p.legs[bool(ev.is_caller)] = ev
            self._hold(key, tp, offset)
            if len(p.legs) == 2:
                self._launch(key)
            elif p.timer is None:
                p.timer = asyncio.get_running_loop().call_later(self.settings.gateway_chime_pair_seconds, self._unpaired, key)
            return "started"
        m.EVENTS.labels(SOURCE, ev.status.lower()).inc()
        result = ev.status.lower()
        session = self.sessions.get(key)
        if session is not None:
            session.source_ended(ev.status)
        elif key in self.pending:
            p = self.pending.pop(key)
            if p.timer:
                p.timer.cancel()
            if p.legs:  # ended before its partner came: run what there is, it ends at the streams' end
                self._launch_legs(key, list(p.legs.values()), ended=ev.status, tp=p.tp)
        return result

    def _unpaired(self, key: str) -> None:
        p = self.pending.get(key)
        if p is None or len(p.legs) == 2:
            return
        m.BAD_INPUT.labels(SOURCE, "unpaired").inc()
        log.warning("bad input", extra={"stage": SOURCE, "call_id": key, "kind": "unpaired",
                                        "error": "only one leg's STARTED event came; the call runs with that leg"})
        self._launch(key)

    def _launch(self, key: str) -> None:
        p = self.pending.pop(key)
        if p.timer:
            p.timer.cancel()
        self._launch_legs(key, [p.legs[k] for k in sorted(p.legs, reverse=True)], tp=p.tp)

    def _launch_legs(self, key: str, legs: list[ce.StreamingEvent], *, ended: str = "", tp=None, **kw) -> ChimeSession:
        session = ChimeSession(legs, self.settings, self.gateway.channel, self.store, **kw)
        session.tp = tp
        if ended:
            session.source_ended(ended)
        self.sessions[key] = session
        task = asyncio.create_task(self._run(key, session))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return session

    async def _run(self, key: str, session: ChimeSession) -> None:
        try:
            report = await self.gateway._run_session(session)
            self.finished.setdefault(key, []).append(report)
            if report.outcome not in ("handoff", "shutdown"):
                await self._mark_done(key, session)
        finally:
            if self.sessions.get(key) is session:
                del self.sessions[key]
                self.holds.pop(key, None)  # over here (its end marker written first), or gone to another pod

    async def _mark_done(self, key: str, session: ChimeSession) -> None:
        """The call is over: its checkpoint becomes an end marker (acknowledged before the
        partition's offset may pass its first event; retried while Kafka does not answer)."""
        if self.store is None:
            return
        for attempt in range(1, 8):
            try:
                await (await self.store.save(key, {"part": session.part, "done": True}))
                return
            except Fenced:
                return  # a later part runs elsewhere: its end is its own
            except Exception as exc:  # noqa: BLE001 - the broker did not ack: try again
                log.warning("end marker not written", extra={"stage": SOURCE, "call_id": key, "attempt": attempt,
                                                             "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
        log.error("end marker not written: a replay of this call's events may resume it as a new (empty) part",
                  extra={"stage": SOURCE, "call_id": key})

    def _resume(self, key: str, state: dict, tp) -> ChimeSession | None:
        """Go on with a checkpointed call (its last owner stopped or died) as its next part."""
        try:
            phone = self.bus.decrypt(state["phone"])
            legs, done, partial = [], {}, {}
            for leg in state["legs"]:
                legs.append(ce.StreamingEvent(
                    status="STARTED", transaction_id=state["transactionId"], call_id=state["callId"],
                    voice_connector_id=leg.get("voiceConnectorId", ""), direction=state["direction"],
                    is_caller=bool(leg["isCaller"]), stream_arn=leg["streamArn"],
                    start_fragment_number=leg["startFragmentNumber"], start_time=leg.get("startTime") or "",
                    event_time=leg.get("eventTime") or ""))
                if leg.get("doneThrough"):
                    done[bool(leg["isCaller"])] = int(leg["doneThrough"])
                if leg.get("partial"):
                    partial[bool(leg["isCaller"])] = (int(leg["partial"][0]), float(leg["partial"][1]))
            part = int(state.get("part", 1)) + (1 if state.get("opened", True) else 0)
        except (KeyError, ValueError, TypeError):
            log.error("checkpoint unreadable; the call is not resumed", extra={"stage": SOURCE, "call_id": key})
            return None
        log.info("resuming call", extra={"stage": SOURCE, "call_id": key, "part": part})
        m.CHIME_HANDOFFS.labels("in").inc()
        return self._launch_legs(key, legs, part=part, done_through=done, partial=partial, phone=phone, tp=tp)

    # -- partitions ---------------------------------------------------------------------------------

    def commit_offsets(self, tps) -> dict:
        """Per partition: the offset that may be committed, never past the first event of a call
        still pending or live here (a new owner replays from there and resumes it)."""
        out = {}
        for tp in tps:
            if tp not in self.next_offset:
                continue
            held = [off for t, off in self.holds.values() if t == tp]
            out[tp] = min([self.next_offset[tp], *held])
        return out

    async def pause_partitions(self, tps) -> None:
        """Partitions revoked (a rebalance or this pod stopping): pending pairings are dropped
        (the next owner replays their events); live calls pause and checkpoint their exact point."""
        tps = set(tps)
        for key, p in list(self.pending.items()):
            if p.tp in tps:
                if p.timer:
                    p.timer.cancel()
                del self.pending[key]
        paused = [s for s in self.sessions.values() if s.tp in tps]
        await asyncio.gather(*(s.pause() for s in paused))

    async def settle(self, assigned, *, wait: bool = False) -> None:
        """After a rebalance: paused calls whose partition stayed here go on; the others end
        their part with ``handoff`` (the new owner goes on from their checkpoint)."""
        assigned = set(assigned)
        gone = []
        for key, session in list(self.sessions.items()):
            if not session.paused:
                continue
            if session.tp in assigned:
                m.CHIME_HANDOFFS.labels("kept").inc()
                session.unpause()
            else:
                m.CHIME_HANDOFFS.labels("out").inc()
                log.info("call handed off", extra=session.extra(part=session.part))
                session.hand_off()
                self.holds.pop(key, None)
                gone.append(session)
        for key, held in list(self.holds.items()):
            if held[0] not in assigned and key not in self.sessions:
                del self.holds[key]
        for tp in list(self.next_offset):
            if tp not in assigned:
                del self.next_offset[tp]
        if wait and gone:
            tasks = [t for t in self.tasks]
            await asyncio.wait(tasks, timeout=self.settings.gateway_bridge_close_seconds + 5)
