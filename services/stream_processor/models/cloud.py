"""What every cloud model backend shares (OpenAI, Deepgram, Anthropic): the backend error with
its retry facts, :func:`translate_sdk_error` (the one translation of the official clients'
exceptions into that error) and :func:`json_object` (a 2xx body that is not a JSON object), the
cloud defaults of the one retry policy
(:class:`stream_processor.retry.RetryPolicy`) with :meth:`RetryPolicy.run`, and the HTTP helpers
that read the retry facts. The transcriber, embedder and analyzer each derive their own error
classes from :class:`BackendError` and their policy defaults from :class:`RetryPolicy`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Self, TypeVar

from stream_processor import retry
from stream_processor.retry import GiveUp

log = logging.getLogger(__name__)

T = TypeVar("T")

# 529: Anthropic's "overloaded"; any other 5xx is retryable too
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


class BackendError(RuntimeError):
    """A cloud backend failed. ``retryable`` tells whether trying again may help; ``attempts``
    how many tries were made (set by :class:`RetryPolicy`)."""

    def __init__(self, backend: str, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None) -> None:
        self.backend = backend
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.attempts = 1
        self.detail = message
        where = backend + (f" HTTP {status}" if status is not None else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy(retry.RetryPolicy):
    """The one retry policy (:class:`stream_processor.retry.RetryPolicy`: same fields, same
    backoff) with the cloud backends' defaults, and :meth:`run`.

    Retries 429 / 5xx / timeouts / connection errors (a :class:`BackendError` marked
    ``retryable``) with exponential backoff and jitter: 4 attempts, 0.5 s doubling up to 8 s, each
    wait drawn from 80-100 % of that, no time budget. A ``Retry-After`` (or ``retry-after-ms``)
    from the server is honoured as the wait; one longer than ``max_retry_after_s`` (30 s) is not
    waited for: the error is raised at once with that said in its message (a fallback, or the
    agent's own redelivery, takes over). ``label`` and ``stage`` name the family in the retry log
    line.
    """

    max_attempts: int | None = 4
    max_elapsed_s: float | None = None
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    jitter: float = 0.2
    max_retry_after_s: float | None = 30.0
    label: str = "cloud"  # in the log message: "<label> backend error, retrying"
    stage: str = "cloud"  # the log record's stage

    @classmethod
    def from_settings(cls, settings: object, prefix: str) -> Self:
        """The policy a family's settings give: ``LUPITA_<PREFIX>_MAX_ATTEMPTS`` (1 = no retry),
        ``_BACKOFF_SECONDS`` (the first wait), ``_MAX_BACKOFF_SECONDS`` (the cap) and
        ``_MAX_RETRY_AFTER_SECONDS`` (the longest Retry-After obeyed), i.e. the fields
        ``<prefix>_max_attempts`` ... of ``AsrSettings`` (``asr``), ``EmbedSettings`` (``embed``)
        and ``AnalyzerSettings`` (``analyzer``); the rest keeps ``cls``'s defaults."""
        return cls(
            max_attempts=getattr(settings, f"{prefix}_max_attempts"),
            initial_delay_s=getattr(settings, f"{prefix}_backoff_seconds"),
            max_delay_s=getattr(settings, f"{prefix}_max_backoff_seconds"),
            max_retry_after_s=getattr(settings, f"{prefix}_max_retry_after_seconds"),
        )

    def run(self, fn: Callable[[], T], *, backend: str, call_id: str | None = None) -> T:
        """``fn()`` under this policy: a retryable :class:`BackendError` is tried again; the
        error that ends it (not retryable, attempts used up, Retry-After too long) is raised
        with ``attempts`` set to the number of tries made."""
        tries = 0

        def attempt() -> T:
            nonlocal tries
            tries += 1
            try:
                return fn()
            except BackendError as exc:
                exc.attempts = tries
                raise

        def retrying(attempt: int, delay: float, exc: Exception) -> None:
            assert isinstance(exc, BackendError)
            extra = {"stage": self.stage, "backend": backend, "status": exc.status,
                     "error": type(exc).__name__, "attempt": attempt, "delay_s": round(delay, 3)}
            if call_id is not None:
                extra["call_id"] = call_id
            log.warning(f"{self.label} backend error, retrying", extra=extra)

        def giving_up(exc: Exception, why: GiveUp) -> None:
            if why.kind == "retry_after":
                exc.args = (f"{exc.args[0]}; {why.reason}",)
            return None  # the BackendError itself is raised

        return self.call(attempt, retryable=lambda exc: isinstance(exc, BackendError) and exc.retryable,
                         retry_after=lambda exc: getattr(exc, "retry_after_s", None), on_retry=retrying,
                         give_up=giving_up)


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))


