"""Decode scheduling by value (``stages/transcriber/scheduler.py``) with real segments and the real
local model: the person's finals before the agent's, partials only when no final waits, nothing
final dropped, every decision counted.

The worker thread is held at a gate (a ``threading.Event``) while the jobs are queued, so the
order in which they then run depends only on the scheduler, never on timing. The segments are
espeak-ng telephone speech (the simulator's two voices) decoded by the packaged Whisper base; no
test requires particular words.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import pytest
from prometheus_client import REGISTRY

from loadgen.synth import DEFAULT_VOICES, LUPITA, PERSON, Voice, synthesize_utterance
from stream_processor.models.asr.whisper_local import WhisperLocal
from stream_processor.stages.transcriber.scheduler import (
    AGENT_FINAL, AGENT_PARTIAL, PERSON_FINAL, PERSON_PARTIAL, DecodeScheduler, job_class,
)

RATE = 8000


def decisions(name: str) -> float:
    return REGISTRY.get_sample_value("lupita_transcriber_schedule_decisions_total", {"decision": name}) or 0.0


@pytest.fixture(scope="module")
def model() -> WhisperLocal:
    return WhisperLocal(threads=2)


@pytest.fixture(scope="module")
def segments() -> dict[str, np.ndarray]:
    pad = np.zeros(int(0.3 * RATE), np.int16)

    def seg(text: str, voice: Voice) -> np.ndarray:
        return np.concatenate([pad, synthesize_utterance(text, RATE, voice), pad])

    person, lupita = DEFAULT_VOICES[PERSON], DEFAULT_VOICES[LUPITA]
    return {
        "person-1": seg("Me caí anoche en la cocina y me duele la cadera.", person),
        "person-2": seg("Mi hija Teresa vino a verme el domingo.", person),
        "agent-1": seg("Buenos días, ¿cómo amaneció hoy?", lupita),
        "agent-2": seg("¿Ya tomó su pastilla de la presión?", lupita),
    }


def gated() -> tuple[threading.Event, threading.Event, Callable[[], str]]:
    """``(gate, held, hold)``: ``hold`` is a job that sets ``held`` and waits for ``gate``, so the
    worker that took it stays busy until the test opens the gate."""
    gate, held = threading.Event(), threading.Event()

    def hold() -> str:
        held.set()
        assert gate.wait(120), "the gate was never opened"
        return "gate"
    return gate, held, hold


def decoder(model: WhisperLocal, segments: dict[str, np.ndarray], seen: Callable[[str], None]):
    """``decode(label, partial=False)``: a job that calls ``seen(label)`` in its worker thread, then
    decodes the segment named by the label's part before ":"."""
    def decode(label: str, partial: bool = False):
        def run():
            seen(label)
            fn = model.transcribe_partial if partial else model.transcribe
            return fn(segments[label.split(":")[0]], RATE)
        return run
    return decode


def test_job_classes_rank_person_finals_first():
    assert job_class(person=True, final=True) == PERSON_FINAL
    assert job_class(person=False, final=True) == AGENT_FINAL
    assert job_class(person=True, final=False) == PERSON_PARTIAL
    assert job_class(person=False, final=False) == AGENT_PARTIAL
    assert PERSON_FINAL < AGENT_FINAL < PERSON_PARTIAL < AGENT_PARTIAL


