"""``lupita call`` against a real ``lupita bridge`` child process and the real Kafka.

The bridge runs as its own process (``loadgen.bridgeproc.BridgeProcess`` through the test kit's
``procs.bridge_process``: its log lands in the session's log folder) on a free port,
publishing to this test session's topics (``stack_env``: unique prefix, topics created).
What the simulator reports is then checked against what Kafka holds.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from procs import bridge_process

from lupita import cli
from lupita.audio import mulaw_encode
from lupita.config import CommonSettings
from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE
from lupita.v1 import audio_pb2
from loadgen import synth
from loadgen.verify import read_calls

pytestmark = pytest.mark.stack

LUPITA, PERSON = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON


@pytest.fixture(scope="module")
def bridge(stack_env, tmp_path_factory):
    """One bridge child process for this module."""
    proc = bridge_process("loadgen-bridge", tmp_path_factory.mktemp("bridge"))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log_tail()


@pytest.fixture(autouse=True)
def _loadgen_cache(monkeypatch, synth_cache):
    # the CLI caches synthesised speech in the session's folder, not in the checkout
    monkeypatch.setenv("LUPITA_LOADGEN_CACHE_DIR", str(synth_cache))


def lupita_call(capsys, *args: str) -> tuple[int, dict | None, str]:
    """Run ``lupita call ... --json``; returns (exit code, report or None, stderr)."""
    code = cli.main(["call", *args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def read_back(call_ids, *, keep_payload=True):
    settings = CommonSettings()
    return asyncio.run(
        read_calls(settings.kafka_bootstrap, settings.topic(AUDIO_CHUNKS), settings.topic(CALL_LIFECYCLE),
                   call_ids, keep_payload=keep_payload, timeout_s=60)
    )


def padded_leg_bytes(column: np.ndarray, samples_per_frame: int, codec: int) -> bytes:
    """A leg as the simulator sends it: the last partial frame padded with silence."""
    n = -(-len(column) // samples_per_frame) * samples_per_frame
    padded = np.zeros(n, dtype=np.int16)
    padded[: len(column)] = column
    return padded.astype("<i2").tobytes() if codec == audio_pb2.CODEC_PCM16 else mulaw_encode(padded)


def test_synthesised_spanish_call_is_acked_frame_for_frame_and_lands_in_kafka_byte_exact(
    bridge, call_id, tmp_path, capsys
):
    saved = tmp_path / "streamed.wav"
    code, report, err = lupita_call(
        capsys, "--target", bridge.target, "--call-id", call_id, "--speed", "0", "--duration", "6",
        "--save-wav", str(saved),
    )
    assert code == 0, err
    assert report["calls"] == 1 and report["ok"] == 1 and report["failed"] == 0
    assert report["errors_by_code"] == {}
    assert report["frames_total"] == report["frames_sent"] == report["frames_acked"] == 2 * 300  # 6 s, 2 legs
    assert report["ack_latency_ms"]["p50"] is not None
    (one,) = report["per_call"]
    assert one["call_id"] == call_id and one["status"] == "OK" and one["chunk_ms"] == 100
    closed = one["closed"]
    assert (closed["frames_lupita"], closed["frames_person"]) == (300, 300)
    # >= 100 ms per record: at most 60 records per leg (more only if a partial chunk lingered)
    assert 0 < closed["chunks_lupita"] <= 60 and 0 < closed["chunks_person"] <= 60

    chunks, lifecycle = read_back([call_id])
    assert chunks.frames_of(call_id) == report["frames_sent"]
    assert chunks.frames_of_leg(call_id, LUPITA) == chunks.frames_of_leg(call_id, PERSON) == 300
    assert chunks.duplicates() == 0 and chunks.gaps() == 0
    assert chunks.legs[call_id][LUPITA].records == closed["chunks_lupita"]
    assert chunks.legs[call_id][PERSON].records == closed["chunks_person"]
    assert call_id in lifecycle.started
    assert lifecycle.ended[call_id].reason == "completed" and lifecycle.ended[call_id].frames == 600

    # the audio in Kafka is the synthesised Spanish speech that was streamed, leg by leg
    rate, stereo = synth.read_wav_legs(saved)
    assert rate == 8000 and len(stereo) == 6 * 8000
    assert np.count_nonzero(stereo[:, 0]) > 8000  # Lupita speaks in the first 6 s
    legs = chunks.legs[call_id]
    assert legs[LUPITA].audio() == padded_leg_bytes(stereo[:, 0], 160, audio_pb2.CODEC_PCM16)
    assert legs[PERSON].audio() == padded_leg_bytes(stereo[:, 1], 160, audio_pb2.CODEC_PCM16)


def test_stereo_wav_streams_left_as_lupita_and_right_as_the_person_for_each_call(
    bridge, call_id, tmp_path, capsys
):
    rate = 16000
    t = np.arange(int(2.5 * rate)) / rate
    left = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    right = np.random.default_rng(7).integers(-3000, 3000, len(t), dtype=np.int16)
    path = tmp_path / "call.wav"
    synth.write_wav(path, np.stack([left, right], axis=1), rate)

    code, report, err = lupita_call(
        capsys, "--target", bridge.target, "--wav", str(path), "--codec", "mulaw", "--calls", "2",
        "--call-id", call_id, "--speed", "0",
    )
    assert code == 0, err
    ids = [f"{call_id}-0", f"{call_id}-1"]
    assert [c["call_id"] for c in report["per_call"]] == ids
    assert report["ok"] == 2 and report["errors_by_code"] == {}
    assert report["frames_sent"] == report["frames_acked"] == 2 * 2 * 125  # 2 calls, 2 legs, 2.5 s / 20 ms

    chunks, lifecycle = read_back(ids)
    for cid in ids:
        legs = chunks.legs[cid]
        assert legs[LUPITA].audio() == mulaw_encode(left)  # 2.5 s is a whole number of frames
        assert legs[PERSON].audio() == mulaw_encode(right)
        assert lifecycle.ended[cid].reason == "completed" and lifecycle.ended[cid].frames == 250
    assert chunks.mismatches({cid: 250 for cid in ids}) == {}
