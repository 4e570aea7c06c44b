"""Per-call conversation state: talk time, turns, overlaps, silences, pace, transcript, sentiment."""

from __future__ import annotations

import itertools
import json

import pytest

from stream_processor.stages.understanding.conversation import ConversationState
from stream_processor.contracts import Utterance

CALL = "call-1"


def utt(leg: str, seq: int, start: float, end: float, text: str) -> Utterance:
    return Utterance(call_id=CALL, leg=leg, seq=seq, start_s=start, end_s=end, text=text)


SCRIPT = [
    utt("lupita", 0, 0.5, 3.0, "Hola doña Rosa, ¿cómo amaneció hoy?"),
    utt("person", 0, 3.6, 6.0, "Bien, mija, aquí tomando mi cafecito"),
    # Lupita cuts in at 5.5 s while the person still speaks (overlap 0.5 s)
    utt("lupita", 1, 5.5, 7.0, "¡Qué rico! ¿Y durmió bien?"),
    # 4 s of silence before the person answers
    utt("person", 1, 11.0, 14.0, "Más o menos, me dolía la rodilla"),
]


def test_figures_of_a_known_exchange():
    state = ConversationState(CALL)
    for u in SCRIPT:
        assert state.add(u)
    s = state.summary()
    assert s["utterances"] == 4
    assert s["talk_seconds"] == {"lupita": 4.0, "person": 5.4}
    assert s["turns"] == 4
    assert s["overlap_seconds"] == pytest.approx(0.5)
    assert s["interruptions"] == 1
    assert s["longest_silence_seconds"] == pytest.approx(4.0)
    # person: 6 + 7 words in 5.4 s of speech
    assert s["words_per_minute"]["person"] == pytest.approx(13 / (5.4 / 60), rel=1e-3)
    lines = state.transcript().splitlines()
    assert [line.split("] ")[1].split(":")[0] for line in lines] == ["lupita", "person", "lupita", "person"]


def test_order_and_duplicates_of_delivery_do_not_change_the_result():
    reference = ConversationState(CALL)
    for u in SCRIPT:
        reference.add(u)
    for order in itertools.permutations(SCRIPT):
        state = ConversationState(CALL)
        for u in order + order[:2]:  # the first two delivered twice
            state.add(u)
        assert state.summary() == reference.summary()
        assert state.transcript() == reference.transcript()


def test_duplicate_is_reported_and_ignored():
    state = ConversationState(CALL)
    assert state.add(SCRIPT[0]) is True
    assert state.add(SCRIPT[0]) is False
    assert state.summary()["utterances"] == 1


def test_running_sentiment_follows_the_person_leg_only():
    scores = {"bien": 1.0, "mal": -1.0}

    def scorer(text: str) -> float:
        return next((v for k, v in scores.items() if k in text.lower()), 0.0)

    state = ConversationState(CALL)
    state.add(utt("lupita", 0, 0, 1, "mal mal mal"), scorer)  # Lupita's words do not count
    assert state.summary()["sentiment"] == 0.0
    state.add(utt("person", 0, 1, 2, "Estoy bien"), scorer)
    assert state.summary()["sentiment"] == 1.0
    state.add(utt("person", 1, 2, 3, "Me siento mal"), scorer)
    assert 0.0 < state.summary()["sentiment"] < 1.0


def test_table_round_trip_through_json():
    state = ConversationState(CALL)
    for u in SCRIPT:
        state.add(u)
    again = ConversationState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again.summary() == state.summary()
    assert again.add(SCRIPT[0]) is False  # remembers what it has seen


@pytest.mark.parametrize(
    "bad, message",
    [
        (Utterance("other-call", "person", 0, 0, 1, "hola"), "offered to call"),
        (Utterance(CALL, "robot", 0, 0, 1, "hola"), "unknown leg"),
        (Utterance(CALL, "person", 0, 2, 1, "hola"), "bad utterance times"),
        (Utterance(CALL, "person", 0, -1, 1, "hola"), "bad utterance times"),
    ],
)
def test_bad_utterances_are_refused_and_change_nothing(bad, message):
    state = ConversationState(CALL)
    state.add(SCRIPT[0])
    before = state.to_dict()
    with pytest.raises(ValueError, match=message):
        state.add(bad)
    assert state.to_dict() == before


def test_empty_call_has_zero_figures():
    s = ConversationState(CALL).summary()
    assert s["turns"] == 0 and s["longest_silence_seconds"] == 0 and s["words_per_minute"]["person"] == 0
