"""Embeddings (stream_processor.models.embeddings): the local USE model, the OpenAI backend against a local
HTTP server speaking the documented ``/v1/embeddings`` JSON, the fallback rule, and call_vector.

The server (``http.server`` in a thread, 127.0.0.1, ephemeral port) records each request and
answers from a per-test script. Success answers are computed from the request like the real API
does: one vector per input (a deterministic function of the text), ``dimensions`` honoured,
``encoding_format`` honoured (base64 = little-endian float32, which the official client asks for
by default), ``data`` returned out of order (clients must use ``index``). Retry waits are
recorded instead of slept, so Retry-After values are asserted exactly and the tests stay fast.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from pydantic import SecretStr, ValidationError

from stream_processor.models.embeddings import (
    EmbeddingAuthError,
    EmbeddingBackendError,
    EmbeddingConfigError,
    EmbeddingInputError,
    EmbeddingMalformedResponse,
    EmbedSettings,
    FallbackEmbedder,
    RetryPolicy,
    build_embedder,
    call_vector,
)
from stream_processor.models.embeddings.local_use import LocalUSEEmbedder
from stream_processor.models.embeddings.openai_backend import OpenAIEmbedder

from sp_http import ScriptedApi

KEY = "sk-embed-test-0123456789abcdef-secret"

# --- the local model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> LocalUSEEmbedder:
    return LocalUSEEmbedder(threads=1)


PARAPHRASES = [
    ("Me caí en el baño y no me puedo levantar.", "Me tropecé en la ducha y ahora no puedo pararme."),
    ("Mi nieta cumple quince años el sábado.", "Este fin de semana es la fiesta de quince de mi nietecita."),
    ("Hoy hace mucho calor en el pueblo.", "Qué calorón está haciendo hoy aquí."),
    ("Extraño mucho a mi esposo que murió.", "Echo de menos a mi marido desde que falleció."),
]


def test_spanish_paraphrases_are_closer_than_unrelated_sentences(local):
    texts = [t for pair in PARAPHRASES for t in pair]
    v = local.embed(texts)
    sims = v @ v.T
    for i in range(len(PARAPHRASES)):
        a, b = 2 * i, 2 * i + 1
        unrelated = [sims[a, j] for j in range(len(texts)) if j not in (a, b)]
        assert sims[a, b] > max(unrelated) + 0.1, (PARAPHRASES[i], sims[a, b], max(unrelated))


def test_local_vectors_are_unit_length_float32_of_the_declared_dim(local):
    v = local.embed(["Buenos días, Lupita.", "¿Cómo está usted?", "Tomé mi pastilla de la presión."])
    assert local.dim == 512 and v.shape == (3, 512) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert local.embed([]).shape == (0, 512)


def test_blank_texts_give_zero_rows_and_do_not_disturb_the_others(local):
    v = local.embed(["", "Hola, buenos días.", "   ", "\n"])
    assert v.shape == (4, 512)
    assert not v[[0, 2, 3]].any()
    np.testing.assert_allclose(v[1], local.embed(["Hola, buenos días."])[0], atol=1e-5)


def test_batch_and_single_give_the_same_vector(local):
    texts = ["Me duele la rodilla.", "Mi hijo vive en Chicago.", "Ya comí, gracias."]
    together = local.embed(texts)
    alone = np.vstack([local.embed([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_bad_texts_are_refused_precisely(local):
    with pytest.raises(EmbeddingInputError, match=r"not a single str \(wrap it: embed\(\[text\]\)\)"):
        local.embed("hola")  # type: ignore[arg-type]
    with pytest.raises(EmbeddingInputError, match=r"texts\[1\] is int, not a string"):
        local.embed(["hola", 3])  # type: ignore[list-item]


# --- call vector ----------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def test_call_vector_is_the_normalised_duration_weighted_mean():
    rng = np.random.default_rng(7)
    v = np.vstack([_unit(r) for r in rng.normal(size=(4, 16))]).astype(np.float32)
    w = [2.0, 0.5, 7.0, 1.5]
    expected = _unit(sum(wi * vi.astype(np.float64) for wi, vi in zip(w, v)))
    got = call_vector(v, w)
    assert got.dtype == np.float32 and got.shape == (16,)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(call_vector(v, [10 * x for x in w]), got, atol=1e-6)  # scale-free
    # the longest utterance pulls hardest
    assert got @ v[2] > got @ v[1]


def test_call_vector_ignores_blank_rows_and_zero_weights():
    a, b = _unit(np.array([1.0, 2.0, 0.0])), _unit(np.array([0.0, 1.0, 3.0]))
    v = np.vstack([a, b, np.zeros(3)]).astype(np.float32)
    np.testing.assert_allclose(call_vector(v, [3.0, 0.0, 9.0]), a, atol=1e-6)
    # rows are normalised first: a long vector does not outweigh its duration
    np.testing.assert_allclose(call_vector(np.vstack([10 * a, b]), [1.0, 1.0]), _unit(a + b), atol=1e-6)


@pytest.mark.parametrize("vectors, weights, message", [
    (np.ones((3, 4)), [1.0, 2.0], r"weights must be a 1-D array of 3 values"),
    (np.ones(4), [1.0], r"vectors must be a 2-D array"),
    (np.ones((2, 4)), [1.0, -1.0], r"finite and >= 0"),
    (np.ones((2, 4)), [1.0, float("nan")], r"finite and >= 0"),
    (np.array([[np.nan, 1.0]]), [1.0], r"NaN or infinite"),
    (np.zeros((2, 4)), [1.0, 2.0], r"nothing to average"),
    (np.ones((2, 4)), [0.0, 0.0], r"nothing to average"),
    (np.zeros((0, 4)), [], r"nothing to average"),
])
def test_call_vector_refuses_bad_input(vectors, weights, message):
    with pytest.raises(EmbeddingInputError, match=message):
        call_vector(vectors, weights)


def test_call_vector_of_real_utterances_is_a_unit_vector_near_the_long_ones(local):
    texts = ["Me caí ayer en la cocina.", "Sí.", "Me duele mucho la cadera desde que me caí."]
    v = local.embed(texts)
    c = call_vector(v, [2.0, 0.3, 4.0])
    assert abs(float(np.linalg.norm(c)) - 1.0) < 1e-5
    assert c @ v[2] > c @ v[1] and c @ v[0] > c @ v[1]


# --- a local server speaking OpenAI's /v1/embeddings ------------------------------------------------


def fake_vector(text: str, dim: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(text.encode("utf-8")))
    return _unit(rng.normal(size=dim)).astype(np.float32)


def embeddings_answer(request: dict, *, shuffle: bool = True) -> dict:
    dim = request.get("dimensions", 1536)
    fmt = request.get("encoding_format", "float")
    data = []
    for i, text in enumerate(request["input"]):
        vec = fake_vector(text, dim)
        emb = base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64" else vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    if shuffle:
        data.reverse()
    return {"object": "list", "data": data, "model": request["model"],
            "usage": {"prompt_tokens": 8 * len(data), "total_tokens": 8 * len(data)}}


Answer = tuple[int, dict[str, str], bytes] | Callable[[dict], tuple[int, dict[str, str], bytes]]


def ok(request: dict) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, json.dumps(embeddings_answer(request)).encode()


def error(status: int, message: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    body = {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                      "param": None, "code": None}}
    return status, headers or {}, json.dumps(body).encode()


class FakeOpenAI(ScriptedApi):
    """The embeddings API: JSON request bodies; answers may be callables of the request."""

    def __init__(self) -> None:
        super().__init__(parse_body=json.loads)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="module")
def api_server():
    server = FakeOpenAI()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def api(api_server: FakeOpenAI) -> FakeOpenAI:
    """The module's server with an empty script and no recorded requests."""
    with api_server.lock:
        api_server.script.clear()
        api_server.requests.clear()
    return api_server


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_openai(api: FakeOpenAI, sleeps: list[float], **kw) -> OpenAIEmbedder:
    retry = RetryPolicy(max_attempts=kw.pop("max_attempts", 3), base_delay_s=0.25, jitter=0.0,
                        max_retry_after_s=kw.pop("max_retry_after_s", 30.0), sleep=sleeps.append)
    return OpenAIEmbedder(api_key=SecretStr(KEY), base_url=api.base_url, retry=retry, timeout_s=5.0, **kw)


