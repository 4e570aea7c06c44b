"""Worker settings and start-up refusals (no servers needed)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from logscan import run_logged
from pydantic import ValidationError

from stream_processor.settings import WorkerSettings
from stream_processor.stages.recorder.settings import RecorderSettings


def test_defaults_and_the_app_id_gets_the_topic_prefix():
    s = WorkerSettings(topic_prefix="prod.", _env_file=None)
    assert s.faust_app_id == "prod.stream-processor"
    assert s.table_store == "memory://" and s.data_dir.is_absolute()
    assert RecorderSettings(_env_file=None).part_size_bytes == 8 * 1024 * 1024


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (RecorderSettings, dict(recorder_part_size_mib=4), "greater than or equal to 5"),
        (WorkerSettings, dict(table_store="redis://"), "should match pattern"),
        (WorkerSettings, dict(app_id="a/b"), "should match pattern"),
        (WorkerSettings, dict(kafka_heartbeat_seconds=20, kafka_session_timeout_seconds=30), "at most a third"),
        (RecorderSettings, dict(recorder_grace_seconds=0), "greater than 0"),
    ],
)
def test_bad_settings_are_refused(cls, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        cls(**kwargs)


def test_worker_exits_2_naming_the_bad_variable_without_starting_anything():
    env = dict(os.environ, LUPITA_RECORDER_PART_SIZE_MIB="1", LUPITA_METRICS_PORT="0")
    out = run_logged("worker-bad-settings", [sys.executable, "-m", "stream_processor"], env=env, text=True,
                     timeout=60)
    assert out.returncode == 2
    errors = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert errors[-1]["msg"] == "invalid settings"
    assert any(e.startswith("LUPITA_RECORDER_PART_SIZE_MIB:") for e in errors[-1]["errors"])
