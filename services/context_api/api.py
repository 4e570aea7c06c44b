"""The JSON API (``/v1``): a person's context, facts (list with history, add, retract) and callbacks
(list, create, cancel), for people and tools other than the voice agent (a care team's console,
support). Bearer token (``Authorization``; ``LUPITA_CONTEXT_API_API_TOKENS``, by default the
webhook's bearer tokens); its OpenAPI document is FastAPI's ``/openapi.json``.

A person is named in the request BODY — ``{"phone": "+52 951 555 0142"}`` (any form people type,
normalised with ``phonenumbers``) or ``{"person_id": "<64 hex>"}``, the opaque id every response
carries (the keyed HMAC of the number) — never in a URL path or query, which end up in access logs.
So every operation is a ``POST`` with a JSON body. Errors are ``{"error": "...", "problems": [...]}``
and never echo a value that was sent (a phone number would land in a client's log).

:class:`V1Guard` (pure ASGI, in front of the routes) refuses before anything is read: a missing or
wrong token (401), a body over the limit (413). Store work runs in worker threads.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Literal, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.datastructures import Headers

from context_api import auth, metrics
from context_api.erasure import Eraser, ErasureFailed
from context_api.phones import InvalidPhone, person_hash
from context_api.settings import ContextApiSettings
from context_api.store import Pool, StoreUnavailable, cancel_callback, get_callback, list_callbacks, schedule_callback
from context_api.tools import MAX_FACT_VALUE_CHARS, MAX_REASON_CHARS, Tools
from context_api.when import MAX_WHEN_CHARS, check_horizon, parse_when, say_datetime
from lupita import facts

PREFIX = "/v1"
PERSON_ID_RE = r"^[0-9a-f]{64}$"
T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- request bodies


class PersonRef(BaseModel):
    """Who: exactly one of ``phone`` (as people type it) or ``person_id`` (from an earlier answer)."""

    model_config = ConfigDict(extra="forbid")
    phone: str | None = Field(default=None, min_length=1, max_length=40,
                              description="The person's phone number, any usual form (MX, US)")
    person_id: str | None = Field(default=None, pattern=PERSON_ID_RE,
                                  description="The opaque person id an earlier answer gave")

    @model_validator(mode="after")
    def _one(self) -> "PersonRef":
        if (self.phone is None) == (self.person_id is None):
            raise ValueError("give exactly one of phone or person_id")
        return self


class ContextRequest(PersonRef):
    pass


class FactListRequest(PersonRef):
    type: Literal[facts.FACT_TYPES] | None = Field(default=None, description="only facts of this type")  # type: ignore[valid-type]
    key: str | None = Field(default=None, pattern=facts.KEY_PATTERN,
                            description="only this key (a multi-valued base key includes all its values)")
    history: bool = Field(default=False, description="also closed rows (superseded, retracted, answered questions)")
    observations: bool = Field(default=False, description="each row with its observations (provenance)")


class FactAddRequest(PersonRef):
    type: Literal[facts.FACT_TYPES]  # type: ignore[valid-type]
    key: str = Field(pattern=facts.KEY_PATTERN, description="e.g. medication, daughter_name, wake_up_time")
    value: str = Field(min_length=1, max_length=MAX_FACT_VALUE_CHARS)
    confidence: float = Field(default=1.0, ge=0, le=1)
    valid_from: datetime | None = Field(default=None, description="when it became true, if known (not in the future)")


class FactRetractRequest(PersonRef):
    """Either ``fact_id``, or ``type`` + ``key`` (+ ``value`` for a multi-valued key)."""

    fact_id: int | None = Field(default=None, ge=1)
    type: Literal[facts.FACT_TYPES] | None = None  # type: ignore[valid-type]
    key: str | None = Field(default=None, pattern=facts.KEY_PATTERN)
    value: str | None = Field(default=None, min_length=1, max_length=MAX_FACT_VALUE_CHARS)
    valid_to: datetime | None = Field(default=None, description="when it stopped being true, if known")

    @model_validator(mode="after")
    def _which(self) -> "FactRetractRequest":
        by_id = self.fact_id is not None
        by_key = self.type is not None and self.key is not None
        if by_id == by_key or (by_id and (self.type or self.key or self.value)):
            raise ValueError("give either fact_id, or type and key (and value for a multi-valued key)")
        return self


class CallbackListRequest(PersonRef):
    include_closed: bool = Field(default=False, description="also dispatching, dispatched, completed, cancelled, failed")


class CallbackCreateRequest(PersonRef):
    when: str = Field(min_length=1, max_length=MAX_WHEN_CHARS,
                      description='ISO 8601 or Spanish ("mañana a las cinco de la tarde"), in the person\'s time zone')
    reason: str = Field(min_length=1, max_length=MAX_REASON_CHARS)


class CallbackCancelRequest(PersonRef):
    callback_id: int = Field(ge=1)


# --------------------------------------------------------------------------- responses


class Fact(BaseModel):
    id: int
    type: str
    key: str
    value: str
    status: str = Field(description="current, to_confirm, superseded, retracted, accepted, rejected")
    confidence: float
    observation_count: int
    protected: bool
    multi_valued: bool
    source: str = Field(description="of the latest observation: analysis, agent, manual")
    source_call_id: str | None
    first_call_id: str | None
    evidence: dict[str, Any] | None = Field(description="the utterance: leg, seq, start_s, end_s, text")
    asr_confidence: float | None
    valid_from: datetime
    valid_to: datetime | None
    observed_at: datetime
    recorded_at: datetime
    superseded_at: datetime | None
    superseded_by: int | None
    closed_by_source: str | None
    proposal: str | None = Field(description="a question: value (a new value) or retraction")
    conflicts_with: int | None
    observations: list[dict[str, Any]] | None = None


class FactList(BaseModel):
    person_id: str
    facts: list[Fact]


class FactWritten(BaseModel):
    person_id: str
    outcome: str = Field(description="inserted, confirmed, unchanged, superseded, stale, retracted")
    fact: Fact | None


class Callback(BaseModel):
    id: int
    scheduled_for: datetime
    when: str = Field(description="in Spanish, in the person's time zone")
    reason: str | None
    status: str
    call_id: str | None
    created_at: datetime
    updated_at: datetime


class CallbackList(BaseModel):
    person_id: str
    callbacks: list[Callback]


class CallbackWritten(BaseModel):
    person_id: str
    outcome: str = Field(description="created, existing (one within the window), cancelled")
    callback: Callback


class Context(BaseModel):
    person_id: str
    context: dict[str, Any] = Field(description="known, facts, to_confirm, last_calls, alerts, pending_callbacks, "
                                                "recurring_topics, behavioral_hints, past_conversations, "
                                                "this_call_alerts, degraded")
    brief: str = Field(description="the compact Spanish brief the voice agent gets")


class ErasureRequest(PersonRef):
    confirm: Literal[True] = Field(description="must be true: erasure cannot be undone")


class RetainedObject(BaseModel):
    call_id: str
    bucket: str
    key: str
    version_id: str
    lock_mode: str | None
    until: datetime = Field(description="the end of its legal retention")
    why: str
    then: str


class ErasureReport(BaseModel):
    person_id: str
    erasure_id: int
    erased_at: datetime
    removed: dict[str, Any] = Field(description="rows / objects removed per table, S3 and Weaviate collection")
    retained: list[RetainedObject] = Field(description="kept by law, queued for deletion when the retention ends")
    kafka: list[dict[str, Any]] = Field(default_factory=list, description=(
        "topics carrying the person's voice or words: the retention the broker has configured and until when "
        "records written before the erasure may remain (Kafka records expire, they are not deleted one by one)"))
    not_linked: str


class ErrorBody(BaseModel):
    error: str
    problems: list[dict[str, Any]] | None = None


def _fact(row: dict[str, Any]) -> Fact:
    return Fact(**{**row, "type": row["fact_type"], "key": row["fact_key"], "value": row["fact_value"]})


# --------------------------------------------------------------------------- guard


class V1Guard:
    """Before any /v1 route: the bearer token (401) and the body size (413), nothing read before."""

    def __init__(self, app: Any, settings: ContextApiSettings) -> None:
        self.app = app
        self.tokens = settings.api_tokens()
        self.limit = settings.context_api_max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX + "/"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            auth.check_token(headers, "authorization", self.tokens)
        except auth.AuthError as exc:
            metrics.API_REJECTED.labels(exc.reason).inc()
            return await _send(send, 401, {"error": "unauthorized"})
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            metrics.API_REJECTED.labels("too_large").inc()
            return await _send(send, 413, {"error": f"request body over {self.limit} bytes"})
        # read the whole body here (a /v1 body is small JSON), counting as it arrives: FastAPI would
        # turn an error raised while it reads into a 400
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            size += len(message.get("body", b""))
            if size > self.limit:
                metrics.API_REJECTED.labels("too_large").inc()
                return await _send(send, 413, {"error": f"request body over {self.limit} bytes"})
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, given = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal given
            if given:
                return await receive()  # waits for the disconnect, as the server's own would
            given = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _send(send: Callable, status: int, body: dict) -> None:
    import json

    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


# --------------------------------------------------------------------------- routes


def install(app: FastAPI, settings: ContextApiSettings, pool: Pool, tools: Tools) -> None:
    """Add the /v1 routes, their guard and their error answers to ``app``."""
    app.add_middleware(V1Guard, settings=settings)
    router = APIRouter(prefix=PREFIX, responses={
        401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
        413: {"model": ErrorBody, "description": "body too large"},
        422: {"model": ErrorBody, "description": "invalid request (the values sent are never echoed)"},
        503: {"model": ErrorBody, "description": "store unavailable"},
    })
    key = settings.hmac_key_bytes
    wait_s = settings.context_api_tool_timeout_ms / 1000

    def person_of(ref: PersonRef) -> str:
        if ref.person_id is not None:
            return ref.person_id
        try:
            return person_hash(ref.phone, key, default_region=settings.context_api_default_region,
                               regions=settings.phone_regions)
        except InvalidPhone as exc:
            raise ApiError(422, f"invalid phone: {exc}") from None

    async def run(endpoint: str, work: Callable[[], T]) -> T:
        started = time.perf_counter()
        status = "ok"
        try:
            return await asyncio.wait_for(asyncio.to_thread(work), wait_s)
        except (asyncio.TimeoutError, StoreUnavailable):
            status = "unavailable"
            raise ApiError(503, "store unavailable, try again") from None
        except facts.FactInputError as exc:
            status = "invalid"
            raise ApiError(422, str(exc)) from None
        except ApiError:
            status = "error"
            raise
        finally:
            metrics.API_REQUESTS.labels(endpoint, status).inc()
            metrics.API_SECONDS.labels(endpoint).observe(time.perf_counter() - started)

    async def run_async(endpoint: str, work: Any) -> Any:
        """:func:`run` for a coroutine (the context: Postgres in a thread, then Weaviate)."""
        started = time.perf_counter()
        status = "ok"
        try:
            return await asyncio.wait_for(work, wait_s)
        except (asyncio.TimeoutError, StoreUnavailable):
            status = "unavailable"
            raise ApiError(503, "store unavailable, try again") from None
        finally:
            metrics.API_REQUESTS.labels(endpoint, status).inc()
            metrics.API_SECONDS.labels(endpoint).observe(time.perf_counter() - started)

    def conn():
        return pool.connection(wait_s)

    @router.post("/context", response_model=Context, summary="A person's context (structured and the brief)")
    async def context(body: ContextRequest) -> Context:
        person = person_of(body)
        ctx, brief = await run_async("context", tools.context_async(person, budget_s=wait_s))
        return Context(person_id=person, context=ctx, brief=brief)

    @router.post("/facts/list", response_model=FactList, summary="A person's facts, with history and provenance")
    async def list_facts(body: FactListRequest) -> FactList:
        person = person_of(body)

        def work() -> list[dict[str, Any]]:
            with conn() as c:
                rows = facts.history(c, person, fact_type=body.type, key=body.key, observations=body.observations)
            return rows if body.history else [r for r in rows if r["status"] in ("current", "to_confirm")]

        return FactList(person_id=person, facts=[_fact(r) for r in await run("facts_list", work)])

    @router.post("/facts", response_model=FactWritten, status_code=201,
                 responses={200: {"model": FactWritten, "description": "the value was already known"}},
                 summary="Add a fact (source manual: may close a protected fact)")
    async def add_fact(body: FactAddRequest) -> JSONResponse:
        person = person_of(body)
        now = datetime.now(timezone.utc)
        if body.valid_from is not None and (body.valid_from.tzinfo is None or body.valid_from > now):
            raise ApiError(422, "valid_from must have a time zone and not be in the future")
        obs = facts.Observation(fact_type=body.type, key=body.key, value=body.value.strip(),
                                confidence=body.confidence, observed_at=now, source="manual",
                                valid_from=body.valid_from)

        def work() -> tuple[str, dict[str, Any] | None]:
            with conn() as c:
                written = facts.record(c, person, obs)
                return written.outcome, facts.get(c, person, written.fact_id) if written.fact_id else None

        outcome, row = await run("facts_add", work)
        out = FactWritten(person_id=person, outcome=outcome, fact=_fact(row) if row else None)
        return JSONResponse(out.model_dump(mode="json"),
                            status_code=201 if outcome in (facts.INSERTED, facts.SUPERSEDED) else 200)

    @router.post("/facts/retract", response_model=FactWritten,
                 responses={404: {"model": ErrorBody, "description": "no such current fact of this person"}},
                 summary="Retract a fact: it stays in the history, closed")
    async def retract_fact(body: FactRetractRequest) -> FactWritten:
        person = person_of(body)
        now = datetime.now(timezone.utc)
        if body.valid_to is not None and (body.valid_to.tzinfo is None or body.valid_to > now):
            raise ApiError(422, "valid_to must have a time zone and not be in the future")

        def work() -> tuple[str, dict[str, Any] | None]:
            with conn() as c:
                if body.fact_id is not None:
                    written = facts.retract_by_id(c, person, body.fact_id, observed_at=now, source="manual",
                                                  valid_to=body.valid_to)
                else:
                    written = facts.retract(c, person, fact_type=body.type, key=body.key, value=body.value,
                                            observed_at=now, source="manual", valid_to=body.valid_to)
                return written.outcome, facts.get(c, person, written.fact_id) if written.fact_id else None

        outcome, row = await run("facts_retract", work)
        if outcome == facts.NOT_FOUND:
            raise ApiError(404, "no such current fact of this person")
        return FactWritten(person_id=person, outcome=outcome, fact=_fact(row) if row else None)

    def _callback(row: dict[str, Any]) -> Callback:
        return Callback(**row, when=say_datetime(row["scheduled_for"], tools.tz))

    @router.post("/callbacks/list", response_model=CallbackList, summary="A person's callbacks")
    async def callbacks(body: CallbackListRequest) -> CallbackList:
        person = person_of(body)

        def work() -> list[dict[str, Any]]:
            with conn() as c:
                return list_callbacks(c, person, include_closed=body.include_closed)

        return CallbackList(person_id=person, callbacks=[_callback(r) for r in await run("callbacks_list", work)])

    @router.post("/callbacks", response_model=CallbackWritten, status_code=201,
                 responses={200: {"model": CallbackWritten, "description": "one was already scheduled then"}},
                 summary="Schedule a callback (idempotent within the window)")
    async def create_callback(body: CallbackCreateRequest) -> JSONResponse:
        person = person_of(body)
        now = datetime.now(timezone.utc)
        when = parse_when(body.when.strip(), tools.tz, now)
        if when is None:
            raise ApiError(422, "when: not a time this service understands")
        refusal = check_horizon(when, now, min_lead=timedelta(minutes=settings.context_api_callback_min_lead_minutes),
                                max_ahead=timedelta(days=settings.context_api_callback_max_days))
        if refusal:
            raise ApiError(422, f"when: {refusal}")
        reason = re.sub(r"\s+", " ", body.reason).strip()
        if not reason:
            raise ApiError(422, "reason: empty")

        def work() -> tuple[bool, dict[str, Any]]:
            with conn() as c:
                created, kept = schedule_callback(
                    c, person=person, when=when, reason=reason, call_id=None,
                    window=timedelta(minutes=settings.context_api_callback_window_minutes))
                return created, get_callback(c, person, when=kept)

        created, row = await run("callbacks_create", work)
        out = CallbackWritten(person_id=person, outcome="created" if created else "existing", callback=_callback(row))
        return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200)

    @router.post("/callbacks/cancel", response_model=CallbackWritten,
                 responses={404: {"model": ErrorBody, "description": "no such callback of this person"},
                            409: {"model": ErrorBody, "description": "not pending any more"}},
                 summary="Cancel a pending callback")
    async def cancel(body: CallbackCancelRequest) -> CallbackWritten:
        person = person_of(body)

        def work() -> tuple[str, dict[str, Any] | None]:
            with conn() as c:
                return cancel_callback(c, person, body.callback_id)

        outcome, row = await run("callbacks_cancel", work)
        if outcome == "not_found":
            raise ApiError(404, "no such callback of this person")
        if outcome == "not_pending":
            raise ApiError(409, f"the callback is {row['status']}, not pending")
        return CallbackWritten(person_id=person, outcome="cancelled", callback=_callback(row))

    eraser = Eraser(settings)

    @router.post("/erasure", response_model=ErasureReport,
                 responses={503: {"model": ErrorBody, "description": "a store failed: nothing in Postgres removed yet; ask again"}},
                 summary="Erase a person (ARCO): what was removed, what is retained, why and until when")
    async def erasure(body: ErasureRequest) -> ErasureReport:
        person = person_of(body)
        started = time.perf_counter()
        status = "ok"
        try:
            out = await asyncio.wait_for(
                asyncio.to_thread(eraser.erase, pool, person, settings.context_api_erasure_timeout_seconds),
                settings.context_api_erasure_timeout_seconds)
        except ErasureFailed as exc:
            status = "unavailable"
            raise ApiError(503, f"erasure not done: {exc}") from None
        except (asyncio.TimeoutError, StoreUnavailable):
            status = "unavailable"
            raise ApiError(503, "erasure not finished in time; ask again (it is idempotent)") from None
        finally:
            metrics.API_REQUESTS.labels("erasure", status).inc()
            metrics.API_SECONDS.labels("erasure").observe(time.perf_counter() - started)
        return ErasureReport(person_id=person, **out)

    app.include_router(router)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # pydantic's errors carry the input: drop it (it may be a phone number), keep where and why
        problems = [{"loc": [p for p in e.get("loc", ()) if p != "body"], "msg": e.get("msg", "invalid")}
                    for e in exc.errors()]
        metrics.API_REJECTED.labels("invalid").inc()
        return JSONResponse({"error": "invalid request", "problems": problems}, status_code=422)
