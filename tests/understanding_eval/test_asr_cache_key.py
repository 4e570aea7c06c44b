"""The understanding bench's ASR cache key (``bench/understanding.py`` ``transcript_key``): it
changes with a setting that shapes the transcript, not with one left at its default, nor with
operational settings (threads, retries, timeouts)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))


@pytest.fixture
def key(monkeypatch):
    import understanding

    from stream_processor.replay import ReplaySettings

    def of(**env: str) -> str:
        for k in [k for k in os.environ if k.startswith(("LUPITA_ASR_", "LUPITA_VAD_", "LUPITA_TRANSCRIBER_"))]:
            monkeypatch.delenv(k)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return understanding.transcript_key(ReplaySettings())

    return of


def test_defaults_and_operational_settings_leave_the_key(key):
    base = key()
    assert len(base) == 16
    # set to their defaults explicitly, or operational: the same transcripts
    assert key(LUPITA_ASR_BEAM_SIZE="5", LUPITA_ASR_THREADS="2", LUPITA_ASR_TIMEOUT_SECONDS="5",
               LUPITA_ASR_MAX_ATTEMPTS="9", LUPITA_TRANSCRIBER_THREADS="3", LUPITA_VAD_TICK_SECONDS="0.25",
               LUPITA_ASR_OPENAI_MODEL="other") == base


def test_settings_that_shape_the_words_change_the_key(key):
    base = key()
    changed = {key(LUPITA_ASR_BEAM_SIZE="3"), key(LUPITA_VAD_THRESHOLD="0.6"),
               key(LUPITA_TRANSCRIBER_VOCABULARY="true"), key(LUPITA_ASR_TEMPERATURES="[0.0]")}
    assert base not in changed and len(changed) == 4


def test_a_new_setting_at_its_default_keeps_the_key(key, monkeypatch):
    """A field added to the settings with a default (as every new asr_* setting comes) is not in
    the key while it stays at that default."""
    import understanding

    from stream_processor.replay import ReplaySettings

    base = key()
    s = ReplaySettings()
    dumped = s.model_dump()
    fields = dict(type(s).model_fields)

    class Extended:  # the settings as they would look with one more field (default 7)
        model_fields = {**fields, "asr_new_knob": type("F", (), {"default": 7})()}
        asr_backend, asr_language, asr_compute_type = s.asr_backend, s.asr_language, s.asr_compute_type

        def __init__(self, value: int) -> None:
            self.value = value

        def model_dump(self):
            return {**dumped, "asr_new_knob": self.value}

    assert understanding.transcript_key(Extended(7)) == base
    assert understanding.transcript_key(Extended(8)) != base
