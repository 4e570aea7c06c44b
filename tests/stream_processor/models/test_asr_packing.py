"""Packing several closed segments into one Whisper window (``WhisperLocal.transcribe_many``) and
the retry of a final that faster-whisper's own VAD filter emptied (#11 §4).

Real model, real espeak-ng telephone speech: three segments of one leg, each with its own
distinctive words and its own amount of leading silence, are decoded once. What is asserted holds
for any voice: every word comes back inside its own segment's speech (checked by time, never by
exact words), a distinctive word that is heard at all is heard only in its own segment, and a word
the decoder puts in the silence between two segments is dropped and counted, never given to one
of them.
"""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.synth import DEFAULT_VOICES, PERSON, synthesize_utterance
from stream_processor.models.asr.base import TranscriptSegment, Word
from stream_processor.models.asr.guards import normalize_text
from stream_processor.models.asr.whisper_local import WhisperLocal, WhisperOptions

RATE = 8000
# (text, its distinctive words, leading silence s): different lengths and offsets per segment
SEGMENTS = (
    ("Mi nieto Rodrigo vive en Guadalajara.", ("rodrigo", "guadalajara"), 0.3),
    ("Hoy compré tortillas y naranjas en el mercado.", ("tortillas", "naranjas", "mercado"), 1.2),
    ("El doctor me cambió la medicina del corazón.", ("doctor", "medicina", "corazon"), 0.6),
)
TAIL_S = 0.3
SLACK_S = 0.5  # Whisper word timings are good to a few hundred ms


def _speech(text: str) -> np.ndarray:
    return synthesize_utterance(text, RATE, DEFAULT_VOICES[PERSON])


@pytest.fixture(scope="module")
def model() -> WhisperLocal:
    return WhisperLocal(threads=2, options=WhisperOptions(pack_max_seconds=30.0, pack_gap_s=1.0))


@pytest.fixture(scope="module")
def segments() -> list[tuple[np.ndarray, float, float]]:
    """(int16 audio, speech start s, speech end s) per segment."""
    out = []
    for text, _, lead in SEGMENTS:
        speech = _speech(text)
        audio = np.concatenate([np.zeros(int(lead * RATE), np.int16), speech, np.zeros(int(TAIL_S * RATE), np.int16)])
        out.append((audio, lead, lead + speech.size / RATE))
    return out


@pytest.fixture(scope="module")
def packed(model, segments):
    return model.transcribe_many([(a, RATE) for a, _, _ in segments])


def test_each_packed_segment_gets_its_own_final(packed, segments):
    assert len(packed) == len(segments)
    for r, (audio, _, _) in zip(packed, segments):
        assert "packed" in r.guard_actions  # decoded in one shared window
        assert not r.is_partial and r.text, r.guard_actions
        assert r.audio_seconds == pytest.approx(audio.size / RATE, abs=1e-3)


def test_every_word_lies_inside_its_own_segments_speech(packed, segments):
    for r, (_, a, b) in zip(packed, segments):
        assert r.words
        for w in r.words:  # by its time midpoint (a first word's start absorbs some leading silence)
            assert a - SLACK_S <= (w.start + w.end) / 2 <= b + SLACK_S, (w, a, b)
            assert 0.0 <= w.start <= w.end <= r.audio_seconds
        starts = [w.start for w in r.words]
        assert starts == sorted(starts)


def test_a_distinctive_word_is_never_heard_in_another_segment(packed):
    heard = [f" {normalize_text(r.text)} " for r in packed]
    for k, (_, words, _) in enumerate(SEGMENTS):
        for word in words:
            for j, text in enumerate(heard):
                if j != k:
                    assert f" {word} " not in text, (word, k, j, text)


def test_packing_off_decodes_one_by_one(segments):
    solo = WhisperLocal(threads=2)  # pack_max_seconds 0: the default
    results = solo.transcribe_many([(a, RATE) for a, _, _ in segments[:2]])
    assert len(results) == 2 and all("packed" not in r.guard_actions for r in results)
    assert all(r.text for r in results)


def test_a_word_in_the_gap_is_dropped_and_counted_never_guessed(model, monkeypatch):
    """The split itself, on a decode whose words are given: parts of 2.0 s and 1.5 s with a 1.0 s
    gap lie at [0, 2.0] and [3.0, 4.5] of the window."""
    words = (Word("uno", 0.2, 0.6, 0.9), Word("dos", 1.5, 1.9, 0.9),   # part 0
             Word("perdida", 2.2, 2.6, 0.5),                            # midpoint 2.4: in the gap
             Word("tres", 3.1, 3.5, 0.9), Word("cuatro", 4.0, 4.4, 0.8))  # part 1
    seg = TranscriptSegment(text="uno dos perdida tres cuatro", start=0.2, end=4.4, words=words,
                            avg_logprob=-0.3, no_speech_prob=0.01, compression_ratio=1.2)
    monkeypatch.setattr(model, "_decode", lambda x, kwargs: ([seg], "es", False))
    loud = (0.1 * np.sin(np.arange(int(2.0 * 16000)) / 5)).astype(np.float32)
    r0, r1 = model._run_packed([loud, loud[: int(1.5 * 16000)]])
    assert [w.text for w in r0.words] == ["uno", "dos"] and r0.text == "uno dos"
    assert [w.text for w in r1.words] == ["tres", "cuatro"]
    assert [(w.start, w.end) for w in r1.words] == [(pytest.approx(0.1), pytest.approx(0.5)),
                                                   (pytest.approx(1.0), pytest.approx(1.4))]  # in its own time
    assert r0.guard_actions.count("pack_gap_word") == 1 and "pack_gap_word" not in r1.guard_actions
    assert "perdida" not in r0.text + r1.text


