"""The Chime source's pure parts: Chime's streaming events, the incremental MKV reader on ebmlite,
and one leg's fragments -> dated audio (tags, duplicates, recycled streams, the track check).
The fragments are made by ``kvs_sim.fragment`` (ebmlite's encoder) the way GetMedia serves them."""

from __future__ import annotations

import numpy as np
import pytest

from telephony_gateway import chime_events as ce
from telephony_gateway import kvs_sim, mkv
from telephony_gateway.chime import Audio, FragmentDone, LegParser, Recycled
from telephony_gateway.errors import BadInput

T0_MS = 1_764_000_000_000
TAGS = kvs_sim.chime_tags("txn-1", "call-1")
PHONE = "+52 951 555 0142"


def pcm(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-12000, 12000, int(seconds * 8000), dtype=np.int16)


def read_all(data: bytes, step: int) -> list:
    reader = mkv.MkvStreamReader()
    events = []
    for i in range(0, len(data), step):
        events += reader.feed(data[i:i + step])
    tail, partial = reader.finish()
    assert partial == 0
    return events + tail


# -- events -----------------------------------------------------------------------------------------


def started(**kw) -> dict:
    values = dict(transaction_id="txn-1", call_id="call-1", stream_arn=kvs_sim.stream_arn("a"), is_caller=True,
                  start_fragment_number="91343852333181432392682062607743920146264485599", from_number=PHONE,
                  to_number="+15555550100")
    values.update(kw)
    return kvs_sim.streaming_event("STARTED", **values)


def test_a_started_event_is_parsed_with_its_leg_and_numbers():
    ev = ce.parse(started())
    assert (ev.status, ev.transaction_id, ev.call_id, ev.is_caller, ev.direction) == ("STARTED", "txn-1", "call-1", True, "Inbound")
    assert ce.person_number(ev) == PHONE  # inbound: the caller is the person
    assert PHONE not in repr(ev)  # the numbers never show in a repr (logs, tracebacks)
    out = ce.parse(started(direction="Outbound"))
    assert ce.person_number(out) == "+15555550100" and not ce.person_leg_is_caller("Outbound")


def test_ended_and_failed_events_need_no_stream_fields():
    assert ce.parse(kvs_sim.streaming_event("ENDED", transaction_id="t", call_id="c")).status == "ENDED"
    failed = ce.parse(kvs_sim.streaming_event("FAILED", transaction_id="t", call_id="c"))
    assert failed.failure_reason == "Internal failure"


@pytest.mark.parametrize("event, kind", [
    ({**started(), "detail-type": "Chime VoiceConnector Call Status"}, "unknown_event"),
    ({**started(), "source": "aws.s3"}, "unknown_event"),
    (started(streamingStatus="UPDATED"), "unknown_event"),
    ("not an object", "malformed_json"),
    (started(isCaller=None), "invalid_field"),
    (started(streamArn="arn:aws:s3:::bucket/key"), "invalid_field"),
    (started(startFragmentNumber="12ab"), "invalid_field"),
    (started(transactionId=""), "invalid_field"),
    (started(mediaType="audio/PCMU"), "media_format"),
    (started(fromNumber=5), "invalid_field"),
])
def test_bad_events_are_refused_by_class_without_quoting_them(event, kind):
    with pytest.raises(BadInput) as err:
        ce.parse(event)
    assert err.value.kind == kind
    assert PHONE not in err.value.message


