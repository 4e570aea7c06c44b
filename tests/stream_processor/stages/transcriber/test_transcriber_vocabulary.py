"""The transcriber's per-call vocabularies (``stages/transcriber/vocabulary.py``): built once at a
call's start from that person's facts, kept per call id, never given to another call, forgotten
once both legs ended; and the facts read from the real Postgres by phone hash."""

from __future__ import annotations

import uuid

import pytest

from stream_processor.models.asr.vocabulary import HEALTH_LEXICON_ES_MX
from stream_processor.stages.transcriber.vocabulary import CallVocabularies, read_person_facts

FACTS_A = [("family", "grandson_name.rodrigo", "Rodrigo"), ("health", "medication.losartan", "losartán")]
FACTS_B = [("family", "daughter_name.teresa", "Teresa"), ("place", "son_city", "Chicago")]


@pytest.mark.parametrize("lexicon", [False, True])
def test_each_call_gets_its_own_persons_words_and_no_other(lexicon):
    v = CallVocabularies(lexicon=lexicon)
    a, b = v.start("call-a", FACTS_A), v.start("call-b", FACTS_B)
    assert a[:2] == ("Rodrigo", "losartán") and b[:2] == ("Teresa", "Chicago")
    assert not {"Teresa", "Chicago"} & set(v.get("call-a"))
    assert not {"Rodrigo"} & set(v.get("call-b"))
    # a call whose start was not seen here: the lexicon alone, nobody's names
    other = v.get("call-c")
    assert other == v.lexicon_only and not {"Rodrigo", "Teresa", "Chicago"} & set(other)
    assert (other[:1] == HEALTH_LEXICON_ES_MX[:1]) if lexicon else other == ()
    assert ("metformina" in a) == lexicon


def test_a_call_is_forgotten_once_both_legs_ended():
    v = CallVocabularies()
    v.start("call-a", FACTS_A)
    v.leg_ended("call-a", "person")
    assert v.known("call-a")
    v.leg_ended("call-a", "lupita")
    assert not v.known("call-a") and len(v) == 0
    v.leg_ended("never-started", "person")  # nothing kept for calls never started here
    v.leg_ended("never-started", "lupita")
    assert len(v) == 0


def test_the_number_of_calls_held_is_bounded():
    v = CallVocabularies(max_calls=3)
    for i in range(5):
        v.start(f"call-{i}", FACTS_A)
    assert len(v) == 3 and not v.known("call-0") and v.known("call-4")


@pytest.mark.stack
def test_facts_are_read_by_phone_hash_from_postgres(pg):
    """Two persons' facts in the real user_facts table (migrated by the pg fixture, so the test
    does not depend on another having run first): each hash reads only its own."""
    from lupita.config import CommonSettings
    from stream_processor.stores.calls_db import CallStore

    dsn = CommonSettings().postgres_dsn.get_secret_value()
    conn = pg
    a, b = f"test-vocab-{uuid.uuid4().hex}", f"test-vocab-{uuid.uuid4().hex}"
    rows = [(a, "family", "grandson_name.rodrigo", "Rodrigo"), (a, "health", "medication.losartan", "losartán"),
            (b, "family", "daughter_name.teresa", "Teresa")]
    for person, t, k, value in rows:
        conn.execute("INSERT INTO user_facts (phone_number_hash, fact_type, fact_key, fact_value, confidence) "
                     "VALUES (%s, %s, %s, %s, 0.9)", (person, t, k, value))
    store = CallStore(dsn)
    try:
        got_a = read_person_facts(store.run, a)
        got_b = read_person_facts(store.run, b)
        assert read_person_facts(store.run, f"test-vocab-{uuid.uuid4().hex}") == []
    finally:
        store.close()
        conn.execute("DELETE FROM user_facts WHERE phone_number_hash = ANY(%s)", ([a, b],))
    assert sorted(v for _, _, v in got_a) == ["Rodrigo", "losartán"]
    assert [v for _, _, v in got_b] == ["Teresa"]
    v = CallVocabularies()
    assert "Rodrigo" in v.start("call-a", got_a) and "Rodrigo" not in v.start("call-b", got_b)