def test_person_finals_run_before_agent_finals_and_partials_last(model, segments):
    ran: list[str] = []
    gate, held, hold = gated()
    decode = decoder(model, segments, ran.append)
    sched = DecodeScheduler(1, name="test-sched")

    waited0, skipped0 = decisions("agent_waited"), decisions("partial_skipped")
    try:
        first = sched.submit(AGENT_FINAL, hold)
        assert held.wait(60), "the worker never took the first job"
        # queued while the worker is busy, in arrival order: agent first, the person last
        futures = {
            "agent-1:partial": sched.submit(AGENT_PARTIAL, decode("agent-1:partial", partial=True)),
            "agent-1": sched.submit(AGENT_FINAL, decode("agent-1")),
            "agent-2": sched.submit(AGENT_FINAL, decode("agent-2")),
            "person-1": sched.submit(PERSON_FINAL, decode("person-1")),
            "person-2:partial": sched.submit(PERSON_PARTIAL, decode("person-2:partial", partial=True)),
            "person-2": sched.submit(PERSON_FINAL, decode("person-2")),
        }
        # a partial that arrives while finals wait is refused (a hint, never owed); finals never are
        assert futures["person-2:partial"] is None
        assert sched.waiting() == {"person_final": 2, "agent_final": 2, "person_partial": 0, "agent_partial": 1}
        gate.set()
        assert first.result(120) == "gate"
        results = {k: f.result(300) for k, f in futures.items() if f is not None}
    finally:
        gate.set()
        sched.shutdown(wait=True, cancel_futures=False)

    assert ran == ["person-1", "person-2", "agent-1", "agent-2", "agent-1:partial"]
    for label in ("person-1", "person-2", "agent-1", "agent-2"):  # every final decoded, with text
        assert results[label].text and not results[label].is_partial, label
    assert results["agent-1:partial"].is_partial
    # two person finals taken while agent finals waited; one partial refused
    assert decisions("agent_waited") - waited0 == 2
    assert decisions("partial_skipped") - skipped0 == 1


def test_a_person_thread_decodes_a_person_final_while_the_general_worker_is_held(model, segments):
    """The general worker is held inside an agent's decode (a started decode cannot be interrupted):
    the person's final is decoded at once by the person thread; the agent's final and the partial
    queued behind the held job wait for the general worker, which the person thread never takes."""
    threads_of: dict[str, str] = {}
    gate, held, hold = gated()
    decode = decoder(model, segments, lambda label: threads_of.__setitem__(label, threading.current_thread().name))
    sched = DecodeScheduler(1, name="test-sched", person_threads=1)
    by_person_thread0 = decisions("person_thread")

    try:
        first = sched.submit(AGENT_FINAL, hold)
        assert held.wait(60), "the general worker never took the first job"
        agent = sched.submit(AGENT_FINAL, decode("agent-1"))
        partial = sched.submit(AGENT_PARTIAL, decode("agent-2:partial", partial=True))
        assert partial is None  # a final waits: the partial is refused, as with no person thread
        person = sched.submit(PERSON_FINAL, decode("person-1"))
        assert person.result(300).text  # decoded while the general worker is still held
        assert not gate.is_set() and not agent.done()
        assert sched.waiting()["agent_final"] == 1  # the person thread left the agent's final alone
        gate.set()
        assert first.result(120) == "gate"
        assert agent.result(300).text
    finally:
        gate.set()
        sched.shutdown(wait=True, cancel_futures=False)
    assert threads_of == {"person-1": "test-sched-person-0", "agent-1": "test-sched-0"}
    assert decisions("person_thread") - by_person_thread0 == 1


def test_person_threads_must_not_be_negative():
    with pytest.raises(ValueError, match="person_threads"):
        DecodeScheduler(1, name="test-sched", person_threads=-1)


def test_a_queued_partial_no_longer_wanted_is_cancelled_not_decoded(model, segments):
    gate, held = threading.Event(), threading.Event()
    started: list[int] = []
    sched = DecodeScheduler(1, name="test-sched", on_start=started.append)
    superseded = threading.Event()
    cancelled0 = decisions("partial_cancelled")
    try:
        first = sched.submit(PERSON_FINAL, lambda: (held.set(), gate.wait(120)))
        assert held.wait(60)
        partial = sched.submit(PERSON_PARTIAL, model.transcribe_partial, segments["person-1"], RATE,
                               wanted=lambda: not superseded.is_set())
        final = sched.submit(PERSON_FINAL, model.transcribe, segments["person-1"], RATE)
        assert partial is not None  # queued before the final
        superseded.set()  # e.g. the leg's final was published while the partial waited
        gate.set()
        first.result(120)
        assert final.result(300).text
        with pytest.raises(Exception):  # CancelledError
            partial.result(60)
        assert partial.cancelled()
    finally:
        gate.set()
        sched.shutdown(wait=True)
    assert started == [PERSON_FINAL, PERSON_FINAL]  # the partial never ran
    assert decisions("partial_cancelled") - cancelled0 == 1