# -- the MKV reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 7, 333, 1 << 20])
def test_the_reader_gives_the_same_blocks_whatever_the_byte_split(step):
    audio = pcm(2.5, seed=1)
    data = b"".join(d for _, d in kvs_sim.fragments_of(audio, first_number=7, start_ms=T0_MS, tags=TAGS))
    events = read_all(data, step)
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("SegmentStart") == kinds.count("SegmentEnd") == 3
    assert kinds.count("ClusterStart") == kinds.count("ClusterEnd") == 3
    blocks = [e for e in events if isinstance(e, mkv.Block)]
    assert np.array_equal(np.frombuffer(b"".join(b.data for b in blocks), "<i2"), audio)
    tags = [e.values for e in events if isinstance(e, mkv.Tags)]
    assert tags[0]["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == "7" and tags[0]["TransactionId"] == "txn-1"
    assert tags[1]["AWS_KINESISVIDEO_CONTINUATION_TOKEN"] == "7"  # the post-cluster tags end the cluster
    track = next(e for e in events if isinstance(e, mkv.Tracks)).tracks[0]
    assert (track.codec_id, track.sampling_hz, track.channels, track.bit_depth) == ("A_PCM/INT/LIT", 8000.0, 1, 16)


@pytest.mark.parametrize("seed", range(12))
def test_network_sized_reads_split_anywhere_give_every_block_once(seed):
    """Reads of a few KB cut elements and headers anywhere (as a socket does); every fragment's
    blocks come out exactly once, whatever the buffer keeps for a resync."""
    audio = pcm(6.0, seed=seed)
    data = b"".join(d for _, d in kvs_sim.fragments_of(audio, first_number=1, start_ms=T0_MS, tags=TAGS))
    rng = np.random.default_rng(seed)
    reader, events, pos = mkv.MkvStreamReader(), [], 0
    while pos < len(data):
        n = int(rng.integers(1, 20000))
        events += reader.feed(data[pos:pos + n])
        pos += n
    tail, partial = reader.finish()
    events += tail
    assert partial == 0
    per_segment, count = [], 0
    for e in events:
        if isinstance(e, mkv.SegmentStart):
            count = 0
        elif isinstance(e, mkv.Block):
            count += 1
        elif isinstance(e, mkv.SegmentEnd):
            per_segment.append(count)
    assert per_segment == [50] * 6
    blocks = b"".join(e.data for e in events if isinstance(e, mkv.Block))
    assert np.array_equal(np.frombuffer(blocks, "<i2"), audio)


def test_blocks_come_out_as_they_arrive_not_when_the_fragment_ends():
    data = kvs_sim.fragment(pcm(1.0), fragment_number="1", producer_ts_ms=T0_MS, tags=TAGS)
    reader = mkv.MkvStreamReader()
    events = reader.feed(data[: len(data) // 2])
    assert any(isinstance(e, mkv.Block) for e in events)
    assert not any(isinstance(e, mkv.SegmentEnd) for e in events)


def test_garbage_inside_a_fragment_is_malformed_and_the_reader_resyncs_on_the_next_chunk():
    frags = kvs_sim.fragments_of(pcm(3.0, seed=2), first_number=1, start_ms=T0_MS, tags=TAGS)
    broken = frags[0][1][:400] + bytes(range(256)) + frags[1][1] + frags[2][1]
    reader = mkv.MkvStreamReader()
    with pytest.raises(mkv.MalformedMkv) as err:
        reader.feed(broken)
    assert reader.resync() > 0
    events = reader.feed(b"") + reader.finish()[0]
    numbers = [e.values["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] for e in events + err.value.events
               if isinstance(e, mkv.Tags) and "AWS_KINESISVIDEO_FRAGMENT_NUMBER" in e.values]
    assert "2" in numbers and "3" in numbers


def test_a_laced_block_and_an_element_of_unknown_size_are_refused():
    with pytest.raises(mkv.MalformedMkv):
        mkv._block(bytes([0x81, 0, 0, 0x86]) + b"xx")
    tags = bytes(mkv.SCHEMA["Tags"].encode({}, infinite=True))
    with pytest.raises(mkv.MalformedMkv):
        mkv.MkvStreamReader().feed(bytes(mkv.SCHEMA["Segment"].encode({}, infinite=True)) + tags + b"\x00" * 16)


# -- one leg ---------------------------------------------------------------------------------------


def leg(data: bytes, **kw) -> tuple[list, list]:
    parser = LegParser(transaction_id="txn-1", call_id="call-1", **kw)
    out = parser.feed(read_all(data, 4096))
    return [o for o in out if not isinstance(o, BadInput)], [o for o in out if isinstance(o, BadInput)]


def test_blocks_are_dated_by_the_fragment_producer_timestamp_plus_their_offset():
    frags = kvs_sim.fragments_of(pcm(2.0), first_number=40, start_ms=T0_MS + 5, tags=TAGS, fragment_ms=1000)
    items, bad = leg(b"".join(d for _, d in frags))
    assert not bad
    audio = [i for i in items if isinstance(i, Audio)]
    assert [a.at_ms - T0_MS for a in audio[:3]] == [5, 25, 45]
    assert audio[50].at_ms - T0_MS == 1005 and audio[50].fragment == 41
    assert [i.fragment for i in items if isinstance(i, FragmentDone)] == [40, 41]


def test_the_offset_inside_a_fragment_does_not_depend_on_the_cluster_timecode_base():
    data = kvs_sim.fragment(pcm(0.1), fragment_number="9", producer_ts_ms=T0_MS, tags=TAGS, cluster_timecode=123456)
    items, _ = leg(data)
    assert [a.at_ms - T0_MS for a in items if isinstance(a, Audio)] == [0, 20, 40, 60, 80]


@pytest.mark.parametrize("kw, what", [
    (dict(codec="A_AAC"), "codec"),
    (dict(rate=16000), "rate"),
    (dict(channels=2), "channels"),
])
def test_a_track_that_is_not_8khz_mono_pcm16_is_a_media_format_fault(kw, what):
    data = kvs_sim.fragment(pcm(0.2), fragment_number="1", producer_ts_ms=T0_MS, tags=TAGS, **kw)
    with pytest.raises(BadInput) as err:
        leg(data)
    assert err.value.kind == "media_format" and err.value.fatal, what


@pytest.mark.parametrize("aws_tags, tags", [
    ({"AWS_KINESISVIDEO_PRODUCER_TIMESTAMP": "1764000000.000"}, TAGS),  # no fragment number
    ({"AWS_KINESISVIDEO_FRAGMENT_NUMBER": "5"}, TAGS),  # no producer timestamp
    ({"AWS_KINESISVIDEO_FRAGMENT_NUMBER": "5", "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP": "soon"}, TAGS),
    (None, {"VoiceConnectorId": "vc"}),  # neither CallId nor TransactionId
])
def test_a_fragment_missing_its_tags_is_skipped_and_counted(aws_tags, tags):
    bad_one = kvs_sim.fragment(pcm(0.2), fragment_number="5", producer_ts_ms=T0_MS, tags=tags, aws_tags=aws_tags)
    good = kvs_sim.fragment(pcm(0.2), fragment_number="6", producer_ts_ms=T0_MS + 200, tags=TAGS)
    items, bad = leg(bad_one + good)
    assert [b.kind for b in bad] == ["missing_tag"]
    assert {i.fragment for i in items if isinstance(i, Audio)} == {6}


def test_a_repeated_or_earlier_fragment_is_dropped_as_duplicate():
    f1 = kvs_sim.fragment(pcm(0.2, 1), fragment_number="10", producer_ts_ms=T0_MS, tags=TAGS)
    f2 = kvs_sim.fragment(pcm(0.2, 2), fragment_number="11", producer_ts_ms=T0_MS + 200, tags=TAGS)
    f0 = kvs_sim.fragment(pcm(0.2, 3), fragment_number="9", producer_ts_ms=T0_MS - 200, tags=TAGS)
    items, bad = leg(f1 + f2 + f2 + f0)
    assert [b.kind for b in bad] == ["duplicate", "duplicate"]
    assert [i.fragment for i in items if isinstance(i, FragmentDone)] == [10, 11]


def test_the_resume_point_served_again_is_skipped_without_a_count():
    f1 = kvs_sim.fragment(pcm(0.2, 1), fragment_number="10", producer_ts_ms=T0_MS, tags=TAGS)
    f2 = kvs_sim.fragment(pcm(0.2, 2), fragment_number="11", producer_ts_ms=T0_MS + 200, tags=TAGS)
    items, bad = leg(f1 + f2, done_through=10)
    assert not bad
    assert [i.fragment for i in items if isinstance(i, FragmentDone)] == [11]


def test_another_calls_fragment_after_ours_means_the_stream_was_recycled():
    ours = kvs_sim.fragment(pcm(0.2, 1), fragment_number="10", producer_ts_ms=T0_MS, tags=TAGS)
    theirs = kvs_sim.fragment(pcm(0.2, 2), fragment_number="11", producer_ts_ms=T0_MS + 200,
                              tags=kvs_sim.chime_tags("txn-2", "call-2"))
    items, bad = leg(ours + theirs)
    assert [b.kind for b in bad] == ["recycled_stream"] and bad[0].fatal
    assert isinstance(items[-1], Recycled)
    assert {i.fragment for i in items if isinstance(i, Audio)} == {10}


def test_another_calls_fragment_before_ours_is_skipped_not_the_end():
    theirs = kvs_sim.fragment(pcm(0.2, 2), fragment_number="9", producer_ts_ms=T0_MS - 200,
                              tags=kvs_sim.chime_tags("txn-0", "call-0"))
    ours = kvs_sim.fragment(pcm(0.2, 1), fragment_number="10", producer_ts_ms=T0_MS, tags=TAGS)
    items, bad = leg(theirs + ours)
    assert [b.kind for b in bad] == ["recycled_stream"] and not bad[0].fatal
    assert not any(isinstance(i, Recycled) for i in items)
    assert {i.fragment for i in items if isinstance(i, Audio)} == {10}


def test_a_fragment_cut_short_is_not_done_and_its_rest_follows_when_served_again():
    audio = pcm(2.0, seed=4)
    frags = kvs_sim.fragments_of(audio, first_number=20, start_ms=T0_MS, tags=TAGS)
    parser = LegParser(transaction_id="txn-1", call_id="call-1")
    # the first body breaks off in the middle of fragment 21 (no post-cluster tags: not whole)
    cut = frags[0][1] + frags[1][1][: len(frags[1][1]) // 2]
    reader = mkv.MkvStreamReader()
    first = parser.feed(reader.feed(cut))
    tail, _ = reader.finish()
    first += parser.feed(tail)
    assert [i.fragment for i in first if isinstance(i, FragmentDone)] == [20]
    got = [a for a in first if isinstance(a, Audio)]
    assert 50 < len(got) < 100 and parser.partial is not None
    # the next body starts at the last whole fragment (served again), then 21 whole
    parser.reconnected()
    second = parser.feed(read_all(frags[0][1] + frags[1][1], 4096))
    assert [i.fragment for i in second if isinstance(i, FragmentDone)] == [21]
    got += [a for a in second if isinstance(a, Audio)]
    assert [a.at_ms - T0_MS for a in got] == [20 * i for i in range(100)]  # each block once, in order
    assert np.array_equal(np.frombuffer(b"".join(a.pcm for a in got), "<i2"), audio)


# -- the first read's start selector -----------------------------------------------------------------

BIG = 91343852333181432392682062607743920146264485599  # fragment numbers are 47-digit decimals


def test_fragments_numbered_before_the_start_fragment_are_skipped_silently_with_big_numbers():
    # a start by timestamp serves the previous call's tail on a recycled stream, and maybe an
    # earlier fragment of ours-looking tags (clock skew): all below startFragmentNumber go
    theirs = kvs_sim.fragment(pcm(0.2, 2), fragment_number=str(BIG - 10**20), producer_ts_ms=T0_MS - 400,
                              tags=kvs_sim.chime_tags("txn-0", "call-0"))
    early = kvs_sim.fragment(pcm(0.2, 3), fragment_number=str(BIG - 1), producer_ts_ms=T0_MS - 200, tags=TAGS)
    first = kvs_sim.fragment(pcm(0.2, 1), fragment_number=str(BIG), producer_ts_ms=T0_MS, tags=TAGS)
    # a string compare would put this one ("…600" longer by a digit) before BIG
    later = kvs_sim.fragment(pcm(0.2, 4), fragment_number=str(BIG * 10), producer_ts_ms=T0_MS + 200, tags=TAGS)
    parser = LegParser(transaction_id="txn-1", call_id="call-1", start_at=BIG)
    out = parser.feed(read_all(theirs + early + first + later, 4096))
    assert not [o for o in out if isinstance(o, BadInput)]
    assert [o.fragment for o in out if isinstance(o, FragmentDone)] == [BIG, BIG * 10]
    assert parser.before_start == 2


def test_another_calls_fragment_at_or_after_the_start_is_still_checked_by_its_call_id():
    ours = kvs_sim.fragment(pcm(0.2, 1), fragment_number="10", producer_ts_ms=T0_MS, tags=TAGS)
    theirs = kvs_sim.fragment(pcm(0.2, 2), fragment_number="11", producer_ts_ms=T0_MS + 200,
                              tags=kvs_sim.chime_tags("txn-2", "call-2"))
    items, bad = leg(ours + theirs, start_at=10)
    assert [b.kind for b in bad] == ["recycled_stream"] and bad[0].fatal
    assert isinstance(items[-1], Recycled)


def test_the_first_read_starts_by_server_timestamp_before_the_legs_start_time():
    import datetime

    from telephony_gateway.chime import first_selector

    ev = ce.parse(started(start_ms=T0_MS))
    sel = first_selector(ev, 10.0)
    assert sel["StartSelectorType"] == "SERVER_TIMESTAMP"
    assert sel["StartTimestamp"].timestamp() == T0_MS / 1000 - 10.0
    # without startTime: the envelope's time
    raw = started(start_ms=T0_MS)
    del raw["detail"]["startTime"]
    raw["time"] = "2025-11-24T16:00:05Z"
    sel = first_selector(ce.parse(raw), 2.0)
    assert sel["StartTimestamp"] == datetime.datetime(2025, 11, 24, 16, 0, 3, tzinfo=datetime.timezone.utc)
    # neither: after the start fragment (the only selector left)
    raw["time"] = "not a time"
    sel = first_selector(ce.parse(raw), 2.0)
    assert sel == {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": raw["detail"]["startFragmentNumber"]}


# -- GetMedia's errors ---------------------------------------------------------------------------------


def test_getmedias_in_band_error_tags_are_reported_by_their_id():
    from telephony_gateway.chime import KvsError

    ours = kvs_sim.fragment(pcm(0.2, 1), fragment_number="10", producer_ts_ms=T0_MS, tags=TAGS)
    items, bad = leg(ours + kvs_sim.error_chunk("5000"))
    assert not bad
    assert items[-1] == KvsError("5000") and not items[-1].final
    assert KvsError("4000").final and KvsError("4503").final and not KvsError("3002").final


def test_getmedia_failures_are_classed_retry_or_final_with_bounded_labels():
    from botocore.exceptions import ClientError, EndpointConnectionError

    from telephony_gateway.chime import KvsError, retry_delay, source_error_code

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "GetMedia")

    assert source_error_code(client_error("ClientLimitExceededException", 400)) == ("ClientLimitExceededException", True)
    assert source_error_code(client_error("ConnectionLimitExceededException", 400)) == (
        "ConnectionLimitExceededException", True)
    assert source_error_code(client_error("ResourceNotFoundException", 404)) == ("ResourceNotFoundException", False)
    assert source_error_code(client_error("NotAuthorizedException", 401)) == ("NotAuthorizedException", False)
    assert source_error_code(client_error("SomethingNew", 503)) == ("http_5xx", True)
    assert source_error_code(client_error("SomethingNew", 418)) == ("http_other", False)
    assert source_error_code(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")) == ("connection", True)
    assert source_error_code(KvsError("4000")) == ("kvs_4000", False)
    assert source_error_code(KvsError("12345")) == ("kvs_other", True)
    from telephony_gateway import metrics as m
    for err in (KvsError("4000"), KvsError("12345"), client_error("SomethingNew", 418)):
        assert source_error_code(err)[0] in m.SOURCE_ERROR_CODES
    # backoff doubles from 0.2 s, is capped at 5 s and jittered down to half
    assert [retry_delay(n, 0.999999) for n in (1, 2, 3)] == pytest.approx([0.2, 0.4, 0.8], rel=1e-5)
    assert retry_delay(10, 0.999999) == pytest.approx(5.0) and retry_delay(10, 0.0) == 2.5
