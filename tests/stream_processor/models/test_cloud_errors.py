"""The one translator of cloud SDK exceptions (``models.cloud.translate_sdk_error``), pure: each
official client's exception shapes (made by the clients' own code where they expose it) ->
the BackendError class, status, retryable, retry_after_s and message; and ``json_object`` for
2xx bodies. The wire-format tests
(test_asr_cloud.py, test_embeddings.py, test_analyzer_anthropic.py) run the same path against
scripted HTTP servers."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
from deepgram.core.api_error import ApiError

from stream_processor.models.asr.base import AsrAuthError, AsrBackendError, AsrMalformedResponse
from stream_processor.models.cloud import BackendError, error_message, json_object, translate_sdk_error

REQUEST = httpx.Request("POST", "https://api.example.test/v1/thing", headers={"authorization": "Bearer sk-secret"})
OPENAI = openai.OpenAI(api_key="sk-secret", max_retries=0)
ANTHROPIC = anthropic.Anthropic(api_key="sk-ant-secret", max_retries=0)


def openai_error(status: int, body: object, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    """The exception the openai client raises for this answer (its own factory)."""
    kw = {"json": body} if not isinstance(body, str) else {"text": body}
    return OPENAI._make_status_error_from_response(httpx.Response(status, headers=headers, request=REQUEST, **kw))


def anthropic_error(status: int, body: object, headers: dict[str, str] | None = None) -> anthropic.APIStatusError:
    kw = {"json": body} if not isinstance(body, str) else {"text": body}
    return ANTHROPIC._make_status_error_from_response(httpx.Response(status, headers=headers, request=REQUEST, **kw))


def deepgram_error(status: int | None, body: object, headers: dict[str, str] | None = None) -> ApiError:
    """What deepgram-sdk's generated client raises: headers as a dict, the decoded JSON (or text)."""
    return ApiError(status_code=status, headers=dict(headers or {}), body=body)


def chained(wrapper: BaseException, cause: BaseException) -> BaseException:
    wrapper.__cause__ = cause
    return wrapper


def translate(exc: BaseException, **kw) -> BackendError:
    return translate_sdk_error("svc", exc, AsrBackendError, auth_class=AsrAuthError,
                               malformed_class=AsrMalformedResponse, key_setting="LUPITA_SVC_API_KEY", **kw)


OPENAI_BODY = {"error": {"message": "Rate limit reached.", "type": "requests", "param": None, "code": "rate"}}
ANTHROPIC_BODY = {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}}
DEEPGRAM_BODY = {"err_code": "TOO_MANY_REQUESTS", "err_msg": "Too many requests.", "request_id": "r1"}


@pytest.mark.parametrize("make, body, message", [
    (openai_error, OPENAI_BODY, "Rate limit reached."),
    (anthropic_error, ANTHROPIC_BODY, "rate_limit_error: Rate limited"),
    (deepgram_error, DEEPGRAM_BODY, "TOO_MANY_REQUESTS: Too many requests."),
], ids=["openai", "anthropic", "deepgram"])
def test_429_is_retryable_with_the_servers_retry_after_and_the_bodys_message(make, body, message):
    err = translate(make(429, body, {"Retry-After": "2"}))
    assert type(err) is AsrBackendError
    assert (err.status, err.retryable, err.retry_after_s, err.backend) == (429, True, 2.0, "svc")
    assert str(err) == f"svc HTTP 429: {message}"
    assert translate(make(429, body, {"retry-after-ms": "1500", "retry-after": "9"})).retry_after_s == 1.5
    assert translate(make(429, body)).retry_after_s is None


@pytest.mark.parametrize("make, body", [(openai_error, OPENAI_BODY), (anthropic_error, ANTHROPIC_BODY),
                                        (deepgram_error, DEEPGRAM_BODY)], ids=["openai", "anthropic", "deepgram"])
@pytest.mark.parametrize("status, retryable", [
    (408, True), (409, True), (425, True), (500, True), (502, True), (503, True), (504, True), (529, True),
    (599, True), (400, False), (404, False), (413, False), (422, False),
])
def test_status_decides_retryable(make, body, status, retryable):
    err = translate(make(status, body))
    assert type(err) is AsrBackendError and err.status == status and err.retryable is retryable


@pytest.mark.parametrize("make, body, message", [
    (openai_error, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error"}},
     "Incorrect API key provided."),
    (anthropic_error, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
     "authentication_error: invalid x-api-key"),
    (deepgram_error, {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}, "INVALID_AUTH: Invalid credentials."),
], ids=["openai", "anthropic", "deepgram"])
@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_the_auth_class_and_name_the_setting(make, body, message, status):
    err = translate(make(status, body, {"Retry-After": "1"}))
    assert type(err) is AsrAuthError and not err.retryable and err.retry_after_s is None
    assert str(err) == f"svc HTTP {status}: credentials refused ({message}); check LUPITA_SVC_API_KEY"
    assert "secret" not in str(err)  # neither the request's headers nor the key
    plain = translate_sdk_error("svc", make(status, body), AsrBackendError)  # no auth class: the error class
    assert type(plain) is AsrBackendError and str(plain) == f"svc HTTP {status}: credentials refused ({message})"


