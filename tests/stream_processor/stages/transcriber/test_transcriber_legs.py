"""Lupita's leg decoded with its own beam and ladder (``LUPITA_TRANSCRIBER_AGENT_BEAM_SIZE`` /
``_TEMPERATURES``): the transcriber agent, wired into a Faust app that is never started, routes
each leg's finals and partials through the scheduler to its own decoding of the one loaded model.

Real model, real espeak-ng telephone speech; what is asserted is which options each decode ran
with (faster-whisper's own arguments, seen at the call), never which words were heard.
"""

from __future__ import annotations

import asyncio

import faust
import numpy as np
import pytest

from loadgen.synth import DEFAULT_VOICES, LUPITA, PERSON, synthesize_utterance
from lupita.v1 import audio_pb2, events_pb2
from stream_processor.models.asr.base import TranscriptResult
from stream_processor.models.asr.whisper_local import WhisperLocal
from stream_processor.records import KIND_FINAL, KIND_PARTIAL
from stream_processor.stages.transcriber.agent import TranscriberAgent
from stream_processor.stages.transcriber.settings import TranscriberSettings

RATE = 8000


@pytest.fixture(scope="module")
def model() -> WhisperLocal:
    return WhisperLocal(threads=2)


def segment(leg: int, kind: int, text: str) -> events_pb2.SpeechSegment:
    voice = DEFAULT_VOICES[PERSON if leg == audio_pb2.LEG_PERSON else LUPITA]
    pcm = synthesize_utterance(text, RATE, voice)
    return events_pb2.SpeechSegment(call_id="legs-1", leg=leg, seq=0, kind=kind, sample_rate_hz=RATE,
                                    pcm16=pcm.astype("<i2").tobytes(), start_us=0,
                                    end_us=int(pcm.size / RATE * 1e6))


def agent_with(model: WhisperLocal, **settings) -> TranscriberAgent:
    app = faust.App(f"legs-{len(settings)}", broker="kafka://127.0.0.1:9", store="memory://")
    return TranscriberAgent(TranscriberSettings(_env_file=None, **settings), app=app, transcriber=model)


def decodes_of(agent: TranscriberAgent, seg: events_pb2.SpeechSegment, monkeypatch) -> list[tuple]:
    """(beam_size, temperatures) of every faster-whisper decode the agent ran for ``seg``."""
    seen: list[tuple] = []
    for asr in {id(agent.asr): agent.asr, id(agent.asr_agent): agent.asr_agent}.values():
        inner = asr._decode
        monkeypatch.setattr(asr, "_decode", lambda x, kw, inner=inner: (
            seen.append((kw["beam_size"], tuple(kw["temperature"]))), inner(x, kw))[1])

    async def run():
        if seg.kind == KIND_FINAL:  # the packed path's entry (transcribe_many), as _work takes it
            return (await asyncio.wrap_future(agent._submit_finals(seg, [(np.frombuffer(seg.pcm16, "<i2"), RATE)])))[0]
        fut, _ = agent._submit(seg)
        return await fut

    try:
        result = asyncio.run(run())
    finally:
        agent.scheduler.shutdown(cancel_futures=True)
    assert isinstance(result, TranscriptResult)
    return seen


def test_lupita_finals_decode_with_the_agent_settings_and_the_persons_with_the_asr_ones(model, monkeypatch):
    agent = agent_with(model, transcriber_agent_beam_size=1, transcriber_agent_temperatures=(0.0,))
    assert agent.asr is model and agent.asr_agent._model is model._model  # one loaded model
    lupita = decodes_of(agent, segment(audio_pb2.LEG_LUPITA, KIND_FINAL, "¿Ya tomó su pastilla de la presión?"),
                        monkeypatch)
    assert lupita and set(lupita) == {(1, (0.0,))}
    agent = agent_with(model, transcriber_agent_beam_size=1, transcriber_agent_temperatures=(0.0,))
    person = decodes_of(agent, segment(audio_pb2.LEG_PERSON, KIND_FINAL, "Sí, me la tomé con el desayuno."),
                        monkeypatch)
    assert person and person[0] == (5, (0.0, 0.5))


def test_partials_keep_the_partial_beam_on_both_legs(model, monkeypatch):
    agent = agent_with(model, transcriber_agent_beam_size=3)
    seen = decodes_of(agent, segment(audio_pb2.LEG_LUPITA, KIND_PARTIAL, "Buenos días, ¿cómo amaneció hoy?"),
                      monkeypatch)
    assert seen == [(1, (0.0,))]


def test_unset_agent_settings_decode_both_legs_alike(model):
    agent = agent_with(model)
    assert agent.asr_agent is agent.asr
    with pytest.raises(ValueError, match="LUPITA_TRANSCRIBER_AGENT_TEMPERATURES"):
        TranscriberSettings(_env_file=None, transcriber_agent_temperatures=(0.5, 0.0))
    with pytest.raises(ValueError):
        TranscriberSettings(_env_file=None, transcriber_agent_beam_size=0)
