"""The worker's settings for the vad and transcriber stages (``PipelineSettings``): LUPITA_STAGES,
the VAD settings mapped onto ``VadSettings``, the ASR settings merged in, bad values refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream_processor.settings import PipelineSettings
from stream_processor.models.vad import VadSettings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_run_every_stage_with_the_vad_defaults_and_the_asr_settings():
    s = PipelineSettings(_env_file=None)
    assert s.stage_set == {"recorder", "vad", "transcriber", "understanding"}
    assert s.vad_settings() == VadSettings(max_segment_s=15.0)
    assert s.asr_backend == "local" and s.asr_beam_size == 5  # AsrSettings merged in
    assert s.recorder_grace_seconds == 30.0  # and the recorder's


def test_stages_and_vad_values_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("LUPITA_STAGES", " transcriber , vad ")
    monkeypatch.setenv("LUPITA_VAD_MIN_SILENCE_MS", "500")
    monkeypatch.setenv("LUPITA_VAD_NEG_THRESHOLD", "0.2")
    s = PipelineSettings(_env_file=None)
    assert s.stages == "vad,transcriber" and s.stage_set == {"vad", "transcriber"}
    assert s.vad_settings().min_silence_ms == 500 and s.vad_settings().effective_neg_threshold == 0.2


@pytest.mark.parametrize("kwargs,match", [
    ({"stages": "vad,asr"}, "LUPITA_STAGES must be a comma list of recorder, vad, transcriber"),
    ({"stages": ","}, "LUPITA_STAGES must be a comma list"),
    ({"vad_max_segment_s": 45}, "less than or equal to 30"),
    ({"vad_speech_pad_ms": 8000}, "max_segment_s must be finite and longer than twice speech_pad_ms"),
    ({"vad_threshold": 0.3, "vad_neg_threshold": 0.4}, "neg_threshold must be in"),
    ({"vad_partial_every_s": 0}, "greater than 0"),
    ({"transcriber_max_in_flight": 0}, "greater than or equal to 1"),
])
def test_bad_values_are_refused_with_the_reason(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        PipelineSettings(_env_file=None, **kwargs)


def test_the_worker_exits_2_on_bad_stages_and_names_the_setting():
    env = dict(os.environ, LUPITA_STAGES="vad,nonsense", LUPITA_METRICS_PORT="0")
    proc = subprocess.run([sys.executable, "-m", "stream_processor"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    errors = [e for ln in lines if ln.get("msg") == "invalid settings" for e in ln["errors"]]
    assert any(e.startswith("LUPITA_STAGES: ") for e in errors), proc.stdout[-2000:]
