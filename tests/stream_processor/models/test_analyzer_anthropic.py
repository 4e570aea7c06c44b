"""The Anthropic analyzer against a local HTTP server speaking the documented Messages API.

The server (``http.server`` in a thread, 127.0.0.1, ephemeral port) records each request and
answers from a per-test script: a ``message`` with a ``tool_use`` content block, 429 with
Retry-After, 500/529, a body that is not JSON, a tool input that breaks the schema, a refusal,
401. The real ``anthropic`` client is used (``base_url`` pointed at the server, its own retries
off). Retry waits are recorded instead of slept (the policy's ``sleep`` hook), so Retry-After
values are asserted exactly and the tests stay fast. Fallbacks use the real local analyzer.
"""

from __future__ import annotations

import json
import logging
import socket

import pytest
from pydantic import SecretStr

from stream_processor.models.analyzer import (
    AnalyzerBackendError,
    AnalyzerSettings,
    FallbackAnalyzer,
    LocalAnalyzer,
    RetryPolicy,
    build_analyzer,
    load_catalogues,
)
from stream_processor.models.analyzer.anthropic_backend import TOOL_NAME, AnthropicAnalyzer
from stream_processor.contracts import Utterance

from sp_http import ScriptedApi

KEY = "sk-ant-test-0123456789abcdef-secret"
MODEL = "claude-sonnet-4-5"
CALL = "call-analyzer-anthropic"
L, P = "lupita", "person"

SCRIPT = [
    (L, "Buenos días, doña Carmen. ¿Cómo amaneció?"),
    (P, "Un poco triste. Mi hijo Miguel se fue al norte hace diez años."),
    (L, "¿Y cómo se siente desde que su hijo Miguel se fue al norte?"),
    (P, "Lo extraño mucho. Tomo metformina porque tengo diabetes."),
]


def utterances() -> list[Utterance]:
    out, seq, t = [], {L: 0, P: 0}, 0.0
    for leg, text in SCRIPT:
        out.append(Utterance(CALL, leg, seq[leg], t, t + 3.0, text))
        seq[leg] += 1
        t += 3.5
    return out


TOOL_INPUT = {
    "topics": ["migracion", "familia", "salud"],
    "emotion_primary": "tristeza",
    "emotion_trend": [{"seq": 0, "emotion": "tristeza"}, {"seq": 1, "emotion": "tristeza"}],
    "behavioral_codes": ["duelo_migratorio", "echo_open_question"],
    "facts": [
        {"type": "health", "key": "medication.metformina", "value": "metformina", "confidence": 0.95,
         "evidence": {"leg": "person", "seq": 1, "quote": "Tomo metformina"}},
        {"type": "family", "key": "son_name.miguel", "value": "Miguel", "confidence": 0.9,
         "evidence": {"leg": "person", "seq": 0, "quote": "mi hijo miguel"}},  # case differs: still found
        {"type": "health", "key": "condition.diabetes", "value": "diabetes", "confidence": 0.9,
         "evidence": {"leg": "person", "seq": 1, "quote": "padece diabetes"}},  # not verbatim
    ],
    "summary": "Doña Carmen extraña a su hijo Miguel, que migró al norte. Toma metformina para la diabetes.",
}


