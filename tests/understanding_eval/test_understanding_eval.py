"""Regression guard of understanding on imperfect speech: the CI subset of the evaluation corpus
(``bench/corpus``: four short scripted calls, espeak-ng telephone audio) through the pipeline's
pure cores (VadCore -> Whisper -> CallUnderstanding/AlertDetector -> local analyzer), exactly as
``bench/understanding.py --path core`` runs them, in one process: no Kafka, no stores, no servers.

It asserts floors, never words: each floor is the value measured on this subset (see
bench/README.md, "Understanding on imperfect speech") minus a margin for another machine's
espeak-ng build and for Whisper sampling at a fallback temperature. A floor that fails means a
stage got worse on speech it used to handle; a much better value means the floor can be raised.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

pytestmark = [
    pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                       reason="needs espeak-ng and sox (apt-get install espeak-ng sox)"),
    # ~34 Whisper finals, ~3.3 CPU-minutes: 4-8 min wall when other runs share the 2 cores
    pytest.mark.timeout(900),
]

# Measured on the subset on 2026-12-02 (2-core VM shared with other test runs; see bench/README.md,
# "Understanding on imperfect speech"). Floors / ceilings = measured value -/+ a margin.
FLOORS_AUDIO = {
    "vad_frame_f1": 0.90,  # measured 0.962
}
CEILINGS_AUDIO = {
    "wer_person": 0.75,  # measured 0.610 (the whole person leg, normalised)
    "empty_finals_on_voiced": 0.10,  # measured 0.0 of 34 voiced finals
    "false_per_100_calm_calls": 50.0,  # measured 0: at most one false alert on the two calm calls
}
# calls whose script talks about a topic that got none: measured 0 of the 3 such calls (2026-12-02,
# after the weak-evidence topic; 2026-12-03 with the 10 s encoder window). The fourth call (a pet
# keeps her company) is about no catalogued topic: none is right there, and it is not counted.
CEILINGS_AUDIO_TOPICS_EMPTY = 0
# Alert recall after ASR is not floored here: with two expected cues one cue is a 50-point step
# (measured 0.5: the fall heard, "me duele mucho el pecho" heard as "me huele mucho el pecho";
# 1.0 since the approximate cue phrases read that as chest pain to verify, 2026-12-02 18:49, load 7);
# bench/understanding.py measures it on the whole corpus.
FLOORS_TEXT = {  # the clean-text baseline: the detector and the analyzer on the script itself
    "alert_recall": 1.0,  # measured 1.0 (2 cues)
    "fact_recall": 0.5,  # measured 1.0 (2 facts)
    "fact_precision": 0.5,  # measured 1.0
    "code_recall": 0.8,  # measured 1.0 (5 codes)
    "topic_accuracy": 0.5,  # measured 1.0
}


@pytest.fixture(scope="module")
def result():
    import corpus
    import understanding

    # the Claude path too (anthropic backend, official client) against a local server speaking
    # the Messages wire format, on the same utterances (bench/understanding.py --claude-standin)
    return understanding.evaluate(corpus.ci_subset(), models=understanding.load_models(claude_standin=True))


def test_clean_text_baseline_floors(result) -> None:
    b = result["baseline"]
    got = {"alert_recall": b["alerts"]["catalogue"]["recall"], "fact_recall": b["fact_recall"],
           "fact_precision": b["fact_precision"], "code_recall": b["code_recall"],
           "topic_accuracy": b["topic_accuracy"]}
    assert b["alerts"]["catalogue"]["false_per_100_calm_calls"] == 0, b["alerts"]["catalogue"]["false"]
    for k, floor in FLOORS_TEXT.items():
        assert got[k] is not None and got[k] >= floor, f"clean text {k} = {got[k]} < floor {floor}"
    assert b["topics_empty_calls"] == 0, "a call with talk got no topic"
    claude = b["analyzers"]["anthropic (stand-in)"]
    assert claude["fallbacks"] == 0, "the Claude path fell back to the local analyzer"
    assert claude["fact_recall"] is not None and claude["fact_recall"] >= FLOORS_TEXT["fact_recall"], claude
    assert claude["fact_precision"] is not None and claude["fact_precision"] >= FLOORS_TEXT["fact_precision"], claude


def test_audio_path_floors(result) -> None:
    a = result["audio"]
    alerts = a["alerts"]["catalogue"]
    got = {"vad_frame_f1": a["vad_frame_f1"], "wer_person": a["wer_person"],
           "empty_finals_on_voiced": a["empty_finals_on_voiced"],
           "false_per_100_calm_calls": alerts["false_per_100_calm_calls"]}
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in got.items()}, "alert recall", alerts["recall"],
          alerts["missed"], alerts["false"])
    assert a["voiced_finals"] >= 8, f"only {a['voiced_finals']} voiced finals: the VAD or the rendering broke"
    assert result["asr_cached_calls"] == 0, "the guard must run the ASR, not the cache"
    for k, floor in FLOORS_AUDIO.items():
        assert got[k] is not None and got[k] >= floor, f"audio {k} = {got[k]} < floor {floor}"
    for k, ceiling in CEILINGS_AUDIO.items():
        assert got[k] is not None and got[k] <= ceiling, f"audio {k} = {got[k]} > ceiling {ceiling}"
    # issue 11 §3: every call with talk gets a topic, after ASR too (the local analyzer and the
    # Claude path); facts after ASR are weighed by their words' probabilities and the doubtful
    # ones dropped, so what is kept must mostly be right (with 2 facts on this subset, precision
    # is not floored: see bench/README.md for the 40-call figures)
    print({k: a[k] for k in ("fact_precision", "fact_recall", "facts_pred", "topic_accuracy", "topics_empty_calls")})
    assert a["topics_empty_calls"] <= CEILINGS_AUDIO_TOPICS_EMPTY, a["topics_empty_calls"]
    assert a["analyzers"]["anthropic (stand-in)"]["fallbacks"] == 0
