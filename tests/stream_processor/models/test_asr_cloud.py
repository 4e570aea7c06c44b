"""Cloud transcription backends against a local HTTP server speaking their documented wire formats.

The server (``http.server`` in a thread, 127.0.0.1, ephemeral port) records each request and
answers from a per-test script: the documented success JSON, 429 with Retry-After, 500, a body
that is not JSON, a JSON of the wrong shape, 401. The real clients are used: ``openai`` (base_url
pointed at the server) and ``deepgram-sdk`` (``DeepgramClientEnvironment(base=...)``). Retry
waits are recorded instead of slept (the policy's ``sleep`` hook), so the Retry-After values are
asserted exactly and the tests stay fast. The fallback tests use the real local Whisper model,
loaded once for the module.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import logging
import wave

import numpy as np
import pytest
from pydantic import SecretStr

from loadgen.synth import Voice, synthesize_utterance
from stream_processor.models.asr.base import (
    AsrAuthError,
    AsrBackendError,
    AsrMalformedResponse,
    RetryPolicy,
)
from stream_processor.models.asr.deepgram_backend import DeepgramTranscriber
from stream_processor.models.asr.factory import FallbackTranscriber, build_transcriber
from stream_processor.models.asr.guards import normalize_text
from stream_processor.models.asr.openai_backend import OpenAITranscriber
from stream_processor.models.asr.settings import AsrSettings
from stream_processor.models.asr.whisper_local import WhisperLocal

from sp_http import Recorded, ScriptedApi

OPENAI_KEY = "sk-test-0123456789abcdef-secret"
DEEPGRAM_KEY = "dg-test-fedcba9876543210-secret"
RATE = 8000

# --- documented answers ------------------------------------------------------------------------

OPENAI_VERBOSE = {
    "task": "transcribe",
    "language": "spanish",
    "duration": 2.5,
    "text": "Hola, buenos días. Tengo frío.",
    "words": [
        {"word": "Hola", "start": 0.1, "end": 0.42},
        {"word": "buenos", "start": 0.5, "end": 0.8},
        {"word": "días", "start": 0.8, "end": 1.1},
        {"word": "Tengo", "start": 1.5, "end": 1.8},
        {"word": "frío", "start": 1.8, "end": 2.2},
    ],
    "segments": [
        {"id": 0, "seek": 0, "start": 0.0, "end": 1.2, "text": " Hola, buenos días.", "tokens": [50364, 22637],
         "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 0.9, "no_speech_prob": 0.01},
        {"id": 1, "seek": 0, "start": 1.4, "end": 2.3, "text": " Tengo frío.", "tokens": [314, 1609],
         "temperature": 0.0, "avg_logprob": -0.4, "compression_ratio": 0.8, "no_speech_prob": 0.02},
    ],
    "usage": {"type": "duration", "seconds": 3},
}

OPENAI_JSON_LOGPROBS = {
    "text": "Hola, buenos días.",
    "logprobs": [{"token": "Hola", "logprob": -0.1, "bytes": [72, 111, 108, 97]},
                 {"token": ",", "logprob": -0.3, "bytes": [44]}],
    "usage": {"type": "tokens", "input_tokens": 20, "output_tokens": 5, "total_tokens": 25},
}

DEEPGRAM_OK = {
    "metadata": {"transaction_key": "deprecated", "request_id": "6a1b6f2e-0000-4000-8000-000000000001",
                 "sha256": "00", "created": "2026-11-24T20:00:00.000Z", "duration": 2.5, "channels": 1,
                 "models": ["4c5d8a8a-0000-4000-8000-000000000002"], "model_info": {}},
    "results": {"channels": [{"alternatives": [{
        "transcript": "hola buenos días tengo frío",
        "confidence": 0.97,
        "words": [
            {"word": "hola", "start": 0.08, "end": 0.4, "confidence": 0.99, "punctuated_word": "Hola,"},
            {"word": "buenos", "start": 0.48, "end": 0.8, "confidence": 0.98, "punctuated_word": "buenos"},
            {"word": "días", "start": 0.8, "end": 1.1, "confidence": 0.95, "punctuated_word": "días."},
            {"word": "tengo", "start": 1.5, "end": 1.8, "confidence": 0.97, "punctuated_word": "Tengo"},
            {"word": "frío", "start": 1.8, "end": 2.2, "confidence": 0.9, "punctuated_word": "frío."},
        ]}]}]},
}

OPENAI_ERROR_401 = {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                              "param": None, "code": "invalid_api_key"}}
OPENAI_ERROR_429 = {"error": {"message": "Rate limit reached.", "type": "requests", "param": None,
                              "code": "rate_limit_exceeded"}}
OPENAI_ERROR_500 = {"error": {"message": "The server had an error.", "type": "server_error", "param": None,
                              "code": None}}
DEEPGRAM_ERROR_401 = {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.",
                      "request_id": "6a1b6f2e-0000-4000-8000-000000000003"}
DEEPGRAM_ERROR_429 = {"err_code": "TOO_MANY_REQUESTS", "err_msg": "Too many requests.",
                      "request_id": "6a1b6f2e-0000-4000-8000-000000000004"}
DEEPGRAM_ERROR_500 = {"err_code": "INTERNAL_SERVER_ERROR", "err_msg": "Internal error.",
                      "request_id": "6a1b6f2e-0000-4000-8000-000000000005"}

OK = {"openai": OPENAI_VERBOSE, "deepgram": DEEPGRAM_OK}
E401 = {"openai": OPENAI_ERROR_401, "deepgram": DEEPGRAM_ERROR_401}
E429 = {"openai": OPENAI_ERROR_429, "deepgram": DEEPGRAM_ERROR_429}
E500 = {"openai": OPENAI_ERROR_500, "deepgram": DEEPGRAM_ERROR_500}
KEYS = {"openai": OPENAI_KEY, "deepgram": DEEPGRAM_KEY}
BACKENDS = ["openai", "deepgram"]


# --- the server --------------------------------------------------------------------------------


FakeApi = ScriptedApi  # raw bodies (multipart uploads, WAV), query strings recorded


@pytest.fixture(scope="module")
def api():
    server = FakeApi()
    yield server
    server.close()


@pytest.fixture
def fake(api):
    api.reset()
    yield api
    assert not api.script, "scripted answers left unused"


@pytest.fixture(scope="module")
def local() -> WhisperLocal:
    return WhisperLocal(threads=2)


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make(backend: str, fake: FakeApi, sleeps: list[float], *, attempts: int = 3, **kw):
    retry = RetryPolicy(max_attempts=attempts, base_delay_s=0.05, max_delay_s=0.2, max_retry_after_s=5.0,
                        sleep=sleeps.append)
    if backend == "openai":
        return OpenAITranscriber(api_key=SecretStr(OPENAI_KEY), base_url=f"{fake.url}/v1", retry=retry,
                                 timeout_s=5.0, **kw)
    return DeepgramTranscriber(api_key=SecretStr(DEEPGRAM_KEY), base_url=fake.url, retry=retry, timeout_s=5.0, **kw)


def tone(seconds: float = 2.5) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def multipart_fields(req: Recorded) -> dict[str, list]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + req.headers["content-type"].encode() + b"\r\n\r\n" + req.body)
    fields: dict[str, list] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        value = part.get_payload(decode=True)
        fields.setdefault(name, []).append(value if part.get_filename() else value.decode())
    return fields


def wav_info(data: bytes) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()


# --- success: the documented answers -----------------------------------------------------------


def test_openai_whisper_request_and_verbose_json_answer(fake, sleeps):
    fake.answer(200, OPENAI_VERBOSE)
    result = make("openai", fake, sleeps).transcribe(tone(), RATE)

    [req] = fake.requests
    assert req.path == "/v1/audio/transcriptions"
    assert req.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    fields = multipart_fields(req)
    assert fields["model"] == ["whisper-1"] and fields["language"] == ["es"]
    assert fields["response_format"] == ["verbose_json"]
    assert sorted(fields["timestamp_granularities[]"]) == ["segment", "word"]
    assert wav_info(fields["file"][0]) == (1, 2, RATE, int(RATE * 2.5))

    assert result.text == "Hola, buenos días. Tengo frío."
    assert result.language == "es" and result.backend == "openai" and result.model == "whisper-1"
    assert [[w.text for w in s.words] for s in result.segments] == [["Hola", "buenos", "días"], ["Tengo", "frío"]]
    assert result.words[3].start == 1.5 and result.words[3].end == 1.8
    assert result.segments[0].no_speech_prob == 0.01
    assert result.confidence == pytest.approx(
        (np.exp(-0.2) * len("Hola, buenos días.") + np.exp(-0.4) * len("Tengo frío.")) / 29)


def test_openai_gpt4o_transcribe_uses_json_with_logprobs(fake, sleeps):
    fake.answer(200, OPENAI_JSON_LOGPROBS)
    result = make("openai", fake, sleeps, model="gpt-4o-transcribe").transcribe(tone(), RATE)
    fields = multipart_fields(fake.requests[0])
    assert fields["model"] == ["gpt-4o-transcribe"] and fields["response_format"] == ["json"]
    assert fields["include[]"] == ["logprobs"] and "timestamp_granularities[]" not in fields
    assert result.text == "Hola, buenos días." and result.words == ()
    assert result.confidence == pytest.approx(np.exp(-0.2))


def test_deepgram_request_and_listen_answer(fake, sleeps):
    fake.answer(200, DEEPGRAM_OK)
    result = make("deepgram", fake, sleeps).transcribe(tone(), RATE)

    [req] = fake.requests
    assert req.path == "/v1/listen"
    assert req.query["model"] == ["nova-2"] and req.query["language"] == ["es"]
    assert req.query["punctuate"] == ["true"]
    assert req.headers["authorization"] == f"Token {DEEPGRAM_KEY}"
    assert req.headers["content-type"] == "audio/wav"
    assert wav_info(req.body) == (1, 2, RATE, int(RATE * 2.5))

    assert result.text == "Hola, buenos días. Tengo frío."
    assert [(w.text, w.start, w.end) for w in result.words][:2] == [("Hola,", 0.08, 0.4), ("buenos", 0.48, 0.8)]
    assert result.confidence == pytest.approx((0.99 + 0.98 + 0.95 + 0.97 + 0.9) / 5)
    assert result.backend == "deepgram" and result.model == "nova-2" and result.language == "es"


def test_cloud_answers_go_through_the_same_guards(fake, sleeps):
    answer = json.loads(json.dumps(OPENAI_VERBOSE))
    answer["segments"].append({"id": 2, "seek": 0, "start": 2.3, "end": 2.5, "tokens": [1],
                               "text": " Subtítulos realizados por la comunidad de Amara.org", "temperature": 0.0,
                               "avg_logprob": -0.5, "compression_ratio": 1.1, "no_speech_prob": 0.2})
    fake.answer(200, answer)
    result = make("openai", fake, sleeps).transcribe(tone(), RATE)
    assert result.text == "Hola, buenos días. Tengo frío."
    assert result.guard_actions == ("hallucination:subtitulos realizados por la comunidad de amara org",)


# --- errors: retries, malformed answers, credentials -------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_429_waits_retry_after_then_succeeds(fake, sleeps, backend):
    fake.answer(429, E429[backend], retry_after="2")
    fake.answer(200, OK[backend])
    result = make(backend, fake, sleeps).transcribe(tone(), RATE)
    assert "buenos" in normalize_text(result.text)
    assert len(fake.requests) == 2
    assert sleeps == [2.0]  # the server's Retry-After, not the policy's own backoff


@pytest.mark.parametrize("backend", BACKENDS)
def test_500_is_retried_then_raised_without_fallback(fake, sleeps, backend):
    for _ in range(3):
        fake.answer(500, E500[backend])
    with pytest.raises(AsrBackendError, match="HTTP 500") as err:
        make(backend, fake, sleeps, attempts=3).transcribe(tone(), RATE)
    assert err.value.retryable and err.value.backend == backend
    assert len(fake.requests) == 3 and len(sleeps) == 2
    assert sleeps[1] > sleeps[0]  # exponential backoff


@pytest.mark.parametrize("backend", BACKENDS)
def test_500_then_ok_is_retried_and_succeeds(fake, sleeps, backend):
    fake.answer(503, E500[backend])
    fake.answer(200, OK[backend])
    result = make(backend, fake, sleeps).transcribe(tone(), RATE)
    assert result.text == "Hola, buenos días. Tengo frío." and len(fake.requests) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_body_that_is_not_json_is_a_clear_error_and_not_retried(fake, sleeps, backend):
    fake.answer(200, b'{"results": [truncated', content_type="application/json")
    with pytest.raises(AsrMalformedResponse, match="not JSON") as err:
        make(backend, fake, sleeps).transcribe(tone(), RATE)
    assert err.value.status == 200 and not err.value.retryable
    assert len(fake.requests) == 1


@pytest.mark.parametrize("backend, payload", [
    ("openai", {"words": []}),  # no "text"
    ("openai", {"text": "hola", "segments": [{"start": 0.0}]}),  # segment without end/text
    ("deepgram", {"results": {"channels": []}}),
    ("deepgram", {"metadata": {}, "results": {"channels": [{"alternatives": [{"transcript": 5}]}]}}),
])
def test_json_of_the_wrong_shape_is_a_clear_error(fake, sleeps, backend, payload):
    fake.answer(200, payload)
    with pytest.raises(AsrMalformedResponse, match="documented"):
        make(backend, fake, sleeps).transcribe(tone(), RATE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_401_is_not_retried_and_names_the_setting(fake, sleeps, backend, caplog):
    fake.answer(401, E401[backend])
    with pytest.raises(AsrAuthError) as err:
        make(backend, fake, sleeps).transcribe(tone(), RATE)
    assert len(fake.requests) == 1 and sleeps == []
    message = str(err.value)
    assert "HTTP 401" in message and f"LUPITA_{backend.upper()}_API_KEY" in message
    assert KEYS[backend] not in message


def test_retry_after_longer_than_allowed_is_not_waited_for(fake, sleeps):
    fake.answer(429, DEEPGRAM_ERROR_429, retry_after="3600")
    with pytest.raises(AsrBackendError, match="HTTP 429"):
        make("deepgram", fake, sleeps).transcribe(tone(), RATE)
    assert sleeps == [] and len(fake.requests) == 1


def test_unreachable_server_is_retried_then_reported(sleeps):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.01, sleep=sleeps.append)
    t = OpenAITranscriber(api_key=SecretStr(OPENAI_KEY), base_url=f"http://127.0.0.1:{port}/v1", retry=retry,
                          timeout_s=2.0)
    with pytest.raises(AsrBackendError, match="connection failed") as err:
        t.transcribe(tone(), RATE)
    assert err.value.retryable and len(sleeps) == 1


# --- fallback to the local model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    voice = Voice("es-419+f4", speed_wpm=125, pitch=35)
    return synthesize_utterance("Hola, buenos días. Tengo mucho frío.", RATE, voice).astype(np.float32) / 32768


@pytest.mark.parametrize("backend", BACKENDS)
def test_500s_fall_back_to_the_local_model(fake, sleeps, local, spoken, backend, caplog):
    for _ in range(3):
        fake.answer(500, E500[backend])
    caplog.set_level(logging.DEBUG)
    t = FallbackTranscriber(make(backend, fake, sleeps, attempts=3), local)
    result = t.transcribe(spoken, RATE)
    assert len(fake.requests) == 3
    assert result.backend == "local" and result.fallback_from == backend
    assert "HTTP 500" in (result.fallback_reason or "")
    assert result.text.strip() and result.words  # what the local model heard (bench/asr_wer.py: how well)
    assert KEYS[backend] not in caplog.text  # neither our logs nor the clients' debug logs hold the key


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_answer_and_refused_key_fall_back(fake, sleeps, local, backend):
    t = FallbackTranscriber(make(backend, fake, sleeps), local)
    silence = np.zeros(RATE, np.float32)  # the local model answers it without decoding
    fake.answer(200, b"<html>gateway</html>", content_type="text/html")
    result = t.transcribe(silence, RATE)
    assert result.fallback_from == backend and "not JSON" in result.fallback_reason
    fake.answer(401, E401[backend])
    result = t.transcribe(silence, RATE)
    assert result.fallback_from == backend and "HTTP 401" in result.fallback_reason
    assert KEYS[backend] not in result.fallback_reason
    assert len(fake.requests) == 2


def test_partials_of_a_cloud_backend_are_decoded_locally(fake, sleeps, local):
    t = FallbackTranscriber(make("deepgram", fake, sleeps), local)
    result = t.transcribe_partial(np.zeros(RATE, np.float32), RATE)
    assert result.is_partial and result.backend == "local" and fake.requests == []


# --- the factory -------------------------------------------------------------------------------


def test_factory_builds_the_configured_backend_with_fallback(fake, sleeps, local):
    s = AsrSettings(asr_backend="deepgram", deepgram_api_key=SecretStr(DEEPGRAM_KEY), deepgram_base_url=fake.url,
                    asr_fallback="local")
    t = build_transcriber(s, local=local, retry=RetryPolicy(max_attempts=1, sleep=sleeps.append))
    assert isinstance(t, FallbackTranscriber) and isinstance(t.primary, DeepgramTranscriber)
    assert t.fallback is local
    fake.answer(200, DEEPGRAM_OK)
    assert t.transcribe(tone(), RATE).text == "Hola, buenos días. Tengo frío."

    s = AsrSettings(asr_backend="openai", openai_api_key=SecretStr(OPENAI_KEY), openai_base_url=f"{fake.url}/v1",
                    asr_fallback="none", asr_openai_model="gpt-4o-mini-transcribe")
    t = build_transcriber(s, local=local)
    assert isinstance(t, OpenAITranscriber) and t.model == "gpt-4o-mini-transcribe"
    assert build_transcriber(AsrSettings(asr_backend="local"), local=local) is local
