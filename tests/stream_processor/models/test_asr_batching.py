"""Batched decodes (``WhisperLocal.transcribe_batch``, ``batch_max_windows`` > 1) and the guard of
the trimmed encoder window (``encoder_window="trimmed"``, ``encoder_guard``).

Real model, real espeak-ng telephone speech. What is asserted holds for any voice and never
depends on exact words: each request gets one final per segment, in order; a distinctive word
that is heard at all is heard only in its own segment (two requests may be two calls); every
word lies inside its own segment; a row the batched decode doubts is decoded again on its own;
bad audio is refused before anything is decoded. The window guard is checked by what it must
do: when every trimmed decode is doubtful, every final is the full window's own transcript (same
decoding at temperature 0, same encoder input), and with the guard off nothing is decoded twice.
"""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.synth import DEFAULT_VOICES, LUPITA, PERSON, synthesize_utterance
from stream_processor.models.asr.base import AudioInputError
from stream_processor.models.asr.guards import normalize_text
from stream_processor.models.asr.whisper_local import WhisperLocal, WhisperOptions, load_model_files

RATE = 8000
# (text, distinctive words, leading silence s, voice)
SEGMENTS = (
    ("Mi nieto Rodrigo vive en Guadalajara.", ("rodrigo", "guadalajara"), 0.3, PERSON),
    ("Hoy compré tortillas y naranjas en el mercado.", ("tortillas", "naranjas", "mercado"), 1.2, PERSON),
    ("El doctor me cambió la medicina del corazón.", ("doctor", "medicina", "corazon"), 0.6, LUPITA),
    ("Mañana vamos a pasear al parque con los perros.", ("parque", "perros", "pasear"), 0.4, PERSON),
)
TAIL_S = 0.3
SLACK_S = 0.5  # Whisper word timings are good to a few hundred ms


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return load_model_files()


@pytest.fixture(scope="module")
def segments() -> list[tuple[np.ndarray, float, float]]:
    """(int16 audio, speech start s, speech end s) per segment."""
    out = []
    for text, _, lead, voice in SEGMENTS:
        speech = synthesize_utterance(text, RATE, DEFAULT_VOICES[voice])
        audio = np.concatenate([np.zeros(int(lead * RATE), np.int16), speech, np.zeros(int(TAIL_S * RATE), np.int16)])
        out.append((audio, lead, lead + speech.size / RATE))
    return out


@pytest.fixture(scope="module")
def batched_model(files) -> WhisperLocal:
    return WhisperLocal(threads=2, options=WhisperOptions(batch_max_windows=8), files=files)


@pytest.fixture(scope="module")
def batched(batched_model, segments):
    """Four requests of one segment each (four legs or calls waiting together), one batch."""
    return batched_model.transcribe_batch([[(a, RATE)] for a, _, _ in segments])


def _check_own_words(results, segments) -> None:
    heard = [f" {normalize_text(r.text)} " for r in results]
    for k, (_, words, _, _) in enumerate(SEGMENTS):
        for word in words:
            for j, text in enumerate(heard):
                if j != k:
                    assert f" {word} " not in text, (word, k, j, text)
    for r, (_, a, b) in zip(results, segments):
        for w in r.words:
            assert a - SLACK_S <= (w.start + w.end) / 2 <= b + SLACK_S, (w, a, b)
            assert 0.0 <= w.start <= w.end <= r.audio_seconds
        starts = [w.start for w in r.words]
        assert starts == sorted(starts)


def test_each_request_gets_one_final_per_segment_from_the_batch(batched, segments):
    assert [len(rs) for rs in batched] == [1] * len(segments)
    results = [rs[0] for rs in batched]
    for r, (audio, _, _) in zip(results, segments):
        assert not r.is_partial and r.text, r.guard_actions
        assert r.audio_seconds == pytest.approx(audio.size / RATE, abs=1e-3)
        # decoded in the batch, or (doubtful there) again on its own: never silently both or neither
        assert ("batched" in r.guard_actions) != ("batch_redecode" in r.guard_actions), r.guard_actions
    assert sum("batched" in r.guard_actions for r in results) >= 2  # the batch did decode rows


def test_no_word_crosses_between_the_rows_of_a_batch(batched, segments):
    _check_own_words([rs[0] for rs in batched], segments)


def test_packed_requests_are_batched_but_never_packed_together(files, segments):
    """Two requests of two segments each (two calls), packing and batching on: a request's
    segments may share a window, two requests never do."""
    model = WhisperLocal(threads=2, files=files,
                         options=WhisperOptions(batch_max_windows=4, pack_max_seconds=30.0, pack_gap_s=1.0))
    calls: list[list[int]] = []
    inner = model._run_batched

    def spy(windows, vocabulary):
        calls.append([len(w) for w in windows])
        return inner(windows, vocabulary)

    model._run_batched = spy  # type: ignore[method-assign]
    out = model.transcribe_batch([[(a, RATE) for a, _, _ in segments[:2]], [(a, RATE) for a, _, _ in segments[2:]]])
    assert calls == [[2, 2]]  # one batched call: one packed window per request
    assert [len(rs) for rs in out] == [2, 2]
    results = out[0] + out[1]
    assert all("packed" in r.guard_actions for r in results)
    _check_own_words(results, segments)