def message(tool_input: object = TOOL_INPUT, *, stop_reason: str = "tool_use", blocks: list | None = None) -> dict:
    content = blocks if blocks is not None else [
        {"type": "text", "text": "Registro el análisis de la llamada."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": TOOL_NAME, "input": tool_input},
    ]
    return {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929", "content": content, "stop_reason": stop_reason,
            "stop_sequence": None, "usage": {"input_tokens": 1873, "output_tokens": 412}}


def error(kind: str, text: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": text}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


# --- the server --------------------------------------------------------------------------------


class FakeAnthropic(ScriptedApi):
    """The Messages API: JSON bodies, a request-id on every answer; an unscripted request gets
    a 599 (which fails the test through the fallback note)."""

    def __init__(self) -> None:
        super().__init__(parse_body=json.loads, default_headers={"request-id": "req_test"},
                         unscripted=json.dumps(error("api_error", "unscripted request")).encode())


@pytest.fixture(scope="module")
def api():
    server = FakeAnthropic()
    yield server
    server.close()


@pytest.fixture
def fake(api):
    api.reset()
    yield api
    assert not api.script, "scripted answers left unused"


@pytest.fixture(scope="module")
def catalogues():
    return load_catalogues()


@pytest.fixture(scope="module")
def local(catalogues) -> LocalAnalyzer:
    return LocalAnalyzer(catalogues)


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make(fake, catalogues, local, sleeps, *, attempts: int = 3, timeout_s: float = 10.0,
         max_retry_after_s: float = 30.0, url: str | None = None, max_chars: int = 60000) -> FallbackAnalyzer:
    retry = RetryPolicy(max_attempts=attempts, base_delay_s=0.25, max_delay_s=1.0,
                        max_retry_after_s=max_retry_after_s, sleep=sleeps.append)
    cloud = AnthropicAnalyzer(api_key=SecretStr(KEY), catalogues=catalogues, base_url=url or fake.url, model=MODEL,
                              max_tokens=2048, timeout_s=timeout_s, max_transcript_chars=max_chars, retry=retry)
    return FallbackAnalyzer(cloud, local)


def fallback_note(result) -> str:
    notes = [n for n in result.notes if n.startswith("fallback: ")]
    assert len(notes) == 1, result.notes
    return notes[0]


# --- success -----------------------------------------------------------------------------------


def test_request_is_the_documented_wire_format(fake, catalogues, local, sleeps):
    fake.answer(200, message())
    analyzer = make(fake, catalogues, local, sleeps)
    analyzer.analyze(CALL, utterances())
    [req] = fake.requests
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["content-type"].startswith("application/json")
    body = req.body
    assert body["model"] == MODEL and body["max_tokens"] == 2048 and body["temperature"] == 0.0
    [tool] = body["tools"]
    assert tool["name"] == TOOL_NAME
    assert tool["input_schema"] == analyzer.primary.schema
    assert tool["input_schema"]["properties"]["topics"]["items"]["enum"] == list(catalogues.topics.ids)
    assert body["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
    assert "echo_open_question" in body["system"] and "duelo_migratorio" in body["system"]
    [msg] = body["messages"]
    assert msg["role"] == "user"
    assert "[person 0 | 3.5-6.5 s] Un poco triste. Mi hijo Miguel se fue al norte hace diez años." in msg["content"]
    # only the utterances go out: no call id (and there is no phone number anywhere to send)
    assert CALL not in json.dumps(body)


def test_success_is_mapped_to_call_analysis(fake, catalogues, local, sleeps):
    fake.answer(200, message())
    utts = utterances()
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utts)
    assert a.analyzer == "anthropic"
    assert a.topics == ("migracion", "familia", "salud")
    assert a.emotion_primary == "tristeza"
    assert a.emotion_trend == ((3.5, "tristeza"), (10.5, "tristeza"))
    assert a.behavioral_codes == ("echo_open_question", "duelo_migratorio")  # catalogue order
    assert a.summary.startswith("Doña Carmen extraña a su hijo Miguel")
    facts = {f.key: f for f in a.facts}
    med = facts["medication.metformina"]
    assert (med.fact_type, med.value, med.confidence) == ("health", "metformina", 0.95)
    assert (med.evidence.leg, med.evidence.seq, med.evidence.start_s) == (P, 1, 10.5)
    assert med.evidence.text[med.evidence.char_start:med.evidence.char_end] == "Tomo metformina"
    son = facts["son_name.miguel"].evidence
    assert son.text[son.char_start:son.char_end] == "Mi hijo Miguel"
    diabetes = facts["condition.diabetes"].evidence
    assert (diabetes.char_start, diabetes.char_end) == (0, len(utts[3].text))
    assert a.notes == ("facts[2]: quote not found in person utterance 1; the evidence is the whole utterance",)
    assert sleeps == []


def test_long_transcript_is_cut_and_noted(fake, catalogues, local, sleeps):
    tool_input = {**TOOL_INPUT, "emotion_trend": [{"seq": 0, "emotion": "tristeza"}], "facts": []}
    fake.answer(200, message(tool_input))
    a = make(fake, catalogues, local, sleeps, max_chars=170).analyze(CALL, utterances())
    sent = fake.requests[0].body["messages"][0]["content"]
    assert "[person 0 |" in sent and "[lupita 1 |" not in sent
    assert a.analyzer == "anthropic"
    assert a.notes == ("transcript truncated for anthropic: 2 of 4 utterances sent",)


# --- retries -----------------------------------------------------------------------------------


def test_429_with_retry_after_then_success(fake, catalogues, local, sleeps):
    fake.answer(429, error("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
                retry_after="2")
    fake.answer(200, message())
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    assert a.analyzer == "anthropic" and a.topics == ("migracion", "familia", "salud")
    assert sleeps == [2.0]
    assert len(fake.requests) == 2 and fake.requests[0].body == fake.requests[1].body


def test_529_overloaded_is_retried(fake, catalogues, local, sleeps):
    fake.answer(529, error("overloaded_error", "Overloaded"))
    fake.answer(200, message())
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    assert a.analyzer == "anthropic"
    assert len(sleeps) == 1 and 0.2 <= sleeps[0] <= 0.3  # backoff of 0.25 s +- 20 % jitter


def test_retry_after_over_the_limit_falls_back_at_once(fake, catalogues, local, sleeps):
    fake.answer(429, error("rate_limit_error", "Rate limited"), retry_after="120")
    a = make(fake, catalogues, local, sleeps, max_retry_after_s=30).analyze(CALL, utterances())
    assert a.analyzer == "anthropic->local"
    assert fallback_note(a) == ("fallback: anthropic HTTP 429: rate_limit_error: Rate limited; "
                                "Retry-After 120 s exceeds the 30 s limit")
    assert sleeps == [] and len(fake.requests) == 1


def test_500_repeatedly_falls_back_to_local(fake, catalogues, local, sleeps):
    for _ in range(3):
        fake.answer(500, error("api_error", "Internal server error"))
    utts = utterances()
    a = make(fake, catalogues, local, sleeps, attempts=3).analyze(CALL, utts)
    assert a.analyzer == "anthropic->local"
    assert fallback_note(a) == "fallback: anthropic HTTP 500: api_error: Internal server error (after 3 attempts)"
    assert len(fake.requests) == 3 and len(sleeps) == 2
    # the answer is the local analyzer's own analysis of the same call, plus the note
    own = local.analyze(CALL, utts)
    assert (a.topics, a.emotion_primary, a.behavioral_codes, a.facts, a.summary) == \
        (own.topics, own.emotion_primary, own.behavioral_codes, own.facts, own.summary)
    assert {"migracion", "salud"} <= set(a.topics) and "duelo_migratorio" in a.behavioral_codes


def test_401_is_not_retried_and_falls_back(fake, catalogues, local, sleeps):
    fake.answer(401, error("authentication_error", "invalid x-api-key"))
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    assert a.analyzer == "anthropic->local"
    assert fallback_note(a) == ("fallback: anthropic HTTP 401: credentials refused (authentication_error: invalid "
                                "x-api-key); check LUPITA_ANALYZER_ANTHROPIC_API_KEY")
    assert len(fake.requests) == 1 and sleeps == []


def test_400_is_not_retried(fake, catalogues, local, sleeps):
    fake.answer(400, error("invalid_request_error", "max_tokens: field required"))
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    assert fallback_note(a) == "fallback: anthropic HTTP 400: invalid_request_error: max_tokens: field required"
    assert len(fake.requests) == 1


# --- bad answers -------------------------------------------------------------------------------


def test_malformed_json_body_falls_back(fake, catalogues, local, sleeps):
    body = b'{"id": "msg_01", "type": "message", "content": ['
    fake.answer(200, body)
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    assert a.analyzer == "anthropic->local"
    assert fallback_note(a) == ("fallback: anthropic HTTP 200: answered 200 with a body that is not JSON "
                                f"({len(body)} bytes)")
    assert len(fake.requests) == 1


def test_schema_invalid_tool_input_falls_back(fake, catalogues, local, sleeps):
    bad = json.loads(json.dumps(TOOL_INPUT))
    bad["topics"] = ["futbol"]
    bad["facts"][0]["confidence"] = 1.7
    del bad["summary"]
    fake.answer(200, message(bad))
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    assert a.analyzer == "anthropic->local"
    note = fallback_note(a)
    assert note.startswith("fallback: anthropic: tool input does not match the CallAnalysis schema: ")
    for problem in ("summary: required property missing", "topics[0]: not one of the allowed values",
                    "facts[0].confidence: greater than the maximum 1"):
        assert problem in note
    assert "futbol" not in note  # places and rules, never values
    assert len(fake.requests) == 1


def test_tool_input_citing_a_missing_utterance_falls_back(fake, catalogues, local, sleeps):
    bad = json.loads(json.dumps(TOOL_INPUT))
    bad["facts"][0]["evidence"]["seq"] = 7
    bad["emotion_trend"][0]["seq"] = 9
    fake.answer(200, message(bad))
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    assert fallback_note(a) == ("fallback: anthropic: tool input cites utterances that are not in the call: "
                                "emotion_trend[0].seq: no person utterance with this seq; "
                                "facts[0].evidence: no person utterance with this seq")


def test_refusal_falls_back(fake, catalogues, local, sleeps):
    fake.answer(200, message(stop_reason="refusal", blocks=[{"type": "text", "text": "No puedo ayudar con eso."}]))
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    assert fallback_note(a) == "fallback: anthropic: the model refused (stop_reason 'refusal')"


def test_text_only_answer_falls_back(fake, catalogues, local, sleeps):
    fake.answer(200, message(stop_reason="end_turn", blocks=[{"type": "text", "text": "Aquí está el análisis..."}]))
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    assert fallback_note(a) == (f"fallback: anthropic: no {TOOL_NAME} tool_use block in the answer "
                                "(stop_reason 'end_turn', content blocks: text)")


def test_truncated_tool_input_falls_back(fake, catalogues, local, sleeps):
    fake.answer(200, message({"topics": ["salud"]}, stop_reason="max_tokens"))
    a = make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    assert fallback_note(a) == ("fallback: anthropic: the tool input was cut off at max_tokens "
                                "(raise LUPITA_ANALYZER_MAX_TOKENS)")


def test_timeout_falls_back(fake, catalogues, local, sleeps):
    fake.answer(200, message(), delay=1.5)
    a = make(fake, catalogues, local, sleeps, attempts=1, timeout_s=0.3).analyze(CALL, utterances())
    assert a.analyzer == "anthropic->local"
    assert fallback_note(a) == "fallback: anthropic: request timed out"


def test_connection_refused_falls_back(fake, catalogues, local, sleeps):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = make(fake, catalogues, local, sleeps, attempts=2, url=f"http://127.0.0.1:{port}").analyze(CALL, utterances())
    assert fallback_note(a) == "fallback: anthropic: connection failed: ConnectError (after 2 attempts)"
    assert len(sleeps) == 1 and fake.requests == []


# --- configuration, privacy --------------------------------------------------------------------


def test_fallback_none_raises(fake, monkeypatch):
    monkeypatch.setenv("LUPITA_ANALYZER_BACKEND", "anthropic")
    monkeypatch.setenv("LUPITA_ANALYZER_FALLBACK", "none")
    monkeypatch.setenv("LUPITA_ANALYZER_ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("LUPITA_ANALYZER_ANTHROPIC_BASE_URL", fake.url)
    monkeypatch.setenv("LUPITA_ANALYZER_MAX_ATTEMPTS", "1")
    analyzer = build_analyzer(AnalyzerSettings())
    assert isinstance(analyzer, AnthropicAnalyzer)
    fake.answer(503, error("api_error", "Service unavailable"))
    with pytest.raises(AnalyzerBackendError, match="anthropic HTTP 503: api_error: Service unavailable"):
        analyzer.analyze(CALL, utterances())
    analyzer.close()


def test_no_transcript_text_means_no_request(fake, catalogues, local, sleeps):
    silent = [Utterance(CALL, P, 0, 0.0, 1.0, "  ")]
    a = make(fake, catalogues, local, sleeps).analyze(CALL, silent)
    assert a.analyzer == "local" and fake.requests == []
    assert a.notes[-1] == "anthropic not called: no transcript text"


def test_logs_hold_neither_the_key_nor_the_transcript(fake, catalogues, local, sleeps, caplog):
    caplog.set_level(logging.DEBUG)
    fake.answer(500, error("api_error", "Internal server error"))
    fake.answer(200, message())
    make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    fake.answer(401, error("authentication_error", "invalid x-api-key"))
    make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    records = [r for r in caplog.records if r.name.startswith("stream_processor")]
    assert any(r.getMessage() == "analyzer backend error, retrying" for r in records)
    assert any(r.getMessage() == "analyzer backend failed, using the fallback" for r in records)
    for r in caplog.records:  # every logger, the client's and httpx's included
        text = r.getMessage() + " " + json.dumps({k: str(v) for k, v in r.__dict__.items()})
        assert KEY not in text
        for _, said in SCRIPT:
            assert said not in text
        assert "metformina" not in text


# --- the shared fact rules (issue 11 §5): both backends' facts meet in one fact store ------------


def test_prompt_asks_for_the_fact_schema_evidence_and_protected_classes(fake, catalogues, local, sleeps):
    fake.answer(200, message())
    make(fake, catalogues, local, sleeps).analyze(CALL, utterances())
    system = fake.requests[0].body["system"]
    for needed in ("evidence", "protected", "medication.metformina", "grandson_name.rodrigo", "son_lives_in",
                   "next_appointment", "allergy", "speech recognition", "correct spelling"):
        assert needed in system, needed


def test_claude_facts_go_through_the_shared_rules(fake, catalogues, local, sleeps):
    """A key without its value slug is made canonical; a protected class quoted from Lupita's leg
    is dropped (a note says so); a fact whose value word the recogniser was unsure of ("Miguel",
    0.1) is weighed down by that word's probability, and dropped under the minimum confidence."""
    tool_input = dict(TOOL_INPUT, facts=[
        {"type": "health", "key": "medication", "value": "Metformina", "confidence": 0.95,
         "evidence": {"leg": "person", "seq": 1, "quote": "Tomo metformina"}},
        {"type": "health", "key": "condition.diabetes", "value": "diabetes", "confidence": 0.9,
         "evidence": {"leg": "lupita", "seq": 1, "quote": "su hijo Miguel"}},
        {"type": "family", "key": "son_name.miguel", "value": "Miguel", "confidence": 0.9,
         "evidence": {"leg": "person", "seq": 0, "quote": "Mi hijo Miguel"}},
    ])
    fake.answer(200, message(tool_input))
    retry = RetryPolicy(max_attempts=1, sleep=sleeps.append)
    cloud = AnthropicAnalyzer(api_key=SecretStr(KEY), catalogues=catalogues, base_url=fake.url, retry=retry,
                              min_fact_confidence=0.5)
    words = {(P, 0): [("Un", 0.9), (" poco", 0.9), (" triste.", 0.9), (" Mi", 0.9), (" hijo", 0.9),
                      (" Miguel", 0.1), (" se", 0.9), (" fue", 0.9)],
             (P, 1): [("Lo", 0.9), (" extraño", 0.9), (" mucho.", 0.9), (" Tomo", 0.97), (" metformina", 0.95)]}
    a = FallbackAnalyzer(cloud, local).analyze(CALL, utterances(), words=words)
    assert a.analyzer == "anthropic"
    assert [(f.key, f.value) for f in a.facts] == [("medication.metformina", "Metformina")]
    # weighed by the value's own word ("metformina", 0.95), not the quote's verb
    assert a.facts[0].confidence == pytest.approx(0.95 * (0.25 + 0.75 * 0.95), abs=1e-3)
    assert "facts dropped (protected class not said by the person): 1" in a.notes
    assert "facts dropped (below the minimum confidence): 1" in a.notes
