"""Pure logic of the ASR package: guards, audio checks, resampling, retry policy, settings.

No model and no server: each test runs in milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import SecretStr, ValidationError

from stream_processor.models.asr.base import (
    AsrBackendError,
    AudioInputError,
    RetryPolicy,
    TranscriptResult,
    TranscriptSegment,
    Word,
    as_mono_float32,
    encode_wav,
    parse_retry_after,
    resample,
    sanitize_words,
)
from stream_processor.models.asr.guards import (
    HALLUCINATIONS_ES,
    GuardConfig,
    collapse_repetitions,
    compression_ratio,
    guard_segment,
    guard_segments,
    is_silence,
    normalize_text,
)
from stream_processor.models.asr.settings import AsrSettings

CFG = GuardConfig()


def seg(text: str, *, words: bool = True, prob: float = 0.9, no_speech: float | None = 0.05,
        logprob: float | None = -0.3) -> TranscriptSegment:
    """A segment whose words are spaced 0.3 s apart (or no words when ``words`` is False)."""
    toks = text.split()
    ws = tuple(Word(t, 0.3 * i, 0.3 * i + 0.25, prob) for i, t in enumerate(toks)) if words else ()
    return TranscriptSegment(text, 0.0, 0.3 * len(toks), ws, avg_logprob=logprob, no_speech_prob=no_speech)


# --- text helpers ------------------------------------------------------------------------------


def test_normalize_text_drops_case_accents_and_punctuation():
    assert normalize_text("¡Buenos DÍAS, señora! ¿Cómo está?") == "buenos dias senora como esta"
    assert normalize_text("Amara.org") == "amara org"


def test_compression_ratio_is_high_only_for_repetitive_text():
    assert compression_ratio("Hola, buenos días. Tengo frío.") < 1.5
    assert compression_ratio("mira, " * 40) > 2.4


# --- 1. silence --------------------------------------------------------------------------------


def test_silence_rule_needs_high_no_speech_and_low_logprob_together():
    assert is_silence(seg("Gracias.", no_speech=0.9, logprob=-1.4), CFG)
    assert not is_silence(seg("Gracias.", no_speech=0.9, logprob=-0.2), CFG)  # confident speech
    assert not is_silence(seg("Gracias.", no_speech=0.2, logprob=-1.4), CFG)  # speech, poorly decoded
    out, actions = guard_segment(seg("Hasta luego.", no_speech=0.95, logprob=-1.2), CFG)
    assert out is None and actions == ["silence"]


# --- 2. known hallucinations -------------------------------------------------------------------


def test_amara_subtitle_credit_is_removed_alone_and_inside_speech():
    out, actions = guard_segment(seg("Subtítulos realizados por la comunidad de Amara.org"), CFG)
    assert out is None
    assert actions == ["hallucination:subtitulos realizados por la comunidad de amara org"]
    out, _ = guard_segment(seg("Sí, ya me tomé la pastilla. Subtítulos realizados por la comunidad de Amara.org"), CFG)
    assert out is not None and out.text == "Sí, ya me tomé la pastilla."
    assert [w.text for w in out.words][-1] == "pastilla."  # word timings follow the text


@pytest.mark.parametrize("phrase", [
    "¡Gracias por ver el video!", "Suscríbete al canal.", "Nos vemos en el próximo video."])
def test_catalogue_phrases_are_removed(phrase):
    out, actions = guard_segment(seg(phrase, words=False), CFG)
    assert out is None and actions and actions[0].startswith("hallucination:")


def test_catalogue_is_data_with_the_known_phrases():
    norm = {normalize_text(p) for p in HALLUCINATIONS_ES}
    assert "subtitulos realizados por la comunidad de amara org" in norm
    assert "gracias por ver el video" in norm


def test_lone_gracias_is_dropped_only_when_the_decoder_doubted_it():
    out, actions = guard_segment(seg("Gracias.", prob=0.2), CFG)
    assert out is None and actions == ["hallucination_alone:gracias"]
    kept, actions = guard_segment(seg("Gracias.", prob=0.95, no_speech=0.02), CFG)
    assert kept is not None and kept.text == "Gracias." and actions == []
    # part of a real sentence: never touched
    kept, _ = guard_segment(seg("Gracias, Lupita, que Dios te bendiga.", prob=0.3), CFG)
    assert kept is not None and kept.text.startswith("Gracias")


def test_punctuation_only_segment_is_dropped():
    out, actions = guard_segment(seg("...", words=False), CFG)
    assert out is None and actions == ["no_words:..."]


# --- 3. repetition loops -----------------------------------------------------------------------


def test_unigram_loop_is_collapsed_keeping_first_timings():
    s = seg("Oda, dueno, mira, mira, mira, mira, mira, mira, mira...")
    out, actions = guard_segment(s, CFG)
    assert out is not None
    assert out.text == "Oda, dueno, mira,"
    assert actions == ["repetition:mirax7"]
    assert out.words[-1].start == s.words[2].start


def test_bigram_loop_is_collapsed_and_short_repeats_are_kept():
    out, actions = guard_segment(seg("me duele me duele me duele me duele me duele la rodilla"), CFG)
    assert out is not None and out.text == "me duele la rodilla" and actions == ["repetition:me duelex5"]
    kept, actions = guard_segment(seg("no, no, no, ya me la tomé"), CFG)  # 3 times = k: kept
    assert kept is not None and kept.text == "no, no, no, ya me la tomé" and actions == []


def test_collapse_works_on_text_without_word_timings():
    toks = [Word(t, 0, 0) for t in "sí sí sí sí sí sí claro".split()]
    out, actions = collapse_repetitions(toks, max_ngram=6, max_repeats=3)
    assert [w.text for w in out] == ["sí", "claro"] and actions == ["repetition:six6"]


def test_degenerate_text_left_after_collapse_is_dropped_by_compression_ratio():
    # a long loop with period 7 > max_ngram (6) escapes the n-gram rule; its compression ratio does not
    text = " ".join(["uno dos tres cuatro cinco seis siete"] * 12)
    out, actions = guard_segment(seg(text), CFG)
    assert out is None and actions[-1] == "compression_ratio>2.4"


def test_guard_segments_keeps_order_and_reports_every_action():
    kept, actions = guard_segments([seg("Hola, buenos días."), seg("Amara.org", no_speech=0.9, logprob=-1.5),
                                    seg("Tengo frío.")], CFG)
    assert [s.text for s in kept] == ["Hola, buenos días.", "Tengo frío."]
    assert actions == ("silence",)


# --- results and words -------------------------------------------------------------------------


def test_sanitize_words_clamps_into_audio_and_makes_timings_monotonic():
    words = [Word(" hola", -0.2, 0.3, 1.2), Word(" buenos", 0.25, 0.6, 0.9), Word(" ", 0.6, 0.7, 0.9),
             Word(" días", 0.7, 9.0, 0.8)]
    out = sanitize_words(words, duration_s=2.0)
    assert [w.text for w in out] == ["hola", "buenos", "días"]
    assert out[0].start == 0.0 and out[0].probability == 1.0
    assert out[1].start == 0.3  # not before the previous word's end
    assert out[2].end == 2.0
    assert all(a.end <= b.start for a, b in zip(out, out[1:]))


def test_result_text_confidence_and_shift():
    r = TranscriptResult((seg("hola buenos días", prob=0.8), seg("tengo frío", prob=0.6)), "es", False,
                         "local", "whisper-base", 2.0)
    assert r.text == "hola buenos días tengo frío"
    assert r.confidence == pytest.approx((3 * 0.8 + 2 * 0.6) / 5)
    moved = r.shifted(10.0)
    assert moved.words[0].start == pytest.approx(10.0) and moved.segments[1].end == pytest.approx(10.6)
    no_words = TranscriptSegment("hola", 0, 1, (), avg_logprob=math.log(0.5))
    assert no_words.confidence == pytest.approx(0.5)


# --- audio checks and resampling ---------------------------------------------------------------


@pytest.mark.parametrize("pcm, rate, message", [
    (np.zeros((100, 2), np.float32), 8000, "mono"),
    (np.array([0.0, np.nan], np.float32), 8000, "NaN"),
    (np.zeros(10, np.int32), 8000, "dtype int32"),
    (np.full(10, 300.0, np.float32), 8000, "must lie in"),
    (np.zeros(10, np.float32), 0, "sample_rate"),
    (np.zeros(10, np.float32), 8000.0, "sample_rate"),
    ([0.0, 0.1], 8000, "numpy array"),
])
def test_bad_audio_is_refused_with_a_precise_error(pcm, rate, message):
    with pytest.raises(AudioInputError, match=message):
        as_mono_float32(pcm, rate)


def test_int16_and_column_audio_are_accepted():
    x = as_mono_float32(np.array([[16384], [-32768]], np.int16), 8000)
    assert x.dtype == np.float32 and x.tolist() == [0.5, -1.0]


def test_resample_8k_to_16k_preserves_a_tone_and_the_length():
    t8 = np.arange(8000) / 8000
    x = np.sin(2 * np.pi * 1000 * t8).astype(np.float32)
    y = resample(x, 8000, 16000)
    t16 = np.arange(16000) / 16000
    assert y.shape == (16000,)
    assert np.max(np.abs(y[200:-200] - np.sin(2 * np.pi * 1000 * t16[200:-200]))) < 1e-3


def test_resample_16k_to_8k_removes_what_would_alias():
    t16 = np.arange(16000) / 16000
    above = resample(np.sin(2 * np.pi * 6000 * t16).astype(np.float32), 16000, 8000)
    below = resample(np.sin(2 * np.pi * 3000 * t16).astype(np.float32), 16000, 8000)
    assert np.max(np.abs(above[100:-100])) < 0.01
    assert np.max(np.abs(below[100:-100])) == pytest.approx(1.0, abs=0.01)


def test_encode_wav_is_mono_16bit_at_the_given_rate():
    import io
    import wave

    data = encode_wav(np.array([0.0, 0.5, -0.5], np.float32), 8000)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 8000, 3)


# --- retries -----------------------------------------------------------------------------------


def test_parse_retry_after_seconds_ms_and_http_date():
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


def test_retry_policy_retries_retryable_errors_then_succeeds():
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=4, base_delay_s=0.5, jitter=0.0, sleep=sleeps.append)
    calls = iter([AsrBackendError("x", "busy", status=429, retryable=True, retry_after_s=3.0),
                  AsrBackendError("x", "oops", status=503, retryable=True), "ok"])

    def fn():
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert policy.run(fn, backend="x") == "ok"
    assert sleeps == [3.0, 1.0]  # Retry-After obeyed, then exponential backoff (0.5 * 2)


def test_retry_policy_gives_up_and_never_retries_non_retryable():
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=3, jitter=0.0, sleep=sleeps.append)
    n = {"calls": 0}

    def failing(exc):
        def fn():
            n["calls"] += 1
            raise exc
        return fn

    with pytest.raises(AsrBackendError, match="HTTP 500"):
        policy.run(failing(AsrBackendError("x", "down", status=500, retryable=True)), backend="x")
    assert n["calls"] == 3 and len(sleeps) == 2
    n["calls"] = 0
    with pytest.raises(AsrBackendError, match="HTTP 400"):
        policy.run(failing(AsrBackendError("x", "bad", status=400)), backend="x")
    assert n["calls"] == 1
    n["calls"] = 0
    with pytest.raises(AsrBackendError):  # asks for longer than max_retry_after_s: not waited for
        policy.run(failing(AsrBackendError("x", "later", status=429, retryable=True, retry_after_s=600)), backend="x")
    assert n["calls"] == 1


# --- settings ----------------------------------------------------------------------------------


def test_settings_default_to_the_local_backend(monkeypatch):
    for key in ("LUPITA_ASR_BACKEND", "LUPITA_OPENAI_API_KEY", "LUPITA_DEEPGRAM_API_KEY", "LUPITA_ASR_TEMPERATURES",
                "LUPITA_ASR_BEAM_SIZE"):
        monkeypatch.delenv(key, raising=False)
    s = AsrSettings()
    assert (s.asr_backend, s.asr_language, s.asr_compute_type, s.asr_threads) == ("local", "es", "int8", 1)
    # one fallback step (no fallback measured and not adopted: bench/README.md, "Session 10"), beam 5
    assert (s.asr_temperatures, s.asr_beam_size) == ((0.0, 0.5), 5)


def test_cloud_backend_without_key_fails_at_start(monkeypatch):
    monkeypatch.delenv("LUPITA_OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("LUPITA_ASR_BACKEND", "openai")
    with pytest.raises(ValidationError, match="LUPITA_OPENAI_API_KEY"):
        AsrSettings()


def test_api_key_is_secret_in_settings_repr(monkeypatch):
    monkeypatch.setenv("LUPITA_ASR_BACKEND", "deepgram")
    monkeypatch.setenv("LUPITA_DEEPGRAM_API_KEY", "dg-very-secret-key")
    monkeypatch.setenv("LUPITA_ASR_TEMPERATURES", "[0.0, 0.4]")  # not the default [0.0, 0.5]
    s = AsrSettings()
    assert s.deepgram_api_key == SecretStr("dg-very-secret-key")
    assert s.asr_temperatures == (0.0, 0.4)
    assert "dg-very-secret-key" not in repr(s) and "dg-very-secret-key" not in str(s.model_dump())


def test_settings_errors_do_not_print_api_keys(monkeypatch):
    monkeypatch.setenv("LUPITA_ASR_BACKEND", "deepgram")
    monkeypatch.delenv("LUPITA_DEEPGRAM_API_KEY", raising=False)
    monkeypatch.setenv("LUPITA_OPENAI_API_KEY", "sk-must-not-appear")
    with pytest.raises(ValidationError) as err:
        AsrSettings()
    assert "LUPITA_DEEPGRAM_API_KEY" in str(err.value)
    assert "sk-must-not-appear" not in str(err.value)


def test_bad_temperature_ladder_is_refused(monkeypatch):
    monkeypatch.setenv("LUPITA_ASR_TEMPERATURES", "[0.8, 0.2]")
    with pytest.raises(ValidationError, match="LUPITA_ASR_TEMPERATURES"):
        AsrSettings()
