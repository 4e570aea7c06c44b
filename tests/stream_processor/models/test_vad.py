"""Streaming batched Silero VAD: real model (onnxruntime), real synthetic Spanish speech (espeak-ng + sox)."""

from __future__ import annotations

import ast
import json
import math

import numpy as np
import pytest

from loadgen import synth
from stream_processor.models.vad import (
    CONTEXT_SAMPLES,
    INSTALL_HINT,
    WINDOW_SAMPLES,
    BatchedVad,
    Segmenter,
    SileroModel,
    VadSettings,
    model_path,
)

RATES = (8000, 16000)

# A known script for one leg: silence, then utterances separated by known gaps (seconds).
LEAD_IN_S = 0.5
SCRIPT = (
    ("Buenos días doña Carmen", 0.7),
    ("Me duelen mucho las rodillas", 1.0),
    ("Ya me tomé la pastilla de la presión", 0.6),
    ("Hasta luego Lupita", 0.8),
)
# A sample belongs to speech when |x| exceeds -40 dBFS (1 % of full scale).
SPEECH_FLOOR = 0.01 * 32768


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel(intra_op_num_threads=1)


@pytest.fixture(scope="module")
def synth_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("vad-synth-cache")


def script_audio(rate: int, cache) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The script as int16 mono and its true speech regions in seconds (from the samples)."""
    pieces = [np.zeros(int(LEAD_IN_S * rate), np.int16)]
    pos = len(pieces[0])
    truth = []
    for text, gap_s in SCRIPT:
        speech = synth.synthesize_utterance(text, rate, synth.DEFAULT_VOICES[synth.PERSON], cache_dir=cache)
        loud = np.nonzero(np.abs(speech.astype(np.int32)) > SPEECH_FLOOR)[0]
        truth.append(((pos + loud[0]) / rate, (pos + loud[-1] + 1) / rate))
        gap = np.zeros(int(gap_s * rate), np.int16)
        pieces += [speech, gap]
        pos += len(speech) + len(gap)
    return np.concatenate(pieces), truth


def run_stream(model, samples, rate, settings=VadSettings(), piece=800):
    """One stream fed in pieces of ``piece`` samples, drained after each, then finished."""
    vad = BatchedVad(model, settings)
    results = []
    for i in range(0, len(samples), piece):
        vad.feed("s", samples[i : i + piece], rate)
        results += vad.drain()
    results += vad.finish("s")
    return results


def ends(results) -> list[tuple[int, int]]:
    return [(e.start_sample, e.end_sample) for r in results for e in r.events if e.kind == "end"]


def events_of(results) -> list:
    return [e for r in results for e in r.events]


# --- the model --------------------------------------------------------------------------------


def test_model_is_the_onnx_file_of_the_installed_silero_vad_package(model):
    assert model_path().name == "silero_vad.onnx" and model_path().is_file()
    assert model.path == model_path()
    rate = 8000
    x = np.zeros((3, CONTEXT_SAMPLES[rate] + WINDOW_SAMPLES[rate]), np.float32)
    probs, state = model.run(x, np.zeros((2, 3, 128), np.float32), rate)
    assert probs.shape == (3,) and state.shape == (2, 3, 128)
    assert np.all(probs < 0.1)  # zeros are not speech


def test_missing_model_file_names_the_install_command(tmp_path):
    with pytest.raises(RuntimeError, match="pip install --no-deps silero-vad=="):
        SileroModel(tmp_path / "nope.onnx")
    assert "--no-deps" in INSTALL_HINT


# --- accuracy on a known script ----------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
def test_speech_regions_of_a_known_script_are_found_within_100_ms(model, synth_cache, rate):
    audio, truth = script_audio(rate, synth_cache)
    found = [(a / rate, b / rate) for a, b in ends(run_stream(model, audio, rate, VadSettings(vad_speech_pad_ms=0)))]
    assert len(found) == len(truth), (found, truth)
    for (start, end), (true_start, true_end) in zip(found, truth):
        assert abs(start - true_start) <= 0.100, (start, true_start)
        # Silero's probability decays over ~100-150 ms after the last phoneme (its release
        # latency, measured 0-151 ms on these voices), so the end is late by up to that.
        assert -0.100 <= end - true_end <= 0.160, (end, true_end)


@pytest.mark.parametrize("rate", RATES)
def test_padded_segments_contain_all_speech_and_no_gap_is_bridged(model, synth_cache, rate):
    audio, truth = script_audio(rate, synth_cache)
    found = [(a / rate, b / rate) for a, b in ends(run_stream(model, audio, rate))]  # default padding 100 ms
    assert len(found) == len(truth)
    for (start, end), (true_start, true_end) in zip(found, truth):
        assert start <= true_start and end >= true_end, ((start, end), (true_start, true_end))
        assert true_start - start <= 0.200 and end - true_end <= 0.300


@pytest.mark.parametrize("rate", RATES)
def test_start_event_comes_while_speaking_and_before_its_end(model, synth_cache, rate):
    audio, _ = script_audio(rate, synth_cache)
    results = run_stream(model, audio, rate)
    when: dict[tuple[str, int], int] = {}
    for r in results:
        for e in r.events:
            when[(e.kind, e.seq)] = r.start_sample
    seqs = sorted({seq for _, seq in when})
    assert seqs == list(range(len(SCRIPT)))
    for seq in seqs:
        end_event = next(e for e in events_of(results) if e.kind == "end" and e.seq == seq)
        # emitted about min_speech_ms after speech began, long before the segment ends
        assert when[("start", seq)] < end_event.end_sample - rate // 2
        assert when[("start", seq)] < when[("end", seq)]


def test_silence_and_noise_only_streams_yield_no_segment(model):
    rng = np.random.default_rng(7)
    for rate in RATES:
        streams = {"digital-silence": np.zeros(5 * rate, np.int16)}
        white = np.clip(rng.normal(0, 1, 5 * rate) * 8000, -32768, 32767).astype(np.int16)
        band = synth.band_limit(white, rate, rate).astype(np.float64)
        for dbfs in (-45, -25):
            scaled = band * (32768 * 10 ** (dbfs / 20) / np.sqrt(np.mean(band**2)))
            streams[f"noise{dbfs}"] = np.clip(np.round(scaled), -32768, 32767).astype(np.int16)
        vad = BatchedVad(model)
        for sid, x in streams.items():
            vad.feed(sid, x, rate)
        results = vad.drain()
        for sid in streams:
            results += vad.finish(sid)
        assert len(results) >= 3 * (5 * rate // WINDOW_SAMPLES[rate])
        assert events_of(results) == []


# --- batching ---------------------------------------------------------------------------------


def test_batched_results_equal_single_stream_results(model, synth_cache):
    """Streams of different lengths and both rates in one BatchedVad, fed in uneven pieces."""
    rng = np.random.default_rng(3)
    sources = {}
    for rate in RATES:
        audio, _ = script_audio(rate, synth_cache)
        for k in range(3):
            cut = int(len(audio) * (0.35 + 0.3 * k))
            sources[f"call{k}-{rate}:person"] = (rate, np.roll(audio, 1000 * k)[:cut])

    single = {sid: run_stream(model, x, rate, piece=len(x)) for sid, (rate, x) in sources.items()}

    vad = BatchedVad(model)
    batched: dict[str, list] = {sid: [] for sid in sources}
    offsets = dict.fromkeys(sources, 0)
    batch_sizes = []
    while any(offsets[sid] < len(x) for sid, (_, x) in sources.items()):
        for sid, (rate, x) in sources.items():
            n = int(rng.integers(1, 3 * WINDOW_SAMPLES[rate]))
            vad.feed(sid, x[offsets[sid] : offsets[sid] + n], rate)  # an empty piece once done
            offsets[sid] += n
        step = vad.step()
        batch_sizes.append(len(step))
        for r in step:
            batched[r.stream_id].append(r)
    for r in vad.drain():
        batched[r.stream_id].append(r)
    for sid in sources:
        batched[sid] += vad.finish(sid)

    assert max(batch_sizes) == len(sources)  # really batched: every stream in one step at times
    for sid in sources:
        a = np.array([r.probability for r in single[sid]])
        b = np.array([r.probability for r in batched[sid]])
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)  # bitwise equal on the machines measured
        assert [r.start_sample for r in batched[sid]] == [r.start_sample for r in single[sid]]
        assert events_of(batched[sid]) == events_of(single[sid])
        assert len(ends(single[sid])) >= 1


def test_step_runs_each_ready_stream_once_in_the_order_streams_were_opened(model):
    vad = BatchedVad(model)
    vad.feed("b", np.zeros(3 * 512, np.int16), 16000)
    vad.feed("a", np.zeros(2 * 256 + 10, np.int16), 8000)
    vad.feed("c", np.zeros(100, np.int16), 8000)
    assert vad.ready() == ["b", "a"]
    assert [r.stream_id for r in vad.step()] == ["b", "a"]
    assert [(r.stream_id, r.start_sample) for r in vad.drain()] == [("b", 512), ("a", 256), ("b", 1024)]
    assert vad.ready() == [] and vad.step() == []


def test_pcm16_bytes_int16_and_float_input_give_identical_results(model, synth_cache):
    audio, _ = script_audio(8000, synth_cache)
    audio = audio[: 3 * 8000]
    as_int = run_stream(model, audio, 8000)
    as_bytes = run_stream(model, audio.astype("<i2").tobytes(), 8000, piece=1600)
    as_float = run_stream(model, audio.astype(np.float32) / 32768, 8000)
    assert [r.probability for r in as_int] == [r.probability for r in as_bytes] == [r.probability for r in as_float]
    assert events_of(as_int) == events_of(as_bytes) == events_of(as_float) != []


# --- state across restarts --------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
def test_export_import_mid_stream_gives_the_same_segments_as_an_uninterrupted_run(model, synth_cache, rate):
    audio, _ = script_audio(rate, synth_cache)
    whole = run_stream(model, audio, rate, piece=777)
    assert len(ends(whole)) == len(SCRIPT)

    # "Restart the worker" at several points (mid-speech, mid-silence, with pending samples),
    # each time through JSON (what a Faust table stores) into a new BatchedVad.
    restarts = {int(len(audio) * f) // 777 for f in (0.1, 0.23, 0.4, 0.55, 0.81)}
    vad = BatchedVad(model)
    results = []
    for k, i in enumerate(range(0, len(audio), 777)):
        vad.feed("call-1:person", audio[i : i + 777], rate)
        results += vad.drain()
        if k in restarts:
            saved = json.loads(json.dumps(vad.export_state("call-1:person")))
            vad = BatchedVad(model)
            vad.import_state("call-1:person", saved)
    results += vad.finish("call-1:person")

    assert [r.probability for r in results] == [r.probability for r in whole]
    assert events_of(results) == events_of(whole)


def test_import_refuses_state_from_other_settings_or_a_broken_snapshot(model):
    vad = BatchedVad(model)
    vad.feed("x", np.zeros(1000, np.int16), 8000)
    vad.drain()
    good = vad.export_state("x")
    with pytest.raises(ValueError, match="already open"):
        vad.import_state("x", good)
    with pytest.raises(ValueError, match="segmentation settings"):
        BatchedVad(model, VadSettings(vad_threshold=0.6)).import_state("x", good)
    broken = dict(good, pending=good["pending"][:-8])
    with pytest.raises(ValueError, match="inconsistent|float32"):
        BatchedVad(model).import_state("x", broken)
    with pytest.raises(ValueError, match="lacks 'state'"):
        BatchedVad(model).import_state("x", {k: v for k, v in good.items() if k != "state"})
    with pytest.raises(ValueError, match="version"):
        BatchedVad(model).import_state("x", dict(good, v=99))
    with pytest.raises(ValueError, match="base64"):
        BatchedVad(model).import_state("x", dict(good, context="not base64!"))
    BatchedVad(model).import_state("x", good)  # the untouched snapshot is fine


# --- the segmenter against silero's own offline function ---------------------------------------


def silero_offline_get_speech_timestamps_from_probs():
    """silero's ``get_speech_timestamps_from_probs`` taken from the installed package's source
    (its module imports torch, which is not installed; the function itself is plain Python)."""
    path = model_path().parent.parent / "utils_vad.py"
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_speech_timestamps_from_probs")
    namespace = {"List": list, "Callable": object, "make_visualization": None}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["get_speech_timestamps_from_probs"]


def random_probabilities(rng, n: int) -> np.ndarray:
    """Speech/silence runs of random lengths, with values in the hysteresis band too."""
    out = []
    speech = False
    while len(out) < n:
        run = int(rng.geometric(1 / (rng.choice([3, 10, 40]))))
        if speech:
            values = rng.choice([rng.uniform(0.5, 1.0, run), rng.uniform(0.3, 1.0, run)])
        else:
            values = rng.choice([rng.uniform(0.0, 0.35, run), rng.uniform(0.0, 0.55, run)])
        out.extend(values)
        speech = not speech
    return np.array(out[:n], dtype=np.float32)


SEGMENTER_SETTINGS = [
    VadSettings(),
    VadSettings(vad_max_segment_s=1.5),  # cuts at the longest inner silence, or hard cuts
    VadSettings(vad_speech_pad_ms=200, vad_min_silence_ms=100, vad_max_segment_s=3),  # padding shared by close segments
    VadSettings(vad_min_silence_ms=100, vad_speech_pad_ms=30, vad_max_segment_s=2),  # silero's own defaults
    VadSettings(vad_threshold=0.6, vad_neg_threshold=0.55, vad_min_speech_ms=0, vad_speech_pad_ms=0, vad_max_segment_s=0.5),
]


@pytest.mark.parametrize("settings", SEGMENTER_SETTINGS, ids=["defaults", "max-1.5s", "shared-padding",
                                                            "silero-defaults", "tight"])
@pytest.mark.parametrize("rate", RATES)
def test_streaming_segmenter_equals_silero_offline_get_speech_timestamps(settings, rate):
    offline = silero_offline_get_speech_timestamps_from_probs()
    rng = np.random.default_rng(abs(hash((rate, settings.vad_speech_pad_ms, settings.vad_max_segment_s))) % 2**32)
    window = WINDOW_SAMPLES[rate]
    for trial in range(8):
        probs = random_probabilities(rng, int(rng.integers(1, 1500)))
        total = len(probs) * window - int(rng.integers(0, window))
        expected = offline(
            [float(p) for p in probs], sampling_rate=rate, threshold=settings.vad_threshold,
            neg_threshold=settings.vad_neg_threshold, min_speech_duration_ms=settings.vad_min_speech_ms,
            min_silence_duration_ms=settings.vad_min_silence_ms, speech_pad_ms=settings.vad_speech_pad_ms,
            max_speech_duration_s=settings.vad_max_segment_s, audio_length_samples=total,
        )
        seg = Segmenter(rate, settings)
        events = []
        for i, p in enumerate(probs):
            events += [(i, e) for e in seg.push(p)]
            if trial % 2 and i % 7 == 0:  # state survives a round trip at any window
                seg = Segmenter.from_dict(json.loads(json.dumps(seg.to_dict())), rate, settings)
        events += [(len(probs), e) for e in seg.finish(total)]

        got = [(e.start_sample, e.end_sample) for _, e in events if e.kind == "end"]
        assert got == [(s["start"], s["end"]) for s in expected]
        # every segment: one start then one end, numbered in order, starts announced before ends
        starts = {e.seq: (i, e.start_sample) for i, e in events if e.kind == "start"}
        finals = [(i, e) for i, e in events if e.kind == "end"]
        assert [e.seq for _, e in finals] == list(range(len(finals))) == sorted(starts)
        for i, e in finals:
            assert starts[e.seq][0] <= i and starts[e.seq][1] == e.start_sample


def test_segments_are_emitted_without_waiting_for_the_end_of_the_stream():
    rate, window = 8000, WINDOW_SAMPLES[8000]
    probs = [0.0] * 10 + [0.9] * 40 + [0.0] * 30
    seg = Segmenter(rate)
    emitted = {}
    for i, p in enumerate(probs):
        for e in seg.push(p):
            emitted[e.kind] = (i, e)
    # start: once min_speech (250 ms = 7.8 windows) of speech is certain
    assert emitted["start"][0] == 10 + 8 and emitted["start"][1].start_sample == 10 * window - 800
    # end: after min_silence (300 ms = 9.4 windows) of silence, padded by 100 ms
    assert emitted["end"][0] == 50 + 10 and emitted["end"][1].end_sample == 50 * window + 800
    assert seg.finish(len(probs) * window) == []


# --- bad input ------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_precise_error(model):
    vad = BatchedVad(model)
    with pytest.raises(ValueError, match=r"sample rate must be one of \(8000, 16000\) Hz, got 44100"):
        vad.feed("a", np.zeros(441, np.int16), 44100)
    with pytest.raises(ValueError, match="even number of bytes, got 3"):
        vad.feed("a", b"\x00\x01\x02", 8000)
    assert "a" not in vad  # nothing half-opened by refused input
    vad.feed("a", b"\x00\x00" * 300, 8000)
    with pytest.raises(ValueError, match="is at 8000 Hz; got audio at 16000 Hz"):
        vad.feed("a", np.zeros(10, np.int16), 16000)
    with pytest.raises(ValueError, match="one channel"):
        vad.feed("a", np.zeros((10, 2), np.int16), 8000)
    with pytest.raises(ValueError, match="int16 or float32/float64, got int32"):
        vad.feed("a", np.zeros(10, np.int32), 8000)
    with pytest.raises(ValueError, match=r"within \[-1, 1\]"):
        vad.feed("a", np.full(10, 2.0), 8000)
    with pytest.raises(ValueError, match=r"within \[-1, 1\]"):
        vad.feed("a", np.array([0.0, math.nan]), 8000)
    with pytest.raises(ValueError, match="non-empty string"):
        vad.feed("", np.zeros(10, np.int16), 8000)
    for call in (vad.export_state, vad.finish, vad.discard):
        with pytest.raises(ValueError, match="unknown VAD stream 'nobody:person'"):
            call("nobody:person")
    assert vad.feed("a", np.zeros(10, np.int16), 8000) == 1  # the stream lost nothing: 310 samples
    with pytest.raises(ValueError, match="44100"):
        Segmenter(44100)
    with pytest.raises(ValueError, match="probability"):
        Segmenter(8000).push(1.5)
    with pytest.raises(ValueError, match="does not fit"):
        Segmenter(8000).finish(10)
    with pytest.raises(ValueError, match=r"input must be \[B, 288\]"):
        model.run(np.zeros((1, 256), np.float32), np.zeros((2, 1, 128), np.float32), 8000)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vad_threshold": 1.2}, "threshold"),
        ({"vad_threshold": 0.5, "vad_neg_threshold": 0.7}, "neg_threshold"),
        ({"vad_min_silence_ms": -1}, "min_silence_ms"),
        ({"vad_max_segment_s": math.inf}, "max_segment_s"),
        ({"vad_max_segment_s": 0.2, "vad_speech_pad_ms": 100}, "max_segment_s"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VadSettings(**kwargs)