def test_a_body_that_is_not_json_is_summarised_on_one_line():
    html = "<html>\n  <body>Bad   gateway</body>\n</html>"
    for exc in (openai_error(502, html), anthropic_error(502, html), deepgram_error(502, html)):
        err = translate(exc)
        assert err.status == 502 and err.retryable and str(err) == "svc HTTP 502: <html> <body>Bad gateway</body> </html>"
    long = translate(openai_error(500, "x" * 500))
    assert str(long) == "svc HTTP 500: " + "x" * 200 + "..."


def test_deepgram_without_a_status_is_retryable_and_a_2xx_it_could_not_decode_is_malformed():
    err = translate(deepgram_error(None, "upstream closed"))
    assert type(err) is AsrBackendError and err.status is None and err.retryable
    assert str(err) == "svc: upstream closed"
    bad = translate(deepgram_error(200, "<html>not json</html>"))
    assert type(bad) is AsrMalformedResponse and bad.status == 200 and not bad.retryable
    assert str(bad) == "svc HTTP 200: answered 200 with a body that is not JSON: '<html>not json</html>'"


@pytest.mark.parametrize("exc", [
    openai.APITimeoutError(request=REQUEST),
    anthropic.APITimeoutError(request=REQUEST),
    httpx.ReadTimeout("timed out", request=REQUEST),
    httpx.ConnectTimeout("timed out", request=REQUEST),
    TimeoutError("timed out"),
], ids=["openai", "anthropic", "httpx-read", "httpx-connect", "builtin"])
def test_timeouts_are_retryable(exc):
    err = translate(exc)
    assert type(err) is AsrBackendError and err.status is None and err.retryable and err.retry_after_s is None
    assert str(err) == "svc: request timed out"


REFUSED = "[Errno 111] Connection refused"


@pytest.mark.parametrize("exc", [
    chained(openai.APIConnectionError(request=REQUEST), httpx.ConnectError(REFUSED, request=REQUEST)),
    chained(anthropic.APIConnectionError(request=REQUEST), httpx.ConnectError(REFUSED, request=REQUEST)),
    httpx.ConnectError(REFUSED, request=REQUEST),  # deepgram-sdk lets httpx's errors through
    ConnectionRefusedError(111, "Connection refused"),
], ids=["openai", "anthropic", "httpx", "builtin"])
def test_connection_failures_are_retryable_and_name_the_underlying_error(exc):
    err = translate(exc)
    assert type(err) is AsrBackendError and err.status is None and err.retryable
    assert str(err) == f"svc: connection failed: {REFUSED}"
    by_type = translate(exc, cause_by_type=True)  # for messages that are stored (the analyzer's notes)
    assert str(by_type) == f"svc: connection failed: {type(exc.__cause__ or exc).__name__}"


def test_other_transport_errors_count_as_connection_failures():
    err = translate(httpx.RemoteProtocolError("peer closed connection", request=REQUEST))
    assert err.retryable and str(err) == "svc: connection failed: peer closed connection"


def test_anything_else_is_not_retryable_and_named_by_its_type():
    err = translate(ValueError("something private"))
    assert type(err) is AsrBackendError and not err.retryable and err.status is None
    assert str(err) == "svc: unexpected ValueError from the client"


def test_error_message_reads_each_documented_body_shape():
    assert error_message(ANTHROPIC_BODY) == "rate_limit_error: Rate limited"
    assert error_message(OPENAI_BODY) == "Rate limit reached."
    assert error_message(OPENAI_BODY["error"]) == "Rate limit reached."  # what openai keeps as exc.body
    assert error_message(DEEPGRAM_BODY) == "TOO_MANY_REQUESTS: Too many requests."
    assert error_message({"error": {"code": "x"}}) == "{'code': 'x'}"
    assert error_message({"detail": "nope"}) == "{'detail': 'nope'}"
    assert error_message("plain text") == "plain text"
    assert error_message(None) == "None"


def test_json_object_reads_a_2xx_body_or_says_precisely_what_is_wrong():
    assert json_object("svc", b'{"text": "hola"}', 200, AsrMalformedResponse) == {"text": "hola"}
    with pytest.raises(AsrMalformedResponse) as info:
        json_object("svc", b"<html>\n 502  Bad gateway</html>", 200, AsrMalformedResponse)
    assert str(info.value) == "svc HTTP 200: answered 200 with a body that is not JSON: '<html> 502 Bad gateway</html>'"
    assert info.value.status == 200 and not info.value.retryable
    with pytest.raises(AsrMalformedResponse, match=r"^svc HTTP 200: answered 200 with a body that is not JSON \(9 bytes\)$"):
        json_object("svc", b"dijo hola", 200, AsrMalformedResponse, quote_body=False)  # may echo the transcript
    with pytest.raises(AsrMalformedResponse, match=r"^svc HTTP 201: expected a JSON object, got list$"):
        json_object("svc", b"[1, 2]", 201, AsrMalformedResponse)
    with pytest.raises(AsrMalformedResponse, match="not JSON"):
        json_object("svc", b"\xff\xfe{", 200, AsrMalformedResponse)