def expected(texts: list[str], dim: int) -> np.ndarray:
    return np.vstack([fake_vector(t, dim) for t in texts])


def test_openai_default_request_is_base64_and_decoded_in_input_order(api, sleeps):
    emb = make_openai(api, sleeps)
    texts = ["Hola, Lupita.", "Me duele la cabeza.", "Mi nieto se llama Mateo."]
    api.script.append(ok)
    v = emb.embed(texts)
    assert emb.dim == 1536 and v.shape == (3, 1536) and v.dtype == np.float32
    np.testing.assert_allclose(v, expected(texts, 1536), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    (req,) = api.requests
    assert req.path == "/v1/embeddings"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.body == {"input": texts, "model": "text-embedding-3-small", "encoding_format": "base64"}
    assert sleeps == []


def test_openai_float_format_and_dimensions(api, sleeps):
    emb = make_openai(api, sleeps, encoding_format="float", dimensions=64)
    api.script.append(ok)
    v = emb.embed(["uno", "dos"])
    assert emb.dim == 64 and v.shape == (2, 64)
    np.testing.assert_allclose(v, expected(["uno", "dos"], 64), atol=1e-6)
    assert api.requests[0].body["dimensions"] == 64
    assert api.requests[0].body["encoding_format"] == "float"


def test_openai_batches_and_never_sends_blank_texts(api, sleeps):
    emb = make_openai(api, sleeps, batch_size=2, dimensions=32)
    texts = ["a uno", "", "b dos", "c tres", "  ", "d cuatro", "e cinco"]
    api.script.extend([ok, ok, ok])
    v = emb.embed(texts)
    assert [r.body["input"] for r in api.requests] == [["a uno", "b dos"], ["c tres", "d cuatro"], ["e cinco"]]
    assert not v[[1, 4]].any()
    kept = [0, 2, 3, 5, 6]
    np.testing.assert_allclose(v[kept], expected([texts[i] for i in kept], 32), atol=1e-6)


def test_openai_empty_input_makes_no_request(api, sleeps):
    emb = make_openai(api, sleeps)
    assert emb.embed([]).shape == (0, 1536)
    assert emb.embed(["", " "]).shape == (2, 1536)
    assert api.requests == []


def test_openai_429_waits_for_retry_after_then_succeeds(api, sleeps):
    emb = make_openai(api, sleeps, dimensions=8)
    api.script.extend([error(429, "Rate limit reached.", {"retry-after": "2"}), ok])
    v = emb.embed(["hola"])
    np.testing.assert_allclose(v, expected(["hola"], 8), atol=1e-6)
    assert len(api.requests) == 2 and sleeps == [2.0]


def test_openai_500_then_success_backs_off(api, sleeps):
    emb = make_openai(api, sleeps, dimensions=8)
    api.script.extend([error(500, "The server had an error."), error(502, "Bad gateway."), ok])
    emb.embed(["hola"])
    assert len(api.requests) == 3 and sleeps == [0.25, 0.5]


def test_openai_5xx_until_attempts_are_used_up(api, sleeps):
    emb = make_openai(api, sleeps, dimensions=8, max_attempts=3)
    api.script.extend([error(503, "Overloaded.")] * 3)
    with pytest.raises(EmbeddingBackendError, match=r"openai HTTP 503: Overloaded\.") as info:
        emb.embed(["hola"])
    assert info.value.status == 503 and info.value.retryable
    assert len(api.requests) == 3 and sleeps == [0.25, 0.5]


def test_openai_retry_after_longer_than_allowed_is_not_waited_for(api, sleeps):
    emb = make_openai(api, sleeps, dimensions=8, max_retry_after_s=5.0)
    api.script.append(error(429, "Slow down.", {"retry-after": "120"}))
    with pytest.raises(EmbeddingBackendError, match="HTTP 429"):
        emb.embed(["hola"])
    assert len(api.requests) == 1 and sleeps == []


def test_openai_401_is_not_retried_and_does_not_leak_the_key(api, sleeps):
    emb = make_openai(api, sleeps)
    api.script.append(error(401, "Incorrect API key provided."))
    with pytest.raises(EmbeddingAuthError, match=r"HTTP 401: credentials refused \(Incorrect API key provided\.\)") \
            as info:
        emb.embed(["hola"])
    assert KEY not in str(info.value)
    assert len(api.requests) == 1 and sleeps == []


def test_openai_400_is_not_retried(api, sleeps):
    emb = make_openai(api, sleeps)
    api.script.append(error(400, "This model's maximum context length is 8192 tokens."))
    with pytest.raises(EmbeddingBackendError, match="HTTP 400: This model's maximum context length") as info:
        emb.embed(["hola"])
    assert not info.value.retryable and len(api.requests) == 1


def test_openai_malformed_json_is_a_clear_error(api, sleeps):
    emb = make_openai(api, sleeps)
    api.script.append((200, {"content-type": "text/html"}, b"<html>502 Bad Gateway</html>"))
    with pytest.raises(EmbeddingMalformedResponse, match=r"answered 200 with a body that is not JSON: '<html>502"):
        emb.embed(["hola"])
    assert len(api.requests) == 1


def _answer_with(mutate: Callable[[dict], None]) -> Answer:
    def answer(request: dict) -> tuple[int, dict[str, str], bytes]:
        body = embeddings_answer(request, shuffle=False)
        mutate(body)
        return 200, {}, json.dumps(body).encode()
    return answer


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.pop("data"), r"KeyError\('data'\)|'data'"),
    (lambda b: b["data"].pop(), r"1 embeddings for 2 inputs"),
    (lambda b: b["data"][1].update(index=0), r"bad or repeated index 0"),
    (lambda b: b["data"][0].update(embedding="not base64!"), r"documented embeddings JSON"),
    (lambda b: b["data"][0].update(embedding=base64.b64encode(b"\0" * 30).decode()), r"not a whole number of float32"),
    (lambda b: b["data"][0].update(embedding=base64.b64encode(b"\0" * 64).decode()),
     r"embedding 0 has 16 values, expected 8"),
    (lambda b: b["data"][0].update(embedding={"x": 1}), r"embedding is dict"),
])
def test_openai_wrong_shape_is_malformed(api, sleeps, mutate, message):
    emb = make_openai(api, sleeps, dimensions=8)
    api.script.append(_answer_with(mutate))
    with pytest.raises(EmbeddingMalformedResponse, match=message):
        emb.embed(["uno", "dos"])
    assert len(api.requests) == 1


