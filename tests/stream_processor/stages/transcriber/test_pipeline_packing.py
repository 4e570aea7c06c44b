"""The transcriber stage alone in a real ``lupita worker`` (LUPITA_STAGES=transcriber) on the real
Kafka with packing on (``LUPITA_ASR_PACK_MAX_SECONDS=30``) and one decode thread: a two-leg call's
closed segments are produced all at once, as a backlog, so the finals of a leg wait together and
are decoded in shared windows, the person's before the agent's.

What is asserted holds for any voice: every segment gets exactly one final, in its own leg and
segment, in the leg's order, after any partial of it; its words are in call time inside its own
segment; some finals were decoded packed; nothing was dropped. Which words Whisper hears is
measured by the benchmarks, not asserted here.
"""

from __future__ import annotations

import uuid

import pytest
from backlog import (
    assert_no_partial_after_its_final, assert_one_final_per_segment, call_segments, transcribe_backlog,
    transcriber_worker,
)
from kafka_io import own_topics

from lupita.v1 import audio_pb2

pytestmark = pytest.mark.stack

ENV = {
    "LUPITA_STAGES": "transcriber",
    "LUPITA_ASR_THREADS": "1",
    "LUPITA_TRANSCRIBER_THREADS": "1",
    "LUPITA_ASR_PACK_MAX_SECONDS": "30",
    "LUPITA_ASR_PACK_GAP_SECONDS": "1.0",
}
TURNS = {  # leg -> its segments' sentences, in order
    audio_pb2.LEG_LUPITA: ("Buenos días, ¿cómo amaneció hoy?", "¿Ya tomó su pastilla de la presión?",
                           "Qué bueno. ¿Y quién vino a verla?"),
    audio_pb2.LEG_PERSON: ("Amanecí bien, gracias a Dios.", "Sí, me la tomé con el desayuno.",
                           "Vino mi hija Teresa con los niños.", "Hicimos mole para la comida."),
}


@pytest.fixture(scope="module")
def own(stack_env):
    return own_topics(stack_env["LUPITA_TOPIC_PREFIX"], "asrpack")


@pytest.fixture(scope="module")
def worker(stack_env, tmp_path_factory, own):
    with transcriber_worker(tmp_path_factory, own[0], "asrpack", ENV) as w:
        yield w


GUARD_METRIC = "lupita_transcriber_guard_actions_total"


@pytest.fixture(scope="module")
def result(worker, own):
    call_id = f"asrpack-{uuid.uuid4().hex[:8]}"
    segs = call_segments(call_id, TURNS)
    packed0 = worker.metric("lupita_transcriber_packed_segments_total")
    guarded0 = worker.metric(GUARD_METRIC, kind="final", action="packed")
    events = transcribe_backlog(own[0], {call_id: segs})[call_id]
    return (call_id, segs, events, worker.metric("lupita_transcriber_packed_segments_total") - packed0,
            worker.metric(GUARD_METRIC, kind="final", action="packed") - guarded0)


def test_every_segment_gets_one_final_in_its_leg_and_order(result):
    call_id, segs, events, _, _ = result
    assert_one_final_per_segment(call_id, TURNS, segs, events)


def test_a_partial_never_follows_its_final(result):
    assert_no_partial_after_its_final(result[2])


def test_the_backlog_was_decoded_in_shared_windows(result):
    _, _, events, packed, _ = result
    assert packed >= 2  # at least one window held two finals
    assert any("packed" in e.guard_actions for e in events if not e.is_partial)


def test_the_guard_actions_metric_counts_what_the_published_finals_say(result):
    """lupita_transcriber_guard_actions_total{kind="final",action="packed"} moved by exactly the
    number of published finals whose guard actions say they were packed (this module's one call)."""
    events = result[2]
    said = sum(1 for e in events if not e.is_partial and not e.leg_complete and "packed" in e.guard_actions)
    assert said >= 1
    assert result[4] == said