def test_a_quiet_segment_is_not_decoded_and_bad_audio_is_refused_first(batched_model, segments):
    calls: list[int] = []
    inner = batched_model._decode_rows

    def spy(rows, vocabulary):
        calls.append(len(rows))
        return inner(rows, vocabulary)

    batched_model._decode_rows = spy  # type: ignore[method-assign]
    try:
        quiet = np.zeros(RATE * 2, np.int16)
        out = batched_model.transcribe_batch([[(quiet, RATE)], [(segments[0][0], RATE)]])
        assert out[0][0].is_empty and out[0][0].guard_actions == ("quiet_audio",)
        assert out[1][0].text
        assert calls == []  # one window left: decoded on its own, no batch of one
        with pytest.raises(AudioInputError):
            batched_model.transcribe_batch([[(segments[0][0], RATE)], [(np.zeros((2, 2, 2), np.int16), RATE)]])
        assert calls == []  # refused before any decode
    finally:
        batched_model._decode_rows = inner  # type: ignore[method-assign]


def test_a_row_the_batch_doubts_is_decoded_again_on_its_own(files, segments, monkeypatch):
    model = WhisperLocal(threads=2, files=files, options=WhisperOptions(batch_max_windows=4))
    inner = model._decode_rows

    def decode_rows(rows, vocabulary):
        out = inner(rows, vocabulary)
        return [([], lang) if k == 1 else (raw, lang) for k, (raw, lang) in enumerate(out)]  # row 1: nothing

    monkeypatch.setattr(model, "_decode_rows", decode_rows)
    out = model.transcribe_batch([[(a, RATE)] for a, _, _ in segments[:3]])
    assert "batch_redecode" in out[1][0].guard_actions and out[1][0].text
    assert "batched" not in out[1][0].guard_actions
    for r in (out[0][0], out[2][0]):  # the others stand as batched, unless doubtful themselves
        assert ("batched" in r.guard_actions) != ("batch_redecode" in r.guard_actions), r.guard_actions


def test_batching_off_decodes_window_by_window(files, segments):
    model = WhisperLocal(threads=2, files=files)  # batch_max_windows 1: the default
    out = model.transcribe_batch([[(a, RATE)] for a, _, _ in segments[:2]])
    assert [len(rs) for rs in out] == [1, 1]
    assert all("batched" not in rs[0].guard_actions and rs[0].text for rs in out)


def test_a_doubtful_trimmed_decode_is_redone_with_the_full_window(files, segments):
    """Guard threshold 0: every trimmed final is doubtful, so every final must be the full
    window's own transcript (one temperature: deterministic; the trimmed pass runs at the first
    temperature only, the full-window pass with the ladder)."""
    audio = [a for a, _, _ in segments[:2]]
    full = WhisperLocal(threads=2, files=files, options=WhisperOptions(temperatures=(0.0,)))
    guarded = WhisperLocal(threads=2, files=files, options=WhisperOptions(
        temperatures=(0.0,), encoder_window="trimmed", encoder_guard=True, encoder_guard_logprob=0.0))
    for a in audio:
        want, got = full.transcribe(a, RATE), guarded.transcribe(a, RATE)
        assert got.guard_actions[:1] == ("full_window",)
        assert got.text == want.text and got.words == want.words
    # a partial is only a hint: never decoded twice
    assert "full_window" not in guarded.transcribe_partial(audio[0], RATE).guard_actions


def test_the_window_guard_off_or_a_confident_decode_decodes_once(files, segments):
    a = segments[0][0]
    off = WhisperLocal(threads=2, files=files, options=WhisperOptions(
        temperatures=(0.0,), encoder_window="trimmed", encoder_guard=False, encoder_guard_logprob=0.0))
    assert "full_window" not in off.transcribe(a, RATE).guard_actions
    lenient = WhisperLocal(threads=2, files=files, options=WhisperOptions(
        temperatures=(0.0,), encoder_window="trimmed", encoder_guard=True, encoder_guard_logprob=-10.0,
        compression_ratio_threshold=100.0, no_speech_threshold=1.0, log_prob_threshold=-10.0))
    r = lenient.transcribe(a, RATE)
    assert r.text and "full_window" not in r.guard_actions  # nothing doubtful: the trimmed decode stands
    # the full-window model never runs the guard
    full = WhisperLocal(threads=2, files=files, options=WhisperOptions(temperatures=(0.0,), encoder_guard_logprob=0.0))
    assert "full_window" not in full.transcribe(a, RATE).guard_actions


def test_the_batching_and_window_guard_settings_reach_the_local_model(monkeypatch):
    from stream_processor.models.asr.factory import build_local
    from stream_processor.models.asr.settings import AsrSettings

    monkeypatch.setenv("LUPITA_ASR_BATCH_MAX_WINDOWS", "6")
    monkeypatch.setenv("LUPITA_ASR_ENCODER_GUARD", "false")
    monkeypatch.setenv("LUPITA_ASR_ENCODER_GUARD_LOGPROB", "-0.6")
    o = build_local(AsrSettings(_env_file=None)).options
    assert (o.batch_max_windows, o.encoder_guard, o.encoder_guard_logprob) == (6, False, -0.6)
    with pytest.raises(ValueError, match="batch_max_windows"):
        WhisperOptions(batch_max_windows=0)