def test_segments_that_do_not_fit_one_window_go_to_the_next(segments):
    small = WhisperLocal(threads=2, options=WhisperOptions(pack_max_seconds=9.0, pack_gap_s=1.0))
    calls: list[int] = []
    inner = small._run_packed

    def spy(parts):
        calls.append(len(parts))
        return inner(parts)

    small._run_packed = spy  # type: ignore[method-assign]
    results = small.transcribe_many([(a, RATE) for a, _, _ in segments])
    assert len(results) == 3 and all(r.text for r in results)
    # no window is longer than 9 s: every segment here is 3-5 s, so at most two share one
    assert all(n <= 2 for n in calls)


def test_a_voiced_final_decoded_to_nothing_is_decoded_again(model, segments, monkeypatch):
    """The vad stage called the audio speech; when faster-whisper gives no segment at all (its
    filter kept nothing, or its no-speech rule skipped the window), the final is decoded again
    without both instead of coming out empty (#11 §4)."""
    seen: list[tuple] = []
    inner = model._decode

    def decode(x, kwargs):
        seen.append((kwargs["vad_filter"], kwargs["no_speech_threshold"]))
        if kwargs["vad_filter"]:
            return [], "es", False  # what faster-whisper gives when it drops the window
        return inner(x, kwargs)

    monkeypatch.setattr(model, "_decode", decode)
    audio = segments[0][0].astype(np.float32) / 32768
    r = model.transcribe(audio, RATE)
    assert seen == [(True, 0.6), (False, None)]
    assert r.text and "empty_retry" in r.guard_actions
    seen.clear()
    # a partial is only a hint: no second decode
    assert model.transcribe_partial(audio, RATE).is_empty
    assert seen == [(True, 0.6)]


def test_line_noise_decoded_to_nothing_is_not_decoded_again(model, monkeypatch):
    from loadgen.synth import band_limit

    rng = np.random.default_rng(5)
    white = np.clip(rng.normal(0, 1, RATE * 3) * 8000, -32768, 32767).astype(np.int16)
    noise = band_limit(white, RATE, RATE).astype(np.float32) / 32768 * 0.05
    seen: list[bool] = []
    monkeypatch.setattr(model, "_decode", lambda x, kwargs: (seen.append(kwargs["vad_filter"]), ([], "es", False))[1])
    r = model.transcribe(noise, RATE)
    assert r.is_empty and seen == [True] and "empty_retry" not in r.guard_actions


def test_the_packing_and_fallback_settings_reach_the_local_model(monkeypatch):
    from stream_processor.models.asr.factory import build_local
    from stream_processor.models.asr.settings import AsrSettings

    monkeypatch.setenv("LUPITA_ASR_PACK_MAX_SECONDS", "24")
    monkeypatch.setenv("LUPITA_ASR_PACK_GAP_SECONDS", "1.5")
    monkeypatch.setenv("LUPITA_ASR_BEST_OF", "2")
    monkeypatch.setenv("LUPITA_ASR_TEMPERATURES", "[0.0, 0.6]")
    monkeypatch.setenv("LUPITA_ASR_EMPTY_RETRY_MIN_SPEECH_SECONDS", "0")
    o = build_local(AsrSettings(_env_file=None)).options
    assert (o.pack_max_seconds, o.pack_gap_s, o.best_of, o.temperatures) == (24.0, 1.5, 2, (0.0, 0.6))
    assert o.empty_retry_min_speech_s == 0.0
    with pytest.raises(ValueError, match="pack_gap_s"):
        WhisperOptions(pack_gap_s=0.0)
    with pytest.raises(ValueError, match="best_of"):
        WhisperOptions(best_of=0)


def test_a_packed_window_the_no_speech_rule_dropped_is_decoded_segment_by_segment(model, segments, monkeypatch):
    """Whisper's no-speech rule judges the whole packed window: when the packed decode gives
    nothing, each segment with Silero speech is decoded again on its own, never left empty."""
    inner = model._decode
    packed_calls: list[int] = []

    def decode(x, kwargs):
        if not kwargs["vad_filter"] and kwargs["no_speech_threshold"] is not None:  # the packed decode
            packed_calls.append(x.size)
            return [], "es", False
        return inner(x, kwargs)

    monkeypatch.setattr(model, "_decode", decode)
    results = model.transcribe_many([(a, RATE) for a, _, _ in segments[:2]])
    assert len(packed_calls) == 1
    for r in results:
        assert r.guard_actions[:2] == ("packed", "pack_retry") and r.text, r.guard_actions


