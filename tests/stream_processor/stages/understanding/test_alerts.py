"""Alert cues (stream_processor.stages.understanding.alerts): the packaged Spanish catalogue on scripted utterances.

No servers: the detector is plain code. Each "does not fire" test also proves that the same
words *do* fire without the negation / exclusion / past marker (or shows the status the detector
gave the match), so it cannot pass just because a pattern never matched.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from stream_processor.stages.understanding.alerts import (
    AlertDetector,
    AlertInputError,
    AlertSettings,
    CatalogueError,
    load_catalogue,
    normalise,
    parse_catalogue,
)
from stream_processor.contracts import AlertHit, Utterance

CALL = "call-alerts-0001"


@pytest.fixture(scope="module")
def detector() -> AlertDetector:
    return AlertDetector(load_catalogue())


@pytest.fixture(scope="module")
def raw_catalogue() -> dict:
    from importlib import resources

    return json.loads((resources.files("stream_processor") / "data" / "alert_cues.json").read_text("utf-8"))


def person(seq: int, text: str, start: float = 0.0) -> Utterance:
    return Utterance(CALL, "person", seq, start, start + 2.0, text)


def lupita(seq: int, text: str, start: float = 0.0) -> Utterance:
    return Utterance(CALL, "lupita", seq, start, start + 2.0, text)


def run_script(detector: AlertDetector, script: list[Utterance]) -> list[AlertHit]:
    seen: set[str] = set()
    hits: list[AlertHit] = []
    for u in script:
        hits += detector.scan(u, seen)
    return hits


def statuses(detector: AlertDetector, text: str) -> list[tuple[str, str, str]]:
    return [(m.cue_id, m.text, m.status) for m in detector.matches(text)]


# --- scripts -----------------------------------------------------------------------------------

ALERT_SCRIPT = [
    lupita(0, "Buenos días, doña Carmen, ¿cómo amaneció hoy?", 0.0),
    person(0, "Ay, Lupita, hoy en la mañana me caí en el baño.", 3.0),
    lupita(1, "¿Se pegó en la cabeza? ¿Le duele algo?", 6.5),
    person(1, "No sé... me aprieta el pecho y me falta el aire.", 9.0),
    lupita(2, "Voy a avisar a su hija ahora mismo.", 13.0),
    person(2, "Me sigue doliendo. Me aprieta el pecho otra vez.", 15.0),  # chest_pain again: raised once
]

CALM_SCRIPT = [
    "Hoy hizo un calor tremendo, pero en la tarde llovió un poquito.",
    "Hice caldo de pollo con arroz y tortillas hechas a mano.",
    "Mis nietos vinieron el domingo; el más chiquito ya camina solito.",
    "La vecina me cae muy bien, siempre me trae tamales.",
    "Me caigo de sueño en las tardes, después de la telenovela.",
    "Se me cayó el vaso en la cocina, pero no pasó nada.",
    "Me muero de hambre, ya quiero que sea la hora de la comida.",
    "Me pegó la gripa la semana pasada, pero ya estoy bien.",
    "El sol me pega directo en la ventana de la sala.",
    "Se me pegó la canción de la radio todo el día.",
    "No me dan de comer picante por la gastritis.",
    "Mi hija dice que me ahogo en un vaso de agua.",
    "Quisiera morirme de la vergüenza, se me olvidó su cumpleaños.",
    "Me siento muy sola desde que murió mi esposo.",  # loneliness is not an emergency cue
    "No sé dónde dejé mis lentes.",
    "Me duele la rodilla cuando subo las escaleras.",
]


# --- the alert script --------------------------------------------------------------------------


def test_alert_script_raises_exactly_the_expected_alerts_with_spans(detector):
    hits = run_script(detector, ALERT_SCRIPT)
    got = [(h.cue_id, h.severity, h.evidence.leg, h.evidence.seq,
            h.evidence.text[h.evidence.char_start:h.evidence.char_end]) for h in hits]
    assert got == [
        ("fall", "high", "person", 0, "me caí"),
        ("chest_pain", "critical", "person", 1, "me aprieta el pecho"),
        ("cant_breathe", "critical", "person", 1, "me falta el aire"),
    ]
    fall, chest, air = hits
    text0 = ALERT_SCRIPT[1].text
    assert (fall.evidence.char_start, fall.evidence.char_end) == (text0.index("me caí"), text0.index("me caí") + 6)
    text1 = ALERT_SCRIPT[3].text
    assert chest.evidence.char_start == text1.index("me aprieta")
    assert air.evidence.char_end == text1.index(" aire.") + len(" aire")
    assert all(h.call_id == CALL for h in hits)
    assert fall.evidence.text == text0 and (fall.evidence.start_s, fall.evidence.end_s) == (3.0, 5.0)


def test_seen_set_deduplicates_across_utterances_and_scans(detector):
    seen: set[str] = set()
    first = detector.scan(person(0, "Me aprieta el pecho."), seen)
    again = detector.scan(person(1, "Me duele el pecho, de verdad, mucho dolor en el pecho."), seen)
    assert [h.cue_id for h in first] == ["chest_pain"]
    assert again == []
    assert seen == {"chest_pain"}
    # without a seen set each call stands alone, but one utterance still gives one hit per cue
    alone = detector.scan(person(1, "Me duele el pecho, de verdad, mucho dolor en el pecho."))
    assert [h.cue_id for h in alone] == ["chest_pain"]


def test_calm_script_raises_nothing_including_false_friends(detector):
    hits = run_script(detector, [person(i, t, i * 3.0) for i, t in enumerate(CALM_SCRIPT)])
    assert hits == []
    # the false friends were seen and excluded, not missed by accident
    assert ("fall", "me caigo", "excluded") in [(c, t.lower(), s) for c, t, s in statuses(detector, CALM_SCRIPT[4])]
    assert [s for _, _, s in statuses(detector, CALM_SCRIPT[7])] == ["excluded"]   # me pegó la gripa
    assert [s for _, _, s in statuses(detector, CALM_SCRIPT[8])] == ["excluded"]   # el sol me pega
    assert [s for _, _, s in statuses(detector, CALM_SCRIPT[10])] == ["excluded"]  # de comer picante
    assert [s for _, _, s in statuses(detector, CALM_SCRIPT[12])] == ["excluded"]  # morirme de la vergüenza


@pytest.mark.parametrize("text, cue", [
    ("Me caí en la cocina y no me puedo levantar del piso.", "fall"),
    ("Se me doblaron las piernas en la calle.", "fall"),
    ("Me he caído dos veces esta semana.", "fall"),
    ("Tengo un dolor en el pecho muy feo.", "chest_pain"),
    ("No puedo respirar bien, Lupita.", "cant_breathe"),
    ("Ya no quiero vivir.", "suicidal_ideation"),
    ("Quisiera morirme, para qué sigo aquí.", "suicidal_ideation"),
    ("No sé dónde estoy.", "confusion"),
    ("No reconozco esta casa.", "confusion"),
    ("No puedo mover el brazo derecho.", "stroke_signs"),
    ("Se me durmió la cara, no me salen las palabras.", "stroke_signs"),
    ("Me corté y no deja de sangrar.", "severe_bleeding"),
    ("Mi yerno me pega cuando se enoja.", "abuse"),
    ("No me dan de comer desde ayer.", "neglect"),
    ("Nadie me da de comer.", "neglect"),
    ("¡Auxilio! Llamen a una ambulancia.", "help_request"),
    ("Necesito un ambulancia.", "help_request"),  # the article as Whisper often hears it
    ("Pidan la ambulancia, por favor.", "help_request"),
    ("ME CAI EN EL BANO", "fall"),  # no accents, upper case (ASR / typing variants)
])
def test_each_cue_fires_on_plain_statements(detector, text, cue):
    assert cue in [h.cue_id for h in detector.scan(person(0, text))]


# --- negation and past ---------------------------------------------------------------------------


@pytest.mark.parametrize("negated, plain, cue", [
    ("No me caí, gracias a Dios.", "Me caí, gracias a Dios.", "fall"),
    ("Nunca me he caído en la casa.", "Me he caído en la casa.", "fall"),
    ("No me duele el pecho.", "Me duele el pecho.", "chest_pain"),
    ("No tengo dolor en el pecho.", "Tengo dolor en el pecho.", "chest_pain"),
    ("No me falta el aire.", "Me falta el aire.", "cant_breathe"),
    ("No me quiero morir todavía.", "Me quiero morir.", "suicidal_ideation"),
    ("Nadie me pega, vivo tranquila.", "Me pega mi hijo.", "abuse"),
    ("No es una emergencia, pero quería contarle.", "Es una emergencia.", "help_request"),
])
def test_negated_cues_raise_nothing(detector, negated, plain, cue):
    assert detector.scan(person(0, negated)) == []
    assert [s for c, _, s in statuses(detector, negated) if c == cue] == ["negated"]
    assert [h.cue_id for h in detector.scan(person(0, plain))] == [cue]


def test_negation_stops_at_a_clause_boundary(detector):
    # "No," answers Lupita's question; the fall is affirmed
    assert [h.cue_id for h in detector.scan(person(0, "No, me caí en el patio."))] == ["fall"]
    # the negated fall is dropped, the chest pain after "pero" is not
    assert [h.cue_id for h in detector.scan(person(0, "No me caí, pero me duele mucho el pecho."))] == ["chest_pain"]
    # a cue that is itself a negative statement is not undone by a stutter
    assert [h.cue_id for h in detector.scan(person(0, "no no puedo respirar"))] == ["cant_breathe"]
    # a negator further back than the window (3 words) does not negate
    assert [h.cue_id for h in detector.scan(person(0, "No sé por qué me duele el pecho."))] == ["chest_pain"]


def test_remote_past_is_history_but_ongoing_and_recent_are_not(detector):
    assert detector.scan(person(0, "Hace dos años me caí en el mercado, pero ya estoy bien.")) == []
    assert [s for _, _, s in statuses(detector, "Hace dos años me caí en el mercado.")] == ["past"]
    assert detector.scan(person(0, "De niña me caí de un árbol.")) == []
    # "hace años que ..." = still going on
    assert [h.cue_id for h in detector.scan(person(0, "Hace años que me pegan."))] == ["abuse"]
    # a recent marker in the same sentence wins
    assert [h.cue_id for h in detector.scan(person(0, "Hace años me caí, y hoy me volví a caer."))] == ["fall"]
    # another sentence is another story
    text = "Hace años me caí. Ahorita me caí otra vez en la cocina."
    hits = detector.scan(person(0, text))
    assert [(h.cue_id, h.evidence.char_start) for h in hits] == [("fall", text.index("me caí otra"))]
    # suicidal ideation is never written off as history
    assert [h.cue_id for h in detector.scan(person(0, "Hace meses que quisiera morirme."))] == ["suicidal_ideation"]
    assert [h.cue_id for h in detector.scan(person(0, "Hace años quise morirme, y todavía quisiera morirme."))] \
        == ["suicidal_ideation"]


# --- legs and input ------------------------------------------------------------------------------


def test_lupita_leg_is_ignored(detector):
    text = "Si usted me dice que no puede respirar o que me caí, yo llamo a una ambulancia: me caí."
    assert detector.scan(lupita(0, text)) == []
    assert detector.scan(person(0, text)) != []  # the same words in the person's leg do fire


def test_spans_point_into_the_original_text(detector):
    text = "¡¡Ay!!  Lupita…  ME  APRIETA   el pecho, y NO PUEDO respirar."
    hits = detector.scan(person(0, text))
    assert [text[h.evidence.char_start:h.evidence.char_end] for h in hits] == \
        ["ME  APRIETA   el pecho", "NO PUEDO respirar"]


def test_empty_and_punctuation_only_utterances(detector):
    assert detector.scan(person(0, "")) == []
    assert detector.scan(person(0, "¿...? ¡!")) == []
    assert normalise("¿...?") == ("", [])


def test_bad_utterance_is_refused_precisely(detector):
    with pytest.raises(AlertInputError, match=r"unknown leg 'PERSON'"):
        detector.scan(Utterance(CALL, "PERSON", 0, 0.0, 1.0, "me caí"))
    with pytest.raises(AlertInputError, match="text must be a string"):
        detector.scan(Utterance(CALL, "person", 0, 0.0, 1.0, None))  # type: ignore[arg-type]


def test_normalise_maps_back_to_original_characters():
    text = "Año: ¡ME CAÍ!"
    norm, idx = normalise(text)
    assert norm == "ano . me cai ."
    assert len(idx) == len(norm)
    assert text[idx[norm.index("cai")]: idx[norm.index("cai") + 2] + 1] == "CAÍ"


# --- the catalogue ---------------------------------------------------------------------------------


def test_packaged_catalogue_loads_and_covers_the_required_cues():
    cat = load_catalogue()
    ids = {c.id for c in cat.cues}
    assert {"fall", "chest_pain", "cant_breathe", "suicidal_ideation", "confusion", "stroke_signs",
            "severe_bleeding", "abuse", "neglect"} <= ids
    assert "loneliness" not in ids
    assert cat.cue("suicidal_ideation").severity == "critical"
    assert cat.cue("suicidal_ideation").past_resolves is False


def _broken(raw: dict, edit) -> dict:
    data = copy.deepcopy(raw)
    edit(data)
    return data


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["cues"][0].update(severity="urgent"),
     r"cues\[0\] \(id 'fall'\): unknown severity 'urgent'; expected one of \['critical', 'high', 'medium'\]"),
    (lambda d: d["cues"][1].update(patterns=[]),
     r"cues\[1\] \(id 'chest_pain'\)\.patterns: is empty"),
    (lambda d: d["cues"][2].update(id="fall"),
     r"cues\[2\] \(id 'fall'\): duplicate id 'fall'"),
    (lambda d: d["cues"][0]["patterns"].append("me (cai"),
     r"cues\[0\] \(id 'fall'\)\.patterns\[\d+\] 'me \(cai': bad regular expression: missing \)"),
    (lambda d: d["cues"][0]["patterns"].append("(me)?"),
     r"cues\[0\] \(id 'fall'\)\.patterns\[12\] '\(me\)\?': matches the empty string"),
    (lambda d: d["cues"][0].pop("patterns"),
     r"cues\[0\] \(id 'fall'\): has no 'patterns'"),
    (lambda d: d["cues"][0].update(pattern=["x"]),
     r"cues\[0\] \(id 'fall'\): unknown key\(s\) \['pattern'\]"),
    (lambda d: d["cues"][0].update(id="Fall Risk"),
     r"cues\[0\] \(id 'Fall Risk'\): id must be snake_case"),
    (lambda d: d["cues"][3].update(exclude=["morir de (risa"]),
     r"cues\[3\] \(id 'suicidal_ideation'\)\.exclude\[0\] 'morir de \(risa': bad regular expression"),
    (lambda d: d.update(version=2), r"version: must be 1, got 2"),
    (lambda d: d.update(cues=[]), r"cues: must be a non-empty list"),
])
def test_broken_catalogue_gives_a_precise_error(raw_catalogue, edit, message):
    with pytest.raises(CatalogueError, match=r"^my-cues\.json: " + message):
        parse_catalogue(_broken(raw_catalogue, edit), source="my-cues.json")


def test_catalogue_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "cues.json"
    bad.write_text('{"version": 1, "cues": [\n  {"id": "fall",}\n]}', encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"cues\.json: not valid JSON: .* at line 2 column"):
        load_catalogue(bad)
    with pytest.raises(CatalogueError, match=r"nope\.json: no such file"):
        load_catalogue(tmp_path / "nope.json")


def test_a_custom_catalogue_from_settings_is_used(tmp_path, monkeypatch, raw_catalogue):
    custom = {"version": 1, "cues": [{"id": "dizziness", "severity": "medium",
                                      "description": "Mareo", "patterns": ["me (mareo|maree|siento mareada)"]}]}
    path = tmp_path / "cues.json"
    path.write_text(json.dumps(custom), encoding="utf-8")
    monkeypatch.setenv("LUPITA_ALERT_CUES_PATH", str(path))
    det = AlertDetector.from_settings(AlertSettings())
    hits = det.scan(person(0, "Hoy me mareé al levantarme, y me caí."))
    assert [(h.cue_id, h.severity) for h in hits] == [("dizziness", "medium")]  # "me caí" is not in this catalogue


# --- transcription uncertainty (issue 11 §2) ------------------------------------------------------


def heard(text: str, confidence: float = 1.0) -> Utterance:
    return Utterance(CALL, "person", 0, 0.0, 2.0, text, confidence)


def test_a_confident_negator_still_drops_the_cue(detector):
    assert detector.scan(heard("no me caí", 0.95)) == []
    assert detector.scan(heard("no me caí", 0.95), words=[("no", 0.97), ("me", 0.9), ("caí", 0.9)]) == []
    assert [h.cue_id for h in detector.scan(heard("me caí", 0.95))] == ["fall"]  # the words do fire


def test_a_doubtful_negator_raises_the_cue_to_verify_with_the_evidence(detector):
    [hit] = detector.scan(heard("no me caí", 0.95), words=[("no", 0.21), ("me", 0.9), ("caí", 0.9)])
    assert (hit.cue_id, hit.to_verify) == ("fall", True)
    assert "negator 'no'" in hit.verification and "0.21" in hit.verification
    # without word probabilities the utterance's confidence stands for every word
    [hit] = detector.scan(heard("no me caí", 0.3))
    assert hit.to_verify and "utterance confidence 0.30" in hit.verification
    # a confident negator in a doubtful utterance is believed when its own probability is known
    assert detector.scan(heard("no me caí", 0.3), words=[("no", 0.9), ("me", 0.2), ("caí", 0.2)]) == []


def test_the_stage_scans_a_final_with_its_transcript_word_probabilities(detector):
    """The worker path: a final TranscriptEvent's words reach the scan through
    CallUnderstanding.on_final (a doubtful 'no' raises the fall to verify; a sure one drops it)."""
    from lupita.v1 import events_pb2

    from stream_processor.records import LEG_BY_NAME
    from stream_processor.stages.understanding.agent import utterance_of, words_of
    from stream_processor.stages.understanding.core import CallUnderstanding

    def final(seq: int, no_probability: float) -> events_pb2.TranscriptEvent:
        ev = events_pb2.TranscriptEvent(call_id=CALL, leg=LEG_BY_NAME["person"], seq=seq, text="no me caí",
                                        segment_start_us=1_000_000, segment_end_us=2_000_000, confidence=0.95)
        for word, p in (("no", no_probability), ("me", 0.9), ("caí", 0.9)):
            ev.words.add(word=word, start_us=1_000_000, end_us=1_500_000, probability=p)
        return ev

    assert words_of(events_pb2.TranscriptEvent(call_id=CALL, text="hola")) is None  # no words: none given
    cu = CallUnderstanding(CALL)
    cu.start(started_at_us=1, phone_hash=None, region=None, consent=True)
    assert cu.on_final(utterance_of(final(0, 0.97)), detector, words=words_of(final(0, 0.97))) == []
    [hit] = cu.on_final(utterance_of(final(1, 0.21)), detector, words=words_of(final(1, 0.21)))
    assert (hit.cue_id, hit.to_verify) == ("fall", True) and "0.21" in hit.verification


def test_an_implausible_negator_does_not_silence_a_fall(detector):
    # Whisper splits "anoche" and "nomás": the "no" is a piece of another word
    for text, joined in (("a no che me caí en el baño", "anoche"), ("no más me caí tantito", "nomas")):
        [hit] = detector.scan(heard(text, 0.95))
        assert (hit.cue_id, hit.to_verify) == ("fall", True), text
        assert f"'{joined}'" in hit.verification


def test_a_doubtful_past_marker_raises_the_cue_to_verify(detector):
    assert [m.status for m in detector.matches("hace muchos años me caí", confidence=0.9)] == ["past"]
    [m] = detector.matches("hace muchos años me caí", confidence=0.2)
    assert (m.status, m.to_verify) == ("hit", True) and "past marker" in m.verification


def test_figurative_uses_stay_excluded_however_doubtful(detector):
    for text in ("me caí muy bien con la vecina", "me caigo de sueño", "me duele que no venga"):
        assert detector.scan(heard(text, 0.1)) == [], text


def test_cue_words_heard_one_edit_away_are_read_and_marked_to_verify(detector):
    [hit] = detector.scan(heard("no puedo respriar", 0.9))
    assert (hit.cue_id, hit.to_verify) == ("cant_breathe", True)
    assert "heard 'respriar', read as 'respirar'" in hit.verification
    assert hit.evidence.text[hit.evidence.char_start:hit.evidence.char_end] == "no puedo respriar"
    [hit] = detector.scan(heard("necesito una ambulansia", 0.9))
    assert hit.cue_id == "help_request" and hit.to_verify
    # one short word alone is not guessed (a whole phrase may be: see the approximate phrases)
    words_only = AlertDetector(load_catalogue(), approximate_phrases=False)
    assert words_only.scan(heard("me duele el pecjo", 0.9)) == []
    [m] = detector.matches("hace muchos años me caí")
    assert m.status == "past" and "muchos" in m.reason


def test_a_cue_phrase_heard_approximately_is_raised_to_verify_with_what_was_heard(detector):
    # every long word of the phrase sounds alike ("pesho" for "pecho"; "mober"/"braso" spell the
    # same sounds): raised, to verify, with the words heard and the phrase they were read as
    [hit] = detector.scan(heard("ay me duele mucho el pesho", 0.9))
    assert (hit.cue_id, hit.severity, hit.to_verify) == ("chest_pain", "critical", True)
    assert "heard 'me duele mucho el pesho', read as 'me duele … el pecho'" in hit.verification
    assert hit.evidence.text[hit.evidence.char_start:hit.evidence.char_end] == "me duele mucho el pesho"
    [hit] = detector.scan(heard("Ya no puedo mober el braso.", 0.9))
    assert (hit.cue_id, hit.to_verify) == ("stroke_signs", True)
    # one short word heard as another is tolerated, a second one is not
    assert [h.cue_id for h in detector.scan(heard("tengo un dolor fuerte en la pecho", 0.9))] == ["chest_pain"]
    assert detector.scan(heard("tengo un dolor fuerte un la pecho", 0.9)) == []


def test_an_approximate_phrase_needs_every_long_word_alike(detector):
    for text in ("me duele la espalda", "me huele a tierra mojada", "el pecho del pollo", "me fui al pueblo ayer",
                 "no puedo mover el carro"):
        assert detector.scan(heard(text, 0.9)) == [], text


def test_an_approximate_phrase_goes_through_the_negators_and_past_markers(detector):
    assert [m.status for m in detector.matches("no me duele nada el pesho", confidence=0.95)] == ["negated"]
    [m] = detector.matches("hace muchos años me duele el pesho", confidence=0.95)
    assert m.status == "past"
    # a doubtful negator does not drop it either: both doubts are in the evidence
    [m] = detector.matches("no me duele el pesho", confidence=0.2)
    assert (m.status, m.to_verify) == ("hit", True)
    assert "negator 'no'" in m.verification and "read as" in m.verification


def test_a_figurative_phrase_heard_approximately_makes_the_cue_to_verify_not_dropped(detector):
    assert detector.scan(heard("me caigo de sueño", 0.9)) == []  # heard as written: excluded
    [hit] = detector.scan(heard("me caigo di sueño", 0.9))
    assert (hit.cue_id, hit.to_verify) == ("fall", True)
    assert "resembles the figurative 'me caigo de sueno'" in hit.verification


def test_approximate_phrases_off(raw_catalogue):
    plain = AlertDetector(load_catalogue(), approximate_phrases=False)
    assert plain.scan(heard("ay me duele mucho el pesho", 0.9)) == []
    assert [h.to_verify for h in plain.scan(heard("me caigo di sueño", 0.9))] == [False]
    data = copy.deepcopy(raw_catalogue)
    data["uncertainty"]["approximate_phrase_min_score"] = 0
    assert AlertDetector(parse_catalogue(data)).scan(heard("ay me duele mucho el pesho", 0.9)) == []


def test_pattern_expansion_covers_groups_and_gaps_and_skips_other_constructs():
    from stream_processor.stages.understanding.alerts import _expand, _phrases, _Unsupported

    assert sorted(_expand("me (cai|caigo)s?")) == sorted(["me cai", "me cais", "me caigo", "me caigos"])
    assert [e.split() for e in _expand("me duele ... el pecho")] == [["me", "duele", "…", "el", "pecho"]]
    with pytest.raises(_Unsupported):
        _expand("hace (\\w+ ){0,2}anos")
    # single long words are left to the word-level reading; unsupported patterns are skipped
    assert _phrases(["auxilio", "hace (\\w+ ){0,2}anos", "me ahogo"]) == ()
    assert _phrases(["dolor (en el|de) pecho"]) == (("dolor", "de", "pecho"), ("dolor", "en", "el", "pecho"))


def test_uncertainty_off_is_the_plain_catalogue(detector):
    plain = AlertDetector(load_catalogue(), uncertainty=False)
    assert plain.scan(heard("no me caí", 0.1)) == []
    assert plain.scan(heard("a no che me caí", 0.9)) == []
    assert plain.scan(heard("no puedo respriar", 0.9)) == []
    assert [h.to_verify for h in plain.scan(heard("me caí", 0.1))] == [False]


def test_alert_hit_stays_backward_compatible():
    from stream_processor.contracts import EvidenceSpan

    hit = AlertHit(CALL, "fall", "high", EvidenceSpan("person", 0, 0.0, 1.0, "me caí"))
    assert (hit.to_verify, hit.verification) == (False, "")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["uncertainty"].update(severities=["urgent"]), "uncertainty.severities"),
    (lambda c: c["uncertainty"].update(word_probability_below=1.5), "uncertainty.word_probability_below"),
    (lambda c: c["uncertainty"].update(negator_lookalikes=["a noche"]), "uncertainty.negator_lookalikes"),
    (lambda c: c["uncertainty"].update(approximate_min_length=2), "uncertainty.approximate_min_length"),
    (lambda c: c["uncertainty"].update(fuzzy=True), "unknown key(s) ['fuzzy']"),
    (lambda c: c["uncertainty"].update(approximate_phrase_min_score=0.3), "uncertainty.approximate_phrase_min_score"),
    (lambda c: c["uncertainty"].update(approximate_phrase_min_score="0.8"),
     "uncertainty.approximate_phrase_min_score"),
])
def test_broken_uncertainty_gives_a_precise_error(raw_catalogue, edit, message):
    data = copy.deepcopy(raw_catalogue)
    edit(data)
    with pytest.raises(CatalogueError, match=re.escape(message)):
        parse_catalogue(data, source="cues.json")


def test_a_catalogue_without_uncertainty_believes_every_negator(raw_catalogue):
    data = copy.deepcopy(raw_catalogue)
    del data["uncertainty"]
    d = AlertDetector(parse_catalogue(data))
    assert d.scan(heard("no me caí", 0.1)) == []
    assert d.scan(heard("no puedo respriar", 0.9)) == []
