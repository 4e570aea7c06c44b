"""Facts and topics from imperfect transcripts (issue 11 §3): the lexicons kept as data with
approximate matching, the relative's place and the next appointment, confidences that follow the
transcription probabilities of the words a fact came from, and a topic for every call with talk.

The sentences are written here as Whisper mishears telephone Spanish in general (a letter or an
accent off, a name in lower case); none is taken from the evaluation corpus.
"""

from __future__ import annotations

import json

import pytest

from stream_processor.contracts import Utterance
from stream_processor.models.analyzer import LocalAnalyzer
from stream_processor.models.analyzer.catalog import CatalogueError
from stream_processor.models.analyzer.facts import calibrate_facts, extract_facts, fact_key, is_protected
from stream_processor.models.analyzer.lexicon import load_lexicons, sound
from stream_processor.stages.understanding.conversation import ConversationState
from stream_processor.stages.understanding.core import CallUnderstanding

CALL = "call-noisy-facts"


def utts(*texts: str, confidence: float = 1.0) -> list[Utterance]:
    return [Utterance(CALL, "person", i, 2.0 * i, 2.0 * i + 1.5, t, confidence) for i, t in enumerate(texts)]


def facts_of(*texts: str) -> list[tuple[str, str, str]]:
    return [(f.fact_type, f.key, f.value) for f in extract_facts(utts(*texts))]


# --- lexicons --------------------------------------------------------------------------------------


def test_sound_keys_make_spanish_spellings_of_one_sound_equal():
    assert sound("beronica") == sound("veronica")
    assert sound("jorje") == sound("jorge")
    assert sound("presion") == sound("preción".replace("ó", "o").replace("ción", "cion"))
    assert sound("casa") != sound("cosa")


@pytest.mark.parametrize("said, generic", [
    ("Tomo metformía dos veces al día.", "metformina"),
    ("Me tomo la lozartán en la mañana.", "losartán"),
    ("Tomo omeprasol en ayunas.", "omeprazol"),
    ("Me tomé un tempra para el dolor.", "paracetamol"),  # a brand name: the generic is stored
    ("Estoy tomando insulina glargina.", "insulina"),
    ("Ya me tomé la atorva statina.", "atorvastatina"),  # a long name split in two words
])
def test_misheard_and_brand_medications_are_the_lexicons_generic(said, generic):
    assert ("health", f"medication.{fact_key('medication', generic).split('.')[1]}", generic) in facts_of(said)


@pytest.mark.parametrize("said", [
    "Ya no tomo la metformina.",  # negated
    "¿Usted toma metformina?",  # a question
    "Se me inclina la cabeza cuando camino.",  # "inclina" is near "insulina", no medication context
    "Me gusta el camino del pueblo.",
    "Tomo la combi en la esquina para ir al centro.",  # words joined are no medication
    "En la noche me acuesto bien temprano.",  # "temprano" holds the brand name "tempra": no
])
def test_no_medication_without_an_affirmative_reading(said):
    assert [f for f in facts_of(said) if f[0] == "health" and f[1].startswith("medication")] == []


def test_relatives_names_in_lower_case_or_misspelled_are_read_with_the_names_list():
    got = facts_of("Sí, mi nieto rodrigo me llamó ayer.", "Mi hija Beronica vino el domingo.",
                   "mis hijos ya no vienen", "mi hija dolores de cabeza no tiene")
    assert ("family", "grandson_name.rodrigo", "Rodrigo") in got
    assert ("family", "daughter_name.veronica", "Verónica") in got
    assert not any(f[1].startswith("daughter_name.dolores") for f in got)  # a plain word in lower case
    assert not any(f[2].lower() == "ya" for f in got)
    # a listed name the recogniser split in two words; words that join into no name give nothing
    assert ("family", "grandson_name.alejandro", "Alejandro") in facts_of("Mi nieto, ale jandro, me visitó.")
    assert facts_of("Mi hija mi casa es tuya.") == []


def test_where_a_relative_lives_is_the_most_specific_place_said():
    got = facts_of("Mi hijo Luis se fue al norte hace cinco años, vive en Chicago. Lo extraño mucho.",
                   "Mi hermana está en Oaxaca con sus hijos.", "Vive en Chicago mucha gente.")
    assert ("family", "son_lives_in.chicago", "Chicago") in got
    assert ("family", "sister_lives_in.oaxaca", "Oaxaca") in got
    assert not any(f[1].startswith("son_lives_in.estados") for f in got)
    assert sum(f[1].endswith("_lives_in.chicago") for f in got) == 1  # no relative, no fact