def test_a_final_whose_every_segment_the_silence_guard_removes_is_decoded_again(model, segments, monkeypatch):
    """With the temperature fallback threshold below the silence rule's
    (LUPITA_ASR_TEMPERATURE_FALLBACK_LOGPROB_THRESHOLD), faster-whisper no longer skips a
    "no speech" window itself: it returns its text and the silence guard removes it. A voiced final
    left empty that way is decoded again, as one faster-whisper skipped is."""
    low = WhisperLocal.__new__(WhisperLocal)
    low.__dict__.update(model.__dict__)
    low.options = WhisperOptions(pack_max_seconds=30.0, fallback_log_prob_threshold=-10.0)
    assert low._decode_kwargs(False)["log_prob_threshold"] == -10.0  # what faster-whisper is given
    assert low.guard.logprob_threshold == -1.0  # the silence rule keeps its own
    seen: list[tuple] = []
    inner = model._decode

    def decode(x, kwargs):
        seen.append((kwargs["vad_filter"], kwargs["no_speech_threshold"]))
        if kwargs["vad_filter"]:  # faster-whisper's text of a window it calls silence
            return [TranscriptSegment("Gracias.", 0.0, 1.0, (Word("Gracias.", 0.0, 1.0, 0.2),),
                                      avg_logprob=-2.5, no_speech_prob=0.9, compression_ratio=1.0)], "es", False
        return inner(x, kwargs)

    monkeypatch.setattr(low, "_decode", decode)
    r = low.transcribe(segments[0][0].astype(np.float32) / 32768, RATE)
    assert seen == [(True, 0.6), (False, None)]
    assert r.text and "empty_retry" in r.guard_actions


def test_text_the_silence_guard_keeps_is_not_decoded_again(model, segments, monkeypatch):
    seen: list[bool] = []

    def decode(x, kwargs):  # confident text, although Whisper's no-speech probability is high
        seen.append(kwargs["vad_filter"])
        return [TranscriptSegment("Buenos días.", 0.3, 1.5, (Word("Buenos", 0.3, 0.8, 0.9), Word("días.", 0.8, 1.5, 0.9)),
                                  avg_logprob=-0.3, no_speech_prob=0.9, compression_ratio=1.0)], "es", False

    monkeypatch.setattr(model, "_decode", decode)
    r = model.transcribe(segments[0][0].astype(np.float32) / 32768, RATE)
    assert r.text == "Buenos días." and seen == [True] and "empty_retry" not in r.guard_actions


def test_the_temperature_fallback_threshold_setting_reaches_the_local_model(monkeypatch):
    from stream_processor.models.asr.factory import build_local, guard_config
    from stream_processor.models.asr.settings import AsrSettings

    monkeypatch.delenv("LUPITA_ASR_TEMPERATURE_FALLBACK_LOGPROB_THRESHOLD", raising=False)
    s = AsrSettings(_env_file=None)
    o = build_local(s).options  # the default: the fallback on repetition loops only
    assert (o.fallback_log_prob_threshold, o.log_prob_threshold, o.decode_log_prob_threshold) == (-10.0, -1.0, -10.0)
    assert guard_config(s).logprob_threshold == -1.0  # the silence rule stays where it was
    monkeypatch.setenv("LUPITA_ASR_TEMPERATURE_FALLBACK_LOGPROB_THRESHOLD", "-1.0")  # Whisper's own
    assert build_local(AsrSettings(_env_file=None)).options.decode_log_prob_threshold == -1.0
    assert WhisperOptions().decode_log_prob_threshold == -1.0  # the plain core unset: log_prob_threshold
    monkeypatch.setenv("LUPITA_ASR_TEMPERATURE_FALLBACK_LOGPROB_THRESHOLD", "0.5")
    with pytest.raises(ValueError, match="temperature_fallback_logprob_threshold"):
        AsrSettings(_env_file=None)
    with pytest.raises(ValueError, match="fallback_log_prob_threshold must be <= 0"):
        WhisperOptions(fallback_log_prob_threshold=0.5)


def test_another_decoding_shares_the_loaded_model(model):
    """``with_decoding`` (Lupita's leg, LUPITA_TRANSCRIBER_AGENT_*): another beam and ladder for
    finals on the same weights and workers; the original is untouched."""
    other = model.with_decoding(beam_size=1, temperatures=(0.0,))
    assert other is not model and other._model is model._model
    assert (other._decode_kwargs(False)["beam_size"], other._decode_kwargs(False)["temperature"]) == (1, [0.0])
    assert (model._decode_kwargs(False)["beam_size"], model._decode_kwargs(False)["temperature"]) == (5, [0.0, 0.5])
    assert other.options.pack_max_seconds == model.options.pack_max_seconds
    assert model.with_decoding() is model
    r = other.transcribe(_speech(SEGMENTS[0][0]).astype(np.float32) / 32768, RATE)
    assert r.text and r.words
