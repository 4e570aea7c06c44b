"""The worker's settings (``WorkerSettings``: LUPITA_STAGES...), each stage's own settings class
(only the chosen stages' are read, each agent gets its own), all of them together
(``PipelineSettings``), bad values refused with the variable's name."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pytest
from logscan import run_logged
from pydantic import ValidationError

from stream_processor.settings import PipelineSettings
from stream_processor.stages.recorder.settings import RecorderSettings
from stream_processor.stages.transcriber.settings import TranscriberSettings
from stream_processor.stages.vad.settings import VadStageSettings
from stream_processor.worker import SettingsError, build_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_run_every_stage_with_the_vad_defaults_and_the_asr_settings():
    s = PipelineSettings(_env_file=None)
    assert s.stage_set == {"recorder", "vad", "transcriber", "understanding"}
    assert (s.vad_threshold, s.vad_min_silence_ms, s.vad_speech_pad_ms, s.vad_max_segment_s) == (0.5, 300, 100, 15.0)
    assert s.asr_backend == "local" and s.asr_beam_size == 5  # AsrSettings merged in
    assert s.recorder_grace_seconds == 30.0  # and the recorder's


def test_stages_and_vad_values_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("LUPITA_STAGES", " transcriber , vad ")
    monkeypatch.setenv("LUPITA_VAD_MIN_SILENCE_MS", "500")
    monkeypatch.setenv("LUPITA_VAD_NEG_THRESHOLD", "0.2")
    s = PipelineSettings(_env_file=None)
    assert s.stages == "vad,transcriber" and s.stage_set == {"vad", "transcriber"}
    assert s.vad_min_silence_ms == 500 and s.effective_neg_threshold == 0.2


@pytest.mark.parametrize("kwargs,match", [
    ({"stages": "vad,asr"}, "LUPITA_STAGES must be a comma list of recorder, vad, transcriber"),
    ({"stages": ","}, "LUPITA_STAGES must be a comma list"),
    ({"vad_max_segment_s": 45}, "less than or equal to 30"),
    ({"vad_speech_pad_ms": 8000}, "vad_max_segment_s must be longer than twice vad_speech_pad_ms"),
    ({"vad_threshold": 0.3, "vad_neg_threshold": 0.4}, "vad_neg_threshold must be in"),
    ({"vad_partial_every_s": 0}, "greater than 0"),
    ({"transcriber_max_in_flight": 0}, "greater than or equal to 1"),
    ({"transcriber_person_threads": -1}, "greater than or equal to 0"),
    ({"transcriber_person_threads": 17}, "less than or equal to 16"),
    ({"asr_encoder_min_window_seconds": 31}, "less than or equal to 30"),
])
def test_bad_values_are_refused_with_the_reason(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        PipelineSettings(_env_file=None, **kwargs)


def test_the_worker_exits_2_on_bad_stages_and_names_the_setting():
    env = dict(os.environ, LUPITA_STAGES="vad,nonsense", LUPITA_METRICS_PORT="0")
    proc = run_logged("worker-bad-stages", [sys.executable, "-m", "stream_processor"], env=env, cwd=ROOT,
                      text=True, timeout=60)
    assert proc.returncode == 2
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    errors = [e for ln in lines if ln.get("msg") == "invalid settings" for e in ln["errors"]]
    assert any(e.startswith("LUPITA_STAGES: ") for e in errors), proc.stdout[-2000:]


def test_each_chosen_stage_gets_its_own_settings_class_and_only_those_are_read(monkeypatch):
    monkeypatch.setenv("LUPITA_STAGES", "vad,transcriber")
    monkeypatch.setenv("LUPITA_RECORDER_PART_SIZE_MIB", "1")  # bad, but the recorder is not chosen
    monkeypatch.setenv("LUPITA_VAD_MIN_SILENCE_MS", "450")
    worker, stages = build_settings(argparse.Namespace())
    assert worker.stage_set == {"vad", "transcriber"} and list(stages) == ["vad", "transcriber"]
    assert type(stages["vad"]) is VadStageSettings and type(stages["transcriber"]) is TranscriberSettings
    assert stages["vad"].vad_min_silence_ms == 450
    assert not hasattr(stages["vad"], "transcriber_threads") and not hasattr(stages["transcriber"], "vad_threshold")


def test_the_bad_variables_of_every_chosen_stage_are_named_together(monkeypatch):
    monkeypatch.setenv("LUPITA_STAGES", "recorder,vad")
    monkeypatch.setenv("LUPITA_RECORDER_PART_SIZE_MIB", "1")
    monkeypatch.setenv("LUPITA_VAD_THRESHOLD", "1.5")
    with pytest.raises(SettingsError) as info:
        build_settings(argparse.Namespace())
    assert [p.split(":")[0] for p in info.value.problems] == ["LUPITA_RECORDER_PART_SIZE_MIB", "LUPITA_VAD_THRESHOLD"]
    assert RecorderSettings(_env_file=None, recorder_part_size_mib=5).part_size_bytes == 5 * 1024 * 1024