def test_a_relative_carried_over_a_pause_inside_the_sentence():
    """An elderly pause splits "mi nieta se fue al norte, ... vive en Houston" in two segments:
    the place still belongs to the granddaughter; the country gives way to the city. Not after a
    finished sentence, nor after Lupita spoke."""
    assert facts_of("Mi nieta Sofía se fue al norte,", "vive en Houston con su esposo.")[1:] == \
        [("family", "granddaughter_lives_in.houston", "Houston")]
    assert facts_of("Mi nieta Sofía ya está grande.", "Vive en Houston mucha gente.") == \
        [("family", "granddaughter_name.sofia", "Sofía")]
    lupita_between = utts("Mi nieta Sofía se fue al norte,", "vive en Houston.")
    lupita_between.insert(1, Utterance(CALL, "lupita", 0, 1.6, 1.9, "¿Ah, sí?", 1.0))
    assert [f.key for f in extract_facts(lupita_between)] == ["granddaughter_name.sofia",
                                                             "granddaughter_lives_in.estados_unidos"]


def test_next_appointment_affirmative_only():
    assert ("health", "next_appointment", "cita con el doctor el martes") in \
        facts_of("Tengo cita con el doctor el martes.")
    assert not any(f[1] == "next_appointment" for f in facts_of("No tengo cita todavía.", "¿Tengo consulta mañana?"))


def test_condition_heard_slightly_wrong_after_a_verb_of_having():
    assert ("health", "condition.hipertension", "hipertensión") in facts_of("Tengo la preción alta, pero ya me la controlo.")
    assert not any(f[1].startswith("condition") for f in facts_of("Tengo mucha presión en el trabajo.",
                                                                  "No tengo la presión alta."))


def test_a_broken_lexicon_file_fails_naming_the_place(tmp_path):
    bad = tmp_path / "medications.json"
    bad.write_text(json.dumps({"medications": [{"generic": ""}]}))
    with pytest.raises(CatalogueError, match=r"medications\.json: medications\[0\]\.generic"):
        load_lexicons(bad)
    bad.write_text("{nope")
    with pytest.raises(CatalogueError, match="not valid JSON"):
        load_lexicons(bad)


# --- confidence from the words' transcription probabilities -------------------------------------------


def words_for(text: str, probs: dict[str, float], default: float = 0.95) -> list[tuple[str, float]]:
    out = []
    for i, w in enumerate(text.split()):
        out.append(((" " if i else "") + w, probs.get(w.strip(".,"), default)))
    return out


def test_fact_confidence_follows_the_probability_of_the_value_words():
    text = "Mi nieto Rodrigo me llamó ayer."
    [u] = utts(text)
    sure = extract_facts([u], {("person", 0): words_for(text, {})})
    unsure = extract_facts([u], {("person", 0): words_for(text, {"Rodrigo": 0.1})})
    other_word = extract_facts([u], {("person", 0): words_for(text, {"ayer": 0.1})})
    assert sure[0].confidence > unsure[0].confidence
    assert other_word[0].confidence == sure[0].confidence  # a doubtful word elsewhere changes nothing
    assert unsure[0].confidence == pytest.approx(0.85 * (0.25 + 0.75 * 0.1), abs=1e-3)
    a = LocalAnalyzer(min_fact_confidence=0.5)
    assert [f.value for f in a.analyze(CALL, [u], words={("person", 0): words_for(text, {})}).facts] == ["Rodrigo"]
    assert a.analyze(CALL, [u], words={("person", 0): words_for(text, {"Rodrigo": 0.1})}).facts == ()


def test_shared_rules_canonical_key_protected_classes():
    assert fact_key("medication", "Metformina") == "medication.metformina"
    assert fact_key("son_lives_in", "Nueva York") == "son_lives_in.nueva_york"
    assert fact_key("wake_up_time", "06:00") == "wake_up_time"
    assert is_protected("medication.x") and is_protected("allergy.x") and is_protected("emergency_contact_name.x")
    assert not is_protected("son_lives_in.chicago")
    [f] = extract_facts(utts("Tomo metformina."))
    lupita = type(f.evidence)(leg="lupita", seq=0, start_s=0, end_s=1, text="Tomo metformina.", char_start=0, char_end=15)
    kept, notes = calibrate_facts([f, type(f)(f.fact_type, "medication", "Losartán", 0.9, lupita)])
    assert [k.key for k in kept] == ["medication.metformina"]
    assert notes == ["facts dropped (protected class not said by the person): 1"]


