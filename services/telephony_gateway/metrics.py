"""Prometheus metrics of the telephony gateway (names ``lupita_gateway_<thing>_<unit>``).

Every series a dashboard or alert may read is created at 0 at import, so it exists before its
first event.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from .errors import BAD_INPUT_KINDS

SOURCES = ("twilio", "vapi", "chime")
LEGS = ("lupita", "person")
# How a call ended on the gateway (the CallEnd reason sent to the bridge, or why none could be).
OUTCOMES = (
    "completed",  # the source said the call is over (Twilio stop, VAPI end, Chime ENDED or both streams ended) and the bridge closed it
    "disconnect",  # the source's socket closed without an end message (Chime: streaming FAILED)
    "stalled",  # no message for gateway_idle_timeout_seconds
    "media_format",  # the audio was not in the format the gateway takes
    "oversize_message",  # a websocket message over the size limit
    "shutdown",  # the gateway was stopping and the drain deadline passed
    "recycled_stream",  # Chime: every leg's stream went on with another call's fragments
    "bridge_error",  # the bridge refused the call or its stream failed
    "rejected",  # refused before a bridge call existed (start missing/invalid, no phone, no consent fields)
    "handoff",  # Chime: the call's partition moved to another gateway pod, which goes on from the checkpoint
)

CALLS = Counter("lupita_gateway_calls_total", "Calls finished by the gateway, by source and outcome", ["source", "outcome"])
LIVE_CALLS = Gauge("lupita_gateway_live_calls", "Calls currently streaming through this gateway", ["source"])
FRAMES = Counter("lupita_gateway_frames_total",
                 "Audio frames forwarded toward the bridge (Twilio: its 20 ms frames, before joining; VAPI: the "
                 "bridge frames cut from the byte stream)", ["source", "leg"])
GAPS = Counter("lupita_gateway_gaps_total", "Holes in a leg's audio (frames lost upstream), marked for the bridge",
               ["source", "leg"])
GAP_SECONDS = Counter("lupita_gateway_gap_seconds_total", "Audio missing in those holes", ["source", "leg"])
REORDERED = Counter("lupita_gateway_reordered_total", "Messages that arrived ahead of a missing one and were put back in order",
                    ["source"])
SKIPPED = Counter("lupita_gateway_skipped_sequence_total", "Sequence numbers never received (holes given up)", ["source"])
FORMAT_MISMATCHES = Counter("lupita_gateway_format_mismatches_total",
                            "Streams refused because their announced or observed format is not what the gateway takes",
                            ["source"])
BAD_INPUT = Counter("lupita_gateway_bad_input_total", "Input refused or dropped, by class", ["source", "kind"])
EVENTS = Counter("lupita_gateway_events_total", "Non-audio events received (dtmf, mark, ...)", ["source", "event"])
BRIDGE_ERRORS = Counter("lupita_gateway_bridge_errors_total", "Calls the bridge refused or dropped, by gRPC code",
                        ["source", "code"])
SOURCE_ERRORS = Counter(
    "lupita_gateway_source_errors_total",
    "Errors the source's service reported (Chime: GetMedia's HTTP error codes, its in-band AWS_KINESISVIDEO_ERROR_ID "
    "as kvs_<id>, broken connections), whether the read was tried again or the leg ended", ["source", "code"])
SOURCE_ERROR_CODES = ("ClientLimitExceededException", "ConnectionLimitExceededException", "ResourceNotFoundException",
                      "NotAuthorizedException", "InvalidEndpointException", "InvalidArgumentException",
                      "AccessDeniedException", "http_5xx", "http_other", "connection", "kvs_3002", "kvs_4000",
                      "kvs_4500", "kvs_4501", "kvs_4502", "kvs_4503", "kvs_4504", "kvs_4505", "kvs_4506",
                      "kvs_5000", "kvs_other")
for _code in SOURCE_ERROR_CODES:
    SOURCE_ERRORS.labels("chime", _code)
FORWARD_SECONDS = Histogram(
    "lupita_gateway_forward_seconds",
    "From a media message read off the source's socket until its audio is handed on (written to the bridge, or "
    "held to be joined; credit waits included)",
    ["source"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

for _source in SOURCES:
    LIVE_CALLS.labels(_source)
    REORDERED.labels(_source)
    SKIPPED.labels(_source)
    FORMAT_MISMATCHES.labels(_source)
    FORWARD_SECONDS.labels(_source)
    for _outcome in OUTCOMES:
        CALLS.labels(_source, _outcome)
    for _kind in BAD_INPUT_KINDS:
        BAD_INPUT.labels(_source, _kind)
    for _leg in LEGS:
        FRAMES.labels(_source, _leg)
        GAPS.labels(_source, _leg)
        GAP_SECONDS.labels(_source, _leg)

# -- Chime events through Kafka (telephony.chime.events, one consumer group of gateway pods) ----------
CHIME_DEAD_LETTERS = Counter("lupita_gateway_chime_dead_letters_total",
                             "Records of the Chime events topic put on its dead-letter topic as they were, by reason "
                             "(malformed_json: not an event record; unknown_event: an unknown status; undecryptable: "
                             "the person's number does not decrypt with this pod's key)", ["reason"])
CHIME_PUBLISHED = Counter("lupita_gateway_chime_events_published_total",
                          "Chime streaming events the control API published to Kafka (ok: the broker acked; failed: "
                          "not acked in time, the request got 503 and EventBridge retries)", ["result"])
CHIME_CONSUMED = Counter("lupita_gateway_chime_events_consumed_total",
                         "Chime event records this pod consumed as the owner of their partition, by what became of "
                         "them (started, ended, failed; replayed: a record of a call already running here or "
                         "finished, read again after a rebalance or a duplicate delivery; bad: unusable, put on the dead-letter topic)",
                         ["result"])
CHIME_HANDOFFS = Counter("lupita_gateway_chime_handoffs_total",
                         "Chime calls whose partition moved: out (stopped here, checkpoint written, the next owner goes "
                         "on), in (resumed here from another pod's or an earlier process's checkpoint), kept (paused "
                         "for a rebalance that left the partition here)", ["direction"])
CHIME_PARTITIONS = Gauge("lupita_gateway_chime_partitions", "Partitions of the Chime events topic this pod owns")
CHIME_CONSUMER_UP = Gauge("lupita_gateway_chime_consumer_up",
                          "1 while this pod's Chime consumer is in its group and its checkpoints are read")
for _r in ("ok", "failed"):
    CHIME_PUBLISHED.labels(_r)
for _r in ("started", "ended", "failed", "replayed", "bad"):
    CHIME_CONSUMED.labels(_r)
for _r in ("malformed_json", "unknown_event", "undecryptable"):
    CHIME_DEAD_LETTERS.labels(_r)
for _d in ("out", "in", "kept"):
    CHIME_HANDOFFS.labels(_d)