def test_a_failing_decode_reaches_its_caller_and_the_worker_goes_on(segments, model):
    sched = DecodeScheduler(1, name="test-sched")
    try:
        bad = sched.submit(PERSON_FINAL, model.transcribe, np.zeros((4, 2), np.int16), RATE)
        good = sched.submit(PERSON_FINAL, model.transcribe, segments["person-2"], RATE)
        with pytest.raises(ValueError, match="mono"):
            bad.result(120)
        assert good.result(300).text
    finally:
        sched.shutdown(wait=True)


def test_shutdown_cancels_what_waits_and_refuses_new_jobs():
    gate, held = threading.Event(), threading.Event()
    sched = DecodeScheduler(1, name="test-sched")
    first = sched.submit(PERSON_FINAL, lambda: (held.set(), gate.wait(60)))
    assert held.wait(60)
    queued = sched.submit(AGENT_FINAL, lambda: "never")
    sched.shutdown(cancel_futures=True)
    gate.set()
    first.result(60)
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        sched.submit(PERSON_FINAL, lambda: None)
    assert sched.waiting()["agent_final"] == 0


def test_waiting_finals_of_one_class_and_key_are_decoded_in_one_batch(model, segments):
    """Batching sized by the backlog: what waits when the worker frees up goes in one batch (at
    most max_batch), the person's finals first and never mixed with the agent's, a different key
    (another call vocabulary) never in the same batch; a lone final is not held back."""
    batches: list[list[str]] = []
    gate, held = threading.Event(), threading.Event()
    sched = DecodeScheduler(1, name="test-sched", max_batch=3)

    def batch_fn(requests):
        batches.append([label for label, _ in requests])
        return model.transcribe_batch([[(segments[label], RATE)] for label, _ in requests])

    def submit(cls, label, key="k"):
        return sched.submit_batch(cls, batch_fn, (label, None), key=key)

    try:
        first = sched.submit(AGENT_FINAL, lambda: (held.set(), gate.wait(120)))
        assert held.wait(60)
        futures = {
            "agent-1": submit(AGENT_FINAL, "agent-1"),
            "person-1": submit(PERSON_FINAL, "person-1"),
            "agent-2": submit(AGENT_FINAL, "agent-2"),
            "person-2": submit(PERSON_FINAL, "person-2"),
            "person-1:other-vocabulary": submit(PERSON_FINAL, "person-1", key="other"),
        }
        gate.set()
        first.result(120)
        results = {k: f.result(300) for k, f in futures.items()}
        # a final alone in the scheduler runs at once, in a batch of one
        assert [r.text for r in submit(PERSON_FINAL, "person-2").result(300)] == [r.text for r in results["person-2"]]
    finally:
        gate.set()
        sched.shutdown(wait=True, cancel_futures=False)
    assert batches == [["person-1", "person-2"], ["person-1"], ["agent-1", "agent-2"], ["person-2"]]
    for label, rs in results.items():
        assert len(rs) == 1 and rs[0].text and not rs[0].is_partial, label


def test_a_failing_batch_is_run_request_by_request(model, segments):
    gate, held = threading.Event(), threading.Event()
    sched = DecodeScheduler(1, name="test-sched", max_batch=4)
    fn = model.transcribe_batch
    try:
        first = sched.submit(PERSON_FINAL, lambda: (held.set(), gate.wait(120)))
        assert held.wait(60)
        good = sched.submit_batch(PERSON_FINAL, fn, [(segments["person-1"], RATE)], key="k")
        bad = sched.submit_batch(PERSON_FINAL, fn, [(np.zeros((4, 2), np.int16), RATE)], key="k")
        gate.set()
        first.result(120)
        with pytest.raises(ValueError, match="mono"):
            bad.result(300)
        assert good.result(300)[0].text  # the bad request did not take the good one down
        with pytest.raises(ValueError, match="finals"):
            sched.submit_batch(PERSON_PARTIAL, fn, [(segments["person-1"], RATE)], key="k")
    finally:
        gate.set()
        sched.shutdown(wait=True)
