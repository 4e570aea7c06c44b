"""Speech synthesis for simulated calls: real espeak-ng + sox, checked on the samples."""

from __future__ import annotations

import numpy as np
import pytest

from lupita.audio import MULAW_TO_PCM16
from loadgen import synth
from loadgen.synth import LUPITA, PERSON, Turn

SHORT_SCRIPT = (
    Turn(LUPITA, "Buenos días, doña Carmen. ¿Cómo amaneció?", 0.5),
    Turn(PERSON, "Bien, gracias a Dios.", 0.3),
    Turn(LUPITA, "Hasta luego.", 0.2),
)


def band_energy_fraction(x: np.ndarray, rate: int, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum())


@pytest.mark.parametrize("rate", [8000, 16000])
def test_utterance_is_int16_at_the_requested_rate_with_plausible_duration(rate, synth_cache):
    text = "Buenos días, doña Carmen. ¿Cómo amaneció hoy?"
    x = synth.synthesize_utterance(text, rate, cache_dir=synth_cache)
    assert x.dtype == np.int16 and x.ndim == 1
    seconds = len(x) / rate
    assert 1.0 < seconds < 6.0, seconds  # ~8 words at 150 wpm
    peak = np.abs(x.astype(np.int32)).max()
    assert 0.4 * 32768 < peak <= 0.55 * 32768  # normalised to -6 dBFS


def test_same_text_at_16k_has_twice_the_samples_of_8k(synth_cache):
    a = synth.synthesize_utterance("Tómese la pastilla de la presión.", 8000, cache_dir=synth_cache)
    b = synth.synthesize_utterance("Tómese la pastilla de la presión.", 16000, cache_dir=synth_cache)
    assert abs(len(b) - 2 * len(a)) <= 4


@pytest.mark.parametrize("rate", [8000, 16000])
def test_speech_is_band_limited_to_the_telephone_band(rate, synth_cache):
    x = synth.synthesize_utterance("Me duelen las rodillas cuando hace frío en Oaxaca.", rate, cache_dir=synth_cache)
    assert band_energy_fraction(x, rate, 300, 3400) > 0.97
    assert band_energy_fraction(x, rate, 0, 200) < 0.01
    if rate == 16000:  # espeak-ng speaks up to 11 kHz: the filter must have removed it
        assert band_energy_fraction(x, rate, 3700, 8000) < 0.005


def test_dialogue_layout_left_is_lupita_right_is_person_never_both(synth_cache):
    rate = 8000
    stereo = synth.synthesize_dialogue(SHORT_SCRIPT, rate, lead_in_s=0.2, cache_dir=synth_cache)
    assert stereo.dtype == np.int16 and stereo.shape[1] == 2
    left, right = stereo[:, 0], stereo[:, 1]
    # each leg is exactly silent while the other talks
    assert np.all((left == 0) | (right == 0))
    assert np.count_nonzero(left) > 0.5 * rate and np.count_nonzero(right) > 0.3 * rate
    # duration = lead-in + every utterance + every pause, and turn order is kept
    parts = [synth.synthesize_utterance(t.text, rate, synth.DEFAULT_VOICES[t.leg], cache_dir=synth_cache)
             for t in SHORT_SCRIPT]
    expected = int(0.2 * rate) + sum(len(p) for p in parts) + int(round((0.5 + 0.3 + 0.2) * rate))
    assert len(stereo) == expected
    first_left, first_right = np.flatnonzero(left)[0], np.flatnonzero(right)[0]
    assert first_left >= int(0.2 * rate) and first_left < first_right
    # the person's turn sits between Lupita's two turns, in place
    start_person = int(0.2 * rate) + len(parts[0]) + int(0.5 * rate)
    np.testing.assert_array_equal(right[start_person : start_person + len(parts[1])], parts[1])
    assert not right[:start_person].any() and not right[start_person + len(parts[1]) :].any()


def test_default_script_is_a_spanish_check_in_call_of_about_a_minute_or_more(synth_cache):
    legs = {t.leg for t in synth.DEFAULT_SCRIPT}
    assert legs == {LUPITA, PERSON}
    text = " ".join(t.text for t in synth.DEFAULT_SCRIPT).lower()
    for word in ("buenos días", "pastilla", "oaxaca", "hijo", "hasta luego"):
        assert word in text
    stereo = synth.synthesize_dialogue(sample_rate=8000, cache_dir=synth_cache)
    assert 45 < len(stereo) / 8000 < 180
    assert np.all((stereo[:, 0] == 0) | (stereo[:, 1] == 0))


def test_noise_floor_is_at_the_requested_level_and_band_limited(synth_cache):
    rate = 8000
    clean = synth.synthesize_dialogue(SHORT_SCRIPT, rate, cache_dir=synth_cache)
    noisy = synth.synthesize_dialogue(SHORT_SCRIPT, rate, noise_dbfs=-50, seed=1, cache_dir=synth_cache)
    assert noisy.shape == clean.shape
    silent_right = clean[:, 1] == 0
    noise = (noisy[:, 1].astype(np.float64) - clean[:, 1])[silent_right]
    level_dbfs = 20 * np.log10(np.sqrt(np.mean(noise**2)) / 32768)
    assert -53 < level_dbfs < -47
    assert band_energy_fraction(noise, rate, 250, 3500) > 0.95
    # the two legs get independent noise
    assert not np.array_equal(noisy[:, 0] - clean[:, 0], noisy[:, 1] - clean[:, 1])


def test_mulaw_option_leaves_only_g711_code_values(synth_cache):
    stereo = synth.synthesize_dialogue(SHORT_SCRIPT, 8000, mulaw=True, cache_dir=synth_cache)
    allowed = set(MULAW_TO_PCM16.tolist())
    assert set(np.unique(stereo).tolist()) <= allowed
    clean = synth.synthesize_dialogue(SHORT_SCRIPT, 8000, cache_dir=synth_cache)
    assert not np.array_equal(stereo, clean)


def test_utterances_are_cached_in_a_self_ignoring_folder(tmp_path):
    cache = tmp_path / "cache"
    first = synth.synthesize_utterance("Que Dios te bendiga.", 8000, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert ".gitignore" in files and "*" in (cache / ".gitignore").read_text().splitlines()
    pcm = [f for f in files if f.endswith(".pcm")]
    assert len(pcm) == 1
    # a cache hit returns what is stored (prove it is read: alter the stored samples)
    (cache / pcm[0]).write_bytes(np.full(10, 7, dtype="<i2").tobytes())
    again = synth.synthesize_utterance("Que Dios te bendiga.", 8000, cache_dir=cache)
    assert again.tolist() == [7] * 10 and len(first) > 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"turns": [("abuela", "hola", 0.1)]}, "unknown leg"),
        ({"turns": []}, "at least one turn"),
        ({"turns": [(LUPITA, "hola", -1.0)]}, "pause_after_s"),
        ({"turns": SHORT_SCRIPT, "sample_rate": 44100}, "sample rate"),
        ({"turns": [(LUPITA, "   ", 0.1)]}, "empty text"),
    ],
)
def test_bad_dialogue_input_is_refused_precisely(kwargs, message, synth_cache):
    with pytest.raises(ValueError, match=message):
        synth.synthesize_dialogue(**kwargs, cache_dir=synth_cache)
