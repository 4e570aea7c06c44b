"""The local analyzer on Spanish scripts (utterances as text, no audio): topics, emotion and trend,
behavioral codes, user facts with evidence spans, summary; negation, hedges, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest

from stream_processor.models.analyzer import AnalyzerInputError, LocalAnalyzer
from stream_processor.models.analyzer.facts import extract_facts
from stream_processor.models.analyzer.text import fold, is_negated
from stream_processor.contracts import Utterance

L, P = "lupita", "person"
CALL = "call-analyzer-local"


def utterances(script: list[tuple[str, str]], *, call_id: str = CALL, confidence: float = 1.0) -> list[Utterance]:
    """One utterance per line, 3 s each with 0.5 s gaps, seq counted per leg."""
    out, seq, t = [], {L: 0, P: 0}, 0.0
    for leg, text in script:
        out.append(Utterance(call_id, leg, seq[leg], t, t + 3.0, text, confidence))
        seq[leg] += 1
        t += 3.5
    return out


MIGRATION_SCRIPT = [
    (L, "Buenos días, doña Carmen. ¿Cómo amaneció hoy?"),
    (P, "Ay, buenos días. Pues aquí ando, un poco triste. Mi hijo Miguel se fue al norte hace diez años y ya "
        "no lo he visto."),
    (L, "¿Y cómo se siente desde que su hijo Miguel se fue al norte?"),
    (P, "Lo extraño mucho. Me siento sola. Mi hija Rosa viene los domingos, pero vive lejos."),
    (L, "Entiendo que se sienta así, debe ser difícil. ¿Ya se tomó su pastilla de hoy?"),
    (P, "Sí, tomo metformina en la mañana porque tengo diabetes. Y también me tomo mi pastilla de la presión."),
    (L, "Muy bien. ¿Y qué desayunó?"),
    (P, "Me gusta el café de olla con pan dulce. Me levanto a las seis y riego mis plantas."),
    (L, "Qué bonito. La llamo mañana, doña Carmen."),
    (P, "Gracias, mija. Nomás me hace falta mi hijo."),
]

CALM_SCRIPT = [
    (L, "Buenos días, don Pedro. ¿Cómo está?"),
    (P, "Buenos días. Aquí ando, barriendo el patio."),
    (L, "¿Qué hizo ayer?"),
    (P, "Fui al mercado a comprar jitomates y regresé temprano."),
    (L, "Que tenga buen día, don Pedro."),
    (P, "Igualmente, hasta luego."),
]


@pytest.fixture(scope="module")
def analyzer() -> LocalAnalyzer:
    return LocalAnalyzer()


def quote(fact_or_span) -> str:
    ev = getattr(fact_or_span, "evidence", fact_or_span)
    return ev.text[ev.char_start:ev.char_end]


def facts_by_key(analysis) -> dict[tuple[str, str], object]:
    return {(f.fact_type, f.key): f for f in analysis.facts}


def test_migration_script_topics_emotion_codes(analyzer):
    utts = utterances(MIGRATION_SCRIPT)
    a = analyzer.analyze(CALL, utts)
    assert a.call_id == CALL and a.analyzer == "local" and a.notes == ()
    assert {"salud", "familia", "migracion", "soledad"} <= set(a.topics)
    assert "clima" not in a.topics and "dinero" not in a.topics
    assert a.topics[0] == "salud"  # the most keywords (metformina, diabetes, pastilla, presión)
    assert a.emotion_primary == "tristeza"
    # one trend point per person segment, at its start, in call order
    person = [u for u in utts if u.leg == P]
    assert [t for t, _ in a.emotion_trend] == [u.start_s for u in person]
    assert a.emotion_trend[0][1] == "tristeza"  # "un poco triste"
    assert a.emotion_trend[2][1] == "neutral"  # medication talk
    assert {"echo_open_question", "duelo_migratorio", "expresion_soledad", "validacion_emocional",
            "recordatorio_medicamento", "compromiso_seguimiento"} == set(a.behavioral_codes)
    assert "reminiscencia" not in a.behavioral_codes


def test_codes_point_at_the_right_utterances(analyzer):
    utts = utterances(MIGRATION_SCRIPT)
    hits = {h.code_id: h.evidence for h in analyzer.code_hits(utts)}
    echo = hits["echo_open_question"]
    assert (echo.leg, echo.seq) == (L, 1)
    assert quote(echo) == "¿Y cómo se siente desde que su hijo Miguel se fue al norte?"
    duelo = hits["duelo_migratorio"]
    assert (duelo.leg, duelo.seq) == (P, 0) and quote(duelo) == "se fue al norte"
    assert (hits["expresion_soledad"].leg, hits["expresion_soledad"].seq) == (P, 1)
    assert quote(hits["expresion_soledad"]) == "Me siento sola"
    assert (hits["recordatorio_medicamento"].leg, hits["recordatorio_medicamento"].seq) == (L, 2)


def test_facts_with_evidence_spans(analyzer):
    utts = utterances(MIGRATION_SCRIPT)
    facts = facts_by_key(analyzer.analyze(CALL, utts))
    expected = {
        ("health", "medication.metformina"): ("metformina", 2, "tomo metformina"),
        ("health", "medication.pastilla_de_la_presion"): ("pastilla de la presión", 2,
                                                          "me tomo mi pastilla de la presión"),
        ("health", "condition.diabetes"): ("diabetes", 2, "tengo diabetes"),
        ("family", "son_name.miguel"): ("Miguel", 0, "Mi hijo Miguel"),
        ("family", "son_lives_in.estados_unidos"): ("Estados Unidos", 0, "Mi hijo Miguel se fue al norte"),
        ("family", "daughter_name.rosa"): ("Rosa", 1, "Mi hija Rosa"),
        ("routine", "wake_up_time"): ("06:00", 3, "Me levanto a las seis"),
        ("preference", "likes.cafe_de_olla_con_pan_dulce"): ("café de olla con pan dulce", 3,
                                                             "Me gusta el café de olla con pan dulce"),
    }
    assert set(facts) == set(expected)
    for k, (value, seq, words) in expected.items():
        f = facts[k]
        assert f.value == value, k
        assert f.evidence.leg == P and f.evidence.seq == seq, k
        person = [u for u in utts if u.leg == P]
        assert f.evidence.text == person[seq].text and f.evidence.start_s == person[seq].start_s
        assert quote(f) == words, k
        assert 0.5 <= f.confidence <= 1.0


def test_summary_is_short_spanish_and_extractive(analyzer):
    utts = utterances(MIGRATION_SCRIPT)
    s = analyzer.analyze(CALL, utts).summary
    assert s.startswith("Se habló de salud, familia y ")
    assert "tristeza" in s
    sentences = [x for x in s.replace("».", "»|").split("|") if x.strip()]
    assert 2 <= len(sentences) <= 3
    # every quote is verbatim from the person's leg
    said = " ".join(u.text for u in utts if u.leg == P)
    for q in s.split("«")[1:]:
        assert q.split("»")[0] in said


def test_calm_script_is_neutral_and_invents_no_facts(analyzer):
    utts = utterances(CALM_SCRIPT)
    a = analyzer.analyze(CALL, utts)
    assert a.emotion_primary == "neutral"
    assert all(e == "neutral" for _, e in a.emotion_trend) and len(a.emotion_trend) == 3
    assert a.facts == ()
    assert a.behavioral_codes == ()
    assert "salud" not in a.topics and "soledad" not in a.topics
    # a trip to the market to buy food is about food (issue 11: such a call got no topic)
    assert a.topics == ("comida",)
    assert a.summary.startswith("Se habló de comida; el ánimo predominante de la persona fue neutral.")


@pytest.mark.parametrize("text", [
    "No tengo diabetes, gracias a Dios.",
    "Ya no tomo metformina.",
    "Nunca he tenido la presión alta.",
    "Mi hermana tiene diabetes, yo no.",
    "¿Tengo diabetes, doctor?",
])
def test_negated_or_not_first_person_health_gives_no_fact(text):
    assert [f for f in extract_facts(utterances([(P, text)])) if f.fact_type == "health"] == []


def test_negation_in_emotion_and_codes(analyzer):
    utts = utterances([(P, "No me siento sola, mis hijos me visitan seguido."), (P, "No estoy triste.")])
    a = analyzer.analyze(CALL, utts)
    assert "expresion_soledad" not in a.behavioral_codes
    assert a.emotion_primary == "neutral"
    assert [e for _, e in a.emotion_trend] == ["neutral", "neutral"]
    # the same words without the negation do count
    b = analyzer.analyze(CALL, utterances([(P, "Me siento sola, nadie me visita."), (P, "Estoy triste.")]))
    assert "expresion_soledad" in b.behavioral_codes
    assert b.emotion_primary in ("soledad", "tristeza")


def test_negation_window_stops_at_a_clause_break():
    f = fold("No, me siento sola")
    assert not is_negated(f, f.index("sola"))
    f = fold("Ya no me siento sola")
    assert is_negated(f, f.index("sola"))


def test_hedged_fact_has_lower_confidence():
    sure = extract_facts(utterances([(P, "Tengo azúcar.")]))
    hedged = extract_facts(utterances([(P, "Creo que tengo azúcar.")]))
    assert [(f.key, f.value) for f in sure] == [("condition.diabetes", "diabetes")]
    assert [(f.key, f.value) for f in hedged] == [("condition.diabetes", "diabetes")]
    assert hedged[0].confidence < sure[0].confidence * 0.7


def test_asr_confidence_scales_fact_confidence():
    clear = extract_facts(utterances([(P, "Tomo metformina.")], confidence=1.0))
    noisy = extract_facts(utterances([(P, "Tomo metformina.")], confidence=0.4))
    assert clear[0].confidence == pytest.approx(0.9)
    assert noisy[0].confidence == pytest.approx(0.9 * (0.25 + 0.75 * 0.4), abs=1e-3)


@pytest.mark.parametrize("text,expected", [
    ("Tengo un perrito que se llama Canelo.", {("pet", "dog_name.canelo", "Canelo"), ("pet", "pet.perrito", "perrito")}),
    ("Me acuesto a las diez y ceno a las ocho.", {("routine", "bedtime", "22:00"), ("routine", "dinner_time", "20:00")}),
    ("Me levanto como a las cinco y media de la mañana.", {("routine", "wake_up_time", "05:30")}),
    ("Mis nietos Luis y Pedro me visitan.", {("family", "grandson_name.luis", "Luis"),
                                            ("family", "grandson_name.pedro", "Pedro")}),
    ("No me gustan las tortillas frías.", {("preference", "dislikes.tortillas_frias", "tortillas frías")}),
    ("Soy diabética desde hace años.", {("health", "condition.diabetes", "diabetes")}),
    # no name: no name invented; where he went is a fact (issue 11 §3: places)
    ("Mi hijo se fue al norte.", {("family", "son_lives_in.estados_unidos", "Estados Unidos")}),
    ("Voy a misa los domingos.", {("routine", "mass_attendance", "los domingos")}),
    ("No me gusta el frío pero me gusta el sol.", {("preference", "dislikes.frio", "frío"),
                                                  ("preference", "likes.sol", "sol")}),
    ("Mi esposo se llamaba Juan, ya murió.", {("family", "husband_name.juan", "Juan")}),
    ("Sí, mi hija, gracias por llamar.", set()),  # "mi hija" said to Lupita: no name, no fact
])
def test_fact_patterns(text, expected):
    got = {(f.fact_type, f.key, f.value) for f in extract_facts(utterances([(P, text)]))}
    assert got == expected


def test_missing_asr_confidence_counts_as_certain(analyzer):
    u = [Utterance(CALL, P, 0, 0.0, 2.0, "Tomo metformina.", None)]
    [fact] = analyzer.analyze(CALL, u).facts
    assert fact.confidence == pytest.approx(0.9)


def test_facts_come_only_from_the_person(analyzer):
    a = analyzer.analyze(CALL, utterances([(L, "¿Usted tiene diabetes? Yo tomo metformina."), (P, "Sí, claro.")]))
    assert a.facts == ()


def test_input_order_does_not_matter_and_exact_duplicates_are_dropped(analyzer):
    utts = utterances(MIGRATION_SCRIPT)
    shuffled = list(reversed(utts)) + [utts[3]]
    assert analyzer.analyze(CALL, shuffled) == analyzer.analyze(CALL, utts)


def test_no_utterances(analyzer):
    a = analyzer.analyze(CALL, [])
    assert (a.topics, a.emotion_primary, a.emotion_trend, a.behavioral_codes, a.facts) == ((), "neutral", (), (), ())
    assert a.summary == "Llamada sin transcripción."
    assert a.notes == ("no speech from the person: emotion and facts not assessed",)


@pytest.mark.parametrize("bad,message", [
    (lambda u: [Utterance("other-call", P, 0, 0.0, 1.0, "hola")], "belongs to call 'other-call'"),
    (lambda u: [Utterance(CALL, "agent", 0, 0.0, 1.0, "hola")], "has leg 'agent'"),
    (lambda u: [Utterance(CALL, P, 0, 2.0, 1.0, "hola")], "spans 2.0..1.0 s"),
    (lambda u: [Utterance(CALL, P, 0, float("nan"), 1.0, "hola")], "start_s is nan"),
    (lambda u: [Utterance(CALL, P, -1, 0.0, 1.0, "hola")], "has seq -1"),
    (lambda u: [Utterance(CALL, P, 0, 0.0, 1.0, b"hola")], "text is a bytes"),
    (lambda u: [Utterance(CALL, P, 0, 0.0, 1.0, "hola", 1.5)], "confidence is 1.5"),
    (lambda u: [u[1], Utterance(CALL, P, 0, 9.0, 10.0, "otra cosa")], "repeats person seq 0 with different content"),
    (lambda u: ["hola"], "utterances[0] is a str, not an Utterance"),
])
def test_bad_input_is_refused_precisely(analyzer, bad, message):
    with pytest.raises(AnalyzerInputError, match=re.escape(message)):
        analyzer.analyze(CALL, bad(utterances(MIGRATION_SCRIPT)))


class BagOfWords:
    """A deterministic test embedder: unit-length hashed bag of folded words (no model)."""

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim))
        for i, t in enumerate(texts):
            for w in fold(t).replace(".", " ").replace(",", " ").split():
                out[i, hash(w) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_embedding_prototypes_are_a_second_topic_signal():
    utts = utterances([(L, "¿Cómo le fue anoche?"), (P, "Anoche tembló bien fuerte.")])
    without = LocalAnalyzer(embedding_threshold=0.3).analyze(CALL, utts)
    assert "clima" not in without.topics  # no catalogue keyword in "tembló"
    emb = BagOfWords()
    with_emb = LocalAnalyzer(embedder=emb, embedding_threshold=0.3).analyze(CALL, utts)
    assert "clima" in with_emb.topics  # close to the prototype "anoche tembló y me asusté"
    assert emb.calls == 2  # prototypes once, then the person's utterances


def test_a_broken_embedder_leaves_keywords_working():
    class Broken:
        def embed(self, texts):
            return np.zeros((len(texts) + 1, 3))

    a = LocalAnalyzer(embedder=Broken()).analyze(CALL, utterances(MIGRATION_SCRIPT))
    assert "salud" in a.topics
    assert a.notes == ("topic embeddings unavailable (ValueError); keywords only",)