def error_summary(body: object, limit: int = 200) -> str:
    """A short, single-line excerpt of an error body for messages (never headers: they hold keys)."""
    text = body if isinstance(body, str) else repr(body)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def json_object(backend: str, body: bytes, status: int, malformed_class: type[BackendError], *,
                quote_body: bool = True) -> dict:
    """The JSON object a 2xx answer's body holds (read raw, so a malformed answer is reported
    precisely). A body that is not JSON, or JSON that is not an object, raises ``malformed_class``
    with the status; the message quotes the body's start, or gives only its size with
    ``quote_body=False`` (an answer that may echo what a person said)."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        shown = (repr(error_summary(body[:200].decode("utf-8", "replace"))) if quote_body
                 else f"({len(body)} bytes)")
        raise malformed_class(backend, f"answered {status} with a body that is not JSON"
                              f"{': ' if quote_body else ' '}{shown}", status=status) from None
    if not isinstance(payload, dict):
        raise malformed_class(backend, f"expected a JSON object, got {type(payload).__name__}", status=status)
    return payload


# --- the official clients' exceptions -> BackendError -----------------------------------------

# Classes (by name, anywhere in an exception's MRO) that mean "no answer came": the clients'
# own wrappers (openai / anthropic ``APITimeoutError`` < ``APIConnectionError``), httpx's transport
# errors (the Deepgram SDK raises them as they are) and Python's own.
_TIMEOUT_CLASSES = frozenset({"APITimeoutError", "TimeoutException", "TimeoutError"})
_CONNECTION_CLASSES = frozenset({"APIConnectionError", "TransportError", "ConnectionError"})


def _is_a(exc: BaseException, names: frozenset[str]) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def error_message(body: object) -> str:
    """The message of a cloud API's error body, read by its documented shape: Anthropic
    ``{"type": "error", "error": {"type", "message"}}`` -> ``"type: message"``; OpenAI
    ``{"error": {"message", ...}}`` (or the inner object alone) -> the message; Deepgram
    ``{"err_code", "err_msg"}`` -> ``"err_code: err_msg"``; anything else as text."""
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            if body.get("type") == "error":
                return f"{err.get('type', 'error')}: {err.get('message', '')}"
            return str(err.get("message") or err)
        code, msg = body.get("err_code"), body.get("err_msg")
        if code or msg:
            return f"{code}: {msg}"
        if isinstance(body.get("message"), str) and body["message"]:
            return body["message"]
    return str(body)


def _error_body(exc: BaseException) -> object:
    """The error body an SDK exception carries: the HTTP response's JSON (else its text) when it
    holds the response (openai, anthropic), else its ``body`` (Deepgram's ``ApiError``)."""
    response = getattr(exc, "response", None)
    if response is not None and hasattr(response, "json"):
        try:
            return response.json()
        except Exception:  # noqa: BLE001 - any undecodable body
            return getattr(response, "text", "?")
    return getattr(exc, "body", None)


def translate_sdk_error(
    backend: str,
    exc: BaseException,
    error_class: type[BackendError],
    *,
    auth_class: type[BackendError] | None = None,
    malformed_class: type[BackendError] | None = None,
    key_setting: str | None = None,
    cause_by_type: bool = False,
) -> BackendError:
    """The :class:`BackendError` for an exception raised by a cloud SDK's client (the call site
    catches the SDK's own classes and raises this ``from None``).

    Read from the shapes the official clients share, whatever the SDK:

    - an HTTP answer (``status_code``: openai / anthropic ``APIStatusError``, Deepgram
      ``ApiError``): 401/403 -> ``auth_class`` (not retryable, "check <key_setting>"); 2xx (the
      client could not decode the body) -> ``malformed_class``, not retried; anything else ->
      ``error_class`` with the status, ``retryable`` for 408/409/425/429/5xx/529 (and an unknown
      status), ``retry_after_s`` from ``retry-after-ms`` / ``Retry-After`` (the response's headers,
      else the exception's) and the message of the error body (:func:`error_message`, shortened;
      never headers);
    - a timeout (``APITimeoutError``, ``httpx.TimeoutException``, ``TimeoutError``) ->
      retryable "request timed out";
    - a failed connection (``APIConnectionError``, ``httpx.TransportError``, ``ConnectionError``)
      -> retryable "connection failed: <the underlying error>" (its type name alone with
      ``cause_by_type``, for messages that are stored);
    - anything else -> not retryable, named by its type.

    ``auth_class`` and ``malformed_class`` default to ``error_class``.
    """
    if _is_a(exc, _TIMEOUT_CLASSES):
        return error_class(backend, "request timed out", retryable=True)
    if _is_a(exc, _CONNECTION_CLASSES):
        cause = exc.__cause__ or exc
        return error_class(backend, f"connection failed: {type(cause).__name__ if cause_by_type else cause}",
                           retryable=True)
    if not hasattr(exc, "status_code"):
        return error_class(backend, f"unexpected {type(exc).__name__} from the client")
    status = exc.status_code
    body = _error_body(exc)
    if status is not None and 200 <= status < 300:
        return (malformed_class or error_class)(
            backend, f"answered {status} with a body that is not JSON: {error_summary(body)!r}", status=status)
    detail = error_summary(error_message(body))
    if status in (401, 403):
        hint = f"; check {key_setting}" if key_setting else ""
        return (auth_class or error_class)(backend, f"credentials refused ({detail}){hint}", status=status)
    headers = getattr(getattr(exc, "response", None), "headers", None) or getattr(exc, "headers", None)
    return error_class(backend, detail, status=status, retryable=status is None or is_retryable_status(status),
                       retry_after_s=parse_retry_after(headers))