def test_words_reach_the_analyzer_through_the_call_state():
    """The understanding stage keeps each final's words in its table state, so the analyzer at
    call end weighs facts by them (and a restored state still has them)."""
    cu = CallUnderstanding(CALL)
    cu.start(started_at_us=1, phone_hash=None, region=None, consent=True)
    text = "Mi nieto Rodrigo me llamó ayer."
    [u] = utts(text)

    class NoAlerts:
        def scan(self, *args, **kwargs):
            return []

    cu.on_final(u, NoAlerts(), words=words_for(text, {"Rodrigo": 0.2}))
    again = CallUnderstanding.from_dict(json.loads(json.dumps(cu.to_dict())))
    words = again.conversation.words()
    assert [w for w, _ in words[("person", 0)]][:3] == ["Mi", " nieto", " Rodrigo"]
    assert dict((w.strip(), p) for w, p in words[("person", 0)])["Rodrigo"] == 0.2
    assert ConversationState(CALL).words() == {}


# --- topics --------------------------------------------------------------------------------------------


def test_misheard_topic_keywords_count():
    a = LocalAnalyzer()
    assert a.keyword_scores("me tomé la medisina")["salud"] == 1.0  # sounds like "medicina": counts as it
    assert a.keyword_scores("tengo la preción alta") == {"salud": 1.0}
    assert a.keyword_scores("las rodilyas")["salud"] == pytest.approx(0.8)  # one letter off: less
    assert a.keyword_scores("buenas tardes, ahora sí") == {}


def test_a_call_with_talk_is_never_left_without_a_topic():
    """Below every topic's minimum score (one misheard keyword, 0.8) but the person talked: the
    topic with the most evidence, noted as weak; a call with almost no words gets none."""
    a = LocalAnalyzer()
    talk = utts("Las rodilyas ya no aguantan igual que antes, pero ahí voy con calma.")
    assert a.select_topics(a.topic_scores(talk)) == ()
    result = a.analyze(CALL, talk)
    assert result.topics == ("salud",)
    assert any(n.startswith("topic salud from weak evidence") for n in result.notes)
    assert a.analyze(CALL, utts("Sí, bueno.")).topics == ()


def test_a_topic_lupita_asked_about_and_the_person_answered_counts_fully():
    """Lupita's keywords count half (asking is weaker evidence), in full when the person answered
    with a few words: the recogniser may have lost the words of the answer, not its topic."""
    a = LocalAnalyzer()
    ask = Utterance(CALL, "lupita", 0, 0.0, 2.0, "¿Ya se tomó su medicina hoy?", 1.0)
    answered = [ask, Utterance(CALL, "person", 0, 2.5, 5.0, "Sí, mija, ya me la tomé temprano con el cafecito.", 0.6)]
    unanswered = [ask, Utterance(CALL, "person", 0, 2.5, 3.0, "Sí.", 0.6)]
    assert a.topic_scores(answered)["salud"] == pytest.approx(1.0)
    assert a.topic_scores(unanswered)["salud"] == pytest.approx(0.5)
    assert "salud" in a.analyze(CALL, answered).topics


def test_bad_word_probabilities_are_left_out():
    """A probability that is missing, NaN, out of [0, 1] or not a number, and a word that is not in
    the text, do not count: the fact keeps a valid confidence."""
    text = "Mi nieto Rodrigo me llamó."
    [u] = utts(text)
    bad = [("Mi", 0.9), (" nieto", None), (" Rodrigo", float("nan")), (" me", 7.0), (" llamó.", "x"), (" zzz", 0.1)]
    [f] = extract_facts([u], {("person", 0): bad})
    assert f.confidence == pytest.approx(0.85)  # no valid probability on the value: the utterance's 1.0


def test_lexicon_terms_for_a_recogniser_vocabulary():
    from stream_processor.models.analyzer.lexicon import load_lexicons

    lex = load_lexicons()
    meds = lex.terms(["medications"])
    assert set(meds) == {m.generic for m in lex.medications.medications} and len(meds) == len(set(meds))
    assert all(t == " ".join(t.split()) and t for t in meds)
    everything = lex.terms(["medications", "brands", "names", "places"])
    assert everything[:len(meds)] == meds and len(everything) == len(set(everything))
    assert set(lex.names.female) <= set(everything) and set(lex.places.places) <= set(everything)
    with pytest.raises(ValueError, match="unknown term kind"):
        lex.terms(["dishes"])