# --- fallback and settings ---------------------------------------------------------------------------


def test_fallback_to_local_is_refused_when_vector_sizes_differ(api, sleeps, local):
    with pytest.raises(EmbeddingConfigError, match=r"fallback refused: openai \(text-embedding-3-small\) makes "
                                                   r"1536-d vectors, local \(use-multilingual-v3\) 512-d"):
        FallbackEmbedder(make_openai(api, sleeps), local)


def test_fallback_to_local_with_equal_sizes_answers_and_says_so(api, sleeps, local):
    emb = FallbackEmbedder(make_openai(api, sleeps, dimensions=512, max_attempts=2), local)
    api.script.extend([error(500, "down"), error(500, "still down")])
    texts = ["Me caí en la cocina.", ""]
    result = emb.embed_result(texts)
    assert (result.backend, result.model, result.fallback_from) == ("local", "use-multilingual-v3", "openai")
    assert "HTTP 500" in result.fallback_reason
    np.testing.assert_allclose(result.vectors, local.embed(texts), atol=1e-6)
    assert len(api.requests) == 2
    # when the primary answers, its vectors are used
    api.script.append(ok)
    result = emb.embed_result(texts)
    assert result.backend == "openai" and result.fallback_from is None


def test_settings_use_lupita_embed_names_and_refuse_mismatched_fallback(monkeypatch):
    monkeypatch.setenv("LUPITA_EMBED_BACKEND", "openai")
    monkeypatch.setenv("LUPITA_EMBED_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LUPITA_EMBED_FALLBACK", "local")
    with pytest.raises(ValidationError, match=r"LUPITA_EMBED_FALLBACK=local is refused: text-embedding-3-small "
                                              r"makes 1536-d vectors") as info:
        EmbedSettings()
    assert KEY not in str(info.value)
    monkeypatch.setenv("LUPITA_EMBED_OPENAI_DIMENSIONS", "512")
    s = EmbedSettings()
    assert s.embed_dim == 512 and s.embed_fallback == "local"
    monkeypatch.delenv("LUPITA_EMBED_OPENAI_API_KEY")
    with pytest.raises(ValidationError, match="LUPITA_EMBED_BACKEND=openai needs LUPITA_EMBED_OPENAI_API_KEY"):
        EmbedSettings()


