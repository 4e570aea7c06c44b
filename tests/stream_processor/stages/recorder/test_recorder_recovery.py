"""A worker killed in the middle of a call: its successor resumes from the table changelog."""

from __future__ import annotations

import signal
import uuid

import numpy as np
import pytest
from calls import simulate_call
from kafka_io import committed_offsets, produce
from procs import start_worker, stop_worker
from sp_stores import get_json, keys_of, read_wav, row_of
from waits import wait_for

from lupita.topics import ensure_topics
from stream_processor.stages.recorder.agent import DEAD_LETTERS
from stream_processor.stages.recorder.agent import RECORDER_CONTROL
from stream_processor.stages.recorder.settings import RecorderSettings

pytestmark = pytest.mark.stack


def committed(bootstrap: str, group: str) -> dict[str, int]:
    """Sum of the group's committed offsets per topic."""
    out: dict[str, int] = {}
    for (topic, _), offset in committed_offsets(bootstrap, group).items():
        out[topic] = out.get(topic, 0) + offset
    return out


def chunks_stored(worker) -> float:
    return sum(worker.metric("lupita_recorder_chunks_total", leg=leg) for leg in ("lupita", "person"))


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_sigkilled_worker_loses_nothing_its_successor_records_the_call_exactly(store, stack_env, tmp_path, s3, pg):
    # own topics (prefix) and group, so nothing of the other tests is replayed here
    prefix = f"recovery-{uuid.uuid4().hex[:8]}."
    env = {"LUPITA_TOPIC_PREFIX": prefix, "LUPITA_TABLE_STORE": store}
    settings = RecorderSettings(topic_prefix=prefix)
    ensure_topics(settings)
    ensure_topics(settings, names=(RECORDER_CONTROL, DEAD_LETTERS))
    app_id = f"recorder-recovery-{uuid.uuid4().hex[:8]}"

    class Topics:
        chunks = settings.topic("audio.chunks")
        lifecycle = settings.topic("call.lifecycle")

    call = simulate_call(f"rec-{uuid.uuid4().hex[:16]}", phone="+529517654321", lupita_ms=2000, person_ms=1600)
    half = len(call.chunks) // 2
    first = start_worker(tmp_path / "first", app_id, env_extra=env)
    try:
        produce(settings.kafka_bootstrap, call.records(Topics, chunks=call.chunks[:half], ended=False))
        wait_for("the first half to be buffered", lambda: chunks_stored(first) == half)
        group = first.group
        wait_for("the offsets to be committed", lambda: committed(settings.kafka_bootstrap, group).get(
            Topics.chunks) == half and committed(settings.kafka_bootstrap, group).get(Topics.lifecycle) == 1)
    finally:
        assert stop_worker(first, signal.SIGKILL) == -signal.SIGKILL

    second = start_worker(tmp_path / "second", app_id, env_extra=env)
    try:
        produce(settings.kafka_bootstrap, call.records(Topics, chunks=call.chunks[half:], started=False))
        keys = keys_of(call)
        meta = wait_for("metadata.json", lambda: get_json(s3, settings.s3_legal_bucket, keys.metadata), timeout=60)
        # the second worker consumed only the second half: the first came from the changelog
        assert chunks_stored(second) == len(call.chunks) - half
        assert meta["finalize_reason"] == "complete" and meta["recording"]["missing_chunks"] == {}
        _, frames, _ = read_wav(s3, settings.s3_legal_bucket, keys.audio)
        np.testing.assert_array_equal(frames, call.expected)
        assert wait_for("the row", lambda: row_of(pg, call.call_id))["recording_status"] == "recorded"
    finally:
        assert stop_worker(second) == 0
