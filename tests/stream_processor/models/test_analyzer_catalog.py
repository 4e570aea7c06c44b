"""Catalogues (data files) load with validation and broken ones fail precisely; the CallAnalysis
schema and its validator; the analyzer settings and factory."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream_processor.models.analyzer import (
    AnalyzerSettings,
    CatalogueError,
    FallbackAnalyzer,
    LocalAnalyzer,
    build_analyzer,
    load_catalogues,
)
from stream_processor.models.analyzer.catalog import load_codes, load_emotions, load_topics
from stream_processor.models.analyzer.schema import analysis_schema, schema_errors, to_payload, validate
from stream_processor.contracts import Utterance

DATA = resources.files("stream_processor") / "data"


def packaged(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def write(tmp_path: Path, name: str, data) -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return p


# --- the packaged catalogues -------------------------------------------------------------------


def test_packaged_catalogues_load():
    cat = load_catalogues()
    assert {"salud", "familia", "comida", "sueno", "clima", "soledad", "migracion", "dinero", "religion",
            "recuerdos"} <= set(cat.topics.ids)
    assert {"echo_open_question", "duelo_migratorio"} <= set(cat.codes.ids)
    assert cat.emotions.ids == ("alegria", "tristeza", "miedo", "enojo", "soledad", "neutral")
    for code in cat.codes.codes:
        assert code.description and code.leg in ("lupita", "person")
    for topic in cat.topics.topics:
        assert topic.prototypes, f"topic {topic.id} has no prototype sentences for the embedding signal"


# --- broken catalogues -------------------------------------------------------------------------


def test_bad_regex_names_file_place_and_reason(tmp_path):
    data = packaged("behavioral_codes.json")
    data["codes"][1]["trigger"]["patterns"][1] = r"\bmi (hijo|hija se fue"
    path = write(tmp_path, "codes.json", data)
    with pytest.raises(CatalogueError) as e:
        load_codes(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: codes[1].trigger.patterns: pattern [1] ")
    assert "is not a valid regular expression (missing ), unterminated subpattern" in msg


def test_duplicate_topic_id(tmp_path):
    data = packaged("topics.json")
    data["topics"][3]["id"] = "salud"
    with pytest.raises(CatalogueError, match=r"topics\.json: \(top level\): topics\[3\]: duplicate id 'salud'"):
        load_topics(write(tmp_path, "topics.json", data))


def test_misspelt_key_is_refused(tmp_path):
    data = packaged("behavioral_codes.json")
    data["codes"][0]["descripton"] = data["codes"][0].pop("description")
    with pytest.raises(CatalogueError) as e:
        load_codes(write(tmp_path, "codes.json", data))
    assert "codes[0].description: Field required" in str(e.value)
    assert "codes[0].descripton: Extra inputs are not permitted" in str(e.value)


def test_unknown_trigger_type(tmp_path):
    data = packaged("behavioral_codes.json")
    data["codes"][2]["trigger"]["type"] = "keywords"
    with pytest.raises(CatalogueError, match=r"codes\[2\]\.trigger: Input tag 'keywords' found using 'type' "
                                             r"does not match any of the expected tags"):
        load_codes(write(tmp_path, "codes.json", data))


def test_echo_trigger_must_be_on_lupitas_leg(tmp_path):
    data = packaged("behavioral_codes.json")
    data["codes"][0]["leg"] = "person"
    with pytest.raises(CatalogueError, match=r"codes\[0\]: an echo_open_question trigger looks at Lupita's "
                                             r"questions: leg must be 'lupita'"):
        load_codes(write(tmp_path, "codes.json", data))


def test_bad_emotion_lexicon(tmp_path):
    data = packaged("emotions.json")
    data["negated_as"] = {"alegria": "melancolia"}
    with pytest.raises(CatalogueError, match=r"negated_as: 'alegria' -> 'melancolia' names an emotion that is "
                                             r"not in 'emotions'"):
        load_emotions(write(tmp_path, "emotions.json", data))
    data = packaged("emotions.json")
    data["emotions"][0]["terms"] = []
    with pytest.raises(CatalogueError, match=r"emotions\[0\]\.terms: Tuple should have at least 1 item"):
        load_emotions(write(tmp_path, "emotions.json", data))


def test_empty_keyword_and_bad_id(tmp_path):
    data = packaged("topics.json")
    data["topics"][0]["keywords"][2] = " * "
    data["topics"][1]["id"] = "Familia Extendida"
    with pytest.raises(CatalogueError) as e:
        load_topics(write(tmp_path, "topics.json", data))
    assert "topics[0].keywords: keyword [2] is empty" in str(e.value)
    assert "topics[1].id: String should match pattern" in str(e.value)


def test_not_json_missing_file_wrong_top_level(tmp_path):
    with pytest.raises(CatalogueError, match=r"topics\.json: not valid JSON at line 2 column 1"):
        load_topics(write(tmp_path, "topics.json", '{"version": 1,\n}'))
    with pytest.raises(CatalogueError, match=r"nope\.json: no such file"):
        load_topics(tmp_path / "nope.json")
    with pytest.raises(CatalogueError, match=r"the top level must be a JSON object, got list"):
        load_topics(write(tmp_path, "topics.json", "[]"))
    with pytest.raises(CatalogueError, match=r"version: Input should be 1"):
        load_topics(write(tmp_path, "topics.json", {**packaged("topics.json"), "version": 2}))


def test_settings_paths_reach_the_factory(tmp_path, monkeypatch):
    data = packaged("topics.json")
    data["topics"] = [{"id": "futbol", "label": "fútbol", "keywords": ["futbol", "partido", "gol*"]}]
    monkeypatch.setenv("LUPITA_ANALYZER_TOPICS_PATH", str(write(tmp_path, "topics.json", data)))
    analyzer = build_analyzer(AnalyzerSettings())
    assert isinstance(analyzer, LocalAnalyzer)
    u = [Utterance("c", "person", 0, 0.0, 2.0, "Ayer vi el partido, metieron tres goles.")]
    assert analyzer.analyze("c", u).topics == ("futbol",)
    monkeypatch.setenv("LUPITA_ANALYZER_CODES_PATH", str(write(tmp_path, "codes.json", "{")))
    with pytest.raises(CatalogueError, match="codes.json: not valid JSON"):
        build_analyzer(AnalyzerSettings())


# --- settings ----------------------------------------------------------------------------------


def test_anthropic_backend_needs_a_key_and_never_shows_it(monkeypatch):
    monkeypatch.setenv("LUPITA_ANALYZER_BACKEND", "anthropic")
    with pytest.raises(ValidationError, match="LUPITA_ANALYZER_ANTHROPIC_API_KEY"):
        AnalyzerSettings()
    secret = "sk-ant-test-do-not-print-0123456789"
    monkeypatch.setenv("LUPITA_ANALYZER_ANTHROPIC_API_KEY", secret)
    monkeypatch.setenv("LUPITA_ANALYZER_ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    s = AnalyzerSettings()
    assert secret not in repr(s) and secret not in str(s.model_dump())
    analyzer = build_analyzer(s)
    assert isinstance(analyzer, FallbackAnalyzer) and isinstance(analyzer.fallback, LocalAnalyzer)
    analyzer.close()
    monkeypatch.setenv("LUPITA_ANALYZER_MAX_TOKENS", "10")
    with pytest.raises(ValidationError) as e:
        AnalyzerSettings()
    assert "analyzer_max_tokens" in str(e.value) and secret not in str(e.value)


# --- schema ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema():
    return analysis_schema(load_catalogues())


def local_payload():
    utts = [
        Utterance("c", "lupita", 0, 0.0, 2.0, "¿Cómo está, doña Rosa?"),
        Utterance("c", "person", 0, 2.5, 6.0, "Triste, mi hijo se fue al norte. Tomo metformina."),
    ]
    return to_payload(LocalAnalyzer().analyze("c", utts), utts)


def test_local_analysis_matches_the_schema(schema):
    payload = local_payload()
    assert payload["facts"] and payload["topics"]
    assert validate(payload, schema) == []
    assert schema_errors(payload, schema) == []


def test_validator_reports_place_and_rule_not_value(schema):
    bad = copy.deepcopy(local_payload())
    bad["topics"] = ["salud", "salud", "futbol"]
    bad["emotion_primary"] = "euforia"
    bad["facts"][0]["confidence"] = 1.7
    bad["facts"][0]["key"] = "Medication Name"
    bad["facts"][0]["evidence"]["seq"] = True  # a boolean is not an integer
    bad["facts"][0]["evidence"]["extra"] = 1
    del bad["summary"]
    bad["mood"] = "x"
    errors = validate(bad, schema)
    assert sorted(errors) == sorted([
        "topics[1]: duplicate item",
        "topics[2]: not one of the allowed values (13 allowed)",
        "emotion_primary: not one of the allowed values (6 allowed)",
        "facts[0].key: does not match the pattern " + schema["properties"]["facts"]["items"]["properties"]["key"]["pattern"],
        "facts[0].confidence: greater than the maximum 1",
        "facts[0].evidence.seq: expected integer, got boolean",
        "facts[0].evidence.extra: property not allowed",
        "summary: required property missing",
        "mood: property not allowed",
    ])
    assert not any("euforia" in e or "futbol" in e for e in errors)


def test_validator_refuses_schema_keywords_it_does_not_implement():
    with pytest.raises(ValueError, match=r"keywords this validator does not implement: \['oneOf'\]"):
        validate({}, {"type": "object", "oneOf": []})


def test_validator_agrees_with_the_reference_jsonschema(schema):
    import jsonschema  # a test dependency (pyproject extras "test")
    good = local_payload()
    bad = copy.deepcopy(good)
    bad["facts"][0]["confidence"] = -0.1
    v = jsonschema.Draft202012Validator(schema)
    assert v.is_valid(good) and not v.is_valid(bad)
    assert validate(good, schema) == [] and validate(bad, schema) != []
