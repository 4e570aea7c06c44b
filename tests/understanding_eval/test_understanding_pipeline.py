"""Regression guard of understanding through the real path: two calls of the CI subset of the
evaluation corpus (``bench/corpus``: a call with a fall, a calm call; espeak-ng telephone audio)
through a real ``lupita bridge`` (gRPC) → Kafka (this run's own topics) → a real ``lupita worker``
with every stage → Postgres / Weaviate / S3, read back from the stores and scored by the same
scorer as the offline harness, exactly as ``bench/understanding.py --path pipeline`` does.

It asserts floors, never words: each floor is the value measured on these two calls (see
bench/README.md, "Understanding on imperfect speech") minus a margin for another machine's
espeak-ng build and for Whisper sampling at a fallback temperature. And it asserts consistency
between the stores, whatever Whisper heard: the alerts stored in ``call_alerts`` are exactly those
the alert detector finds in the worker's own final transcripts (read back from the ``transcripts``
topic, with their words' probabilities), each call that talked has a topic, the stored utterances
are the non-empty finals.

Took 37 s at load average 4 and 2 min at load 9 on the 2 shared cores (two short calls, Whisper
base on CPU, the worker's and this process's model loads).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                       reason="needs espeak-ng and sox (apt-get install espeak-ng sox)"),
    pytest.mark.timeout(600),
]

# Measured on these two calls on 2026-12-02 (2-core VM shared with other runs, load 9: 2 min; see
# bench/README.md). Floors / ceilings = measured value -/+ a margin.
FLOORS = {
    "vad_frame_f1": 0.90,  # measured 0.96
}
CEILINGS = {
    "wer_person": 0.80,  # measured 0.54 (the Lupita leg: 0.81, not floored)
    "empty_finals_on_voiced": 0.15,  # measured 0.0
}
MIN_VOICED_FINALS = 8  # measured 18 on the two calls


@pytest.fixture(scope="module")
def result(stack_env, tmp_path_factory):
    import corpus
    import logscan
    import understanding

    calls = corpus.ci_subset()[:2]  # a fall (alert cue) and a calm call
    assert [c.kind for c in calls] == ["alert", "calm"], [c.kind for c in calls]
    tmp = tmp_path_factory.mktemp("und-pipeline")
    return calls, understanding.evaluate_pipeline(calls, workdir=tmp, log_dir=logscan.log_dir() or tmp, cores=False)


def test_pipeline_floors(result) -> None:
    calls, r = result
    w = r["pipeline"]
    print({k: w[k] for k in ("vad_frame_f1", "wer_person", "wer_lupita", "empty_finals_on_voiced", "voiced_finals",
                             "topic_accuracy", "topics_empty_calls", "facts_pred", "fact_precision")},
          w["alerts"]["worker (stored)"])
    assert w["calls"] == len(calls)
    assert w["voiced_finals"] >= MIN_VOICED_FINALS, f"only {w['voiced_finals']} voiced finals"
    for k, floor in FLOORS.items():
        assert w[k] is not None and w[k] >= floor, f"pipeline {k} = {w[k]} < floor {floor}"
    for k, ceiling in CEILINGS.items():
        assert w[k] is not None and w[k] <= ceiling, f"pipeline {k} = {w[k]} > ceiling {ceiling}"
    # issue 11 §3: a call with talk is never stored without a topic
    assert w["topics_empty_calls"] == 0, "a call with talk was stored without a topic"
    # the clean-text baseline of the same calls (the cores): the scorer itself still works
    b = r["baseline"]
    assert b["alerts"]["catalogue"]["recall"] == 1.0 and b["alerts"]["catalogue"]["false_per_100_calm_calls"] == 0


def test_stored_alerts_are_what_the_detector_finds_in_the_workers_finals(result) -> None:
    """call_alerts against the worker's own finals (transcripts topic) scanned again here: the
    same cues, and each stored alert is what its evidence's final gives (span and to_verify),
    whatever order the finals reached the worker in."""
    from stream_processor.stages.understanding.alerts import AlertDetector

    import understanding

    calls, r = result
    det = AlertDetector()
    for call in calls:
        got = r["_stored"][call.call_id]
        utts, words = understanding.asr_utterances(call, got["finals"])
        by_seq = {u.seq: u for u in utts if u.leg == "person"}
        found = {u.seq: det.scan(u, set(), words=words.get((u.leg, u.seq))) for u in by_seq.values()}
        expected = {h.cue_id for hits in found.values() for h in hits}
        assert {a.cue_id for a in got["alerts"]} == expected, (call.call_id, got["alerts"], expected)
        for a in got["alerts"]:
            assert a.evidence.leg == "person" and a.evidence.seq in by_seq, a
            [hit] = [h for h in found[a.evidence.seq] if h.cue_id == a.cue_id]
            assert (a.evidence.char_start, a.evidence.char_end, bool(a.to_verify)) == (
                hit.evidence.char_start, hit.evidence.char_end, hit.to_verify), (a, hit)


def test_stored_utterances_are_the_non_empty_finals(result) -> None:
    calls, r = result
    for call in calls:
        got = r["_stored"][call.call_id]
        finals = {(f.leg, f.seq): f.text for f in got["finals"] if f.text.strip()}
        stored = {(u.leg, u.seq): u.text for u in got["utterances"]}
        assert set(stored) == set(finals), call.call_id
        assert {u.leg for u in got["utterances"]} == {"lupita", "person"}, call.call_id
        assert got["analysis"].topics, f"{call.call_id}: no topic stored"