def test_settings_defaults_are_local_512(monkeypatch):
    for name in ("LUPITA_EMBED_BACKEND", "LUPITA_EMBED_FALLBACK", "LUPITA_EMBED_OPENAI_DIMENSIONS"):
        monkeypatch.delenv(name, raising=False)
    s = EmbedSettings()
    assert (s.embed_backend, s.embed_dim, s.embed_fallback) == ("local", 512, "none")
    monkeypatch.setenv("LUPITA_EMBED_BACKEND", "openai")
    monkeypatch.setenv("LUPITA_EMBED_OPENAI_API_KEY", KEY)
    assert EmbedSettings().embed_dim == 1536


def test_build_embedder_from_settings_talks_to_the_configured_url(api, monkeypatch, local):
    monkeypatch.setenv("LUPITA_EMBED_BACKEND", "openai")
    monkeypatch.setenv("LUPITA_EMBED_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LUPITA_EMBED_OPENAI_BASE_URL", api.base_url)
    monkeypatch.setenv("LUPITA_EMBED_OPENAI_DIMENSIONS", "512")
    monkeypatch.setenv("LUPITA_EMBED_FALLBACK", "local")
    emb = build_embedder(EmbedSettings(), local=local)
    assert isinstance(emb, FallbackEmbedder) and emb.dim == 512
    api.script.append(ok)
    np.testing.assert_allclose(emb.embed(["hola"]), expected(["hola"], 512), atol=1e-6)
    assert api.requests[0].body["dimensions"] == 512
