"""The context API's HTTP application (FastAPI): ``POST /vapi/webhook``, ``/livez``, ``/readyz``, and
the JSON API under ``/v1`` (:mod:`context_api.api`) with its OpenAPI document ``/openapi.json``.

The webhook reads the raw body (at most ``context_api_max_body_bytes``: more is 413), checks
authentication over those exact bytes (401, nothing done), parses the JSON (400 when it is not
``{"message": {"type": ...}}``) and dispatches on ``message.type``:

- ``assistant-request``: ``{"assistantId", "assistantOverrides": {"variableValues": {"user_context"}}}``
  within the budget; a slower (or failing) store gives the minimal context, counted;
- ``tool-calls``: 200 with one result per call, in order; a failing call is an ``error`` result;
- ``end-of-call-report`` (kept once per VAPI call id) and ``status-update``: a ``vapi_calls`` row;
  a ``status-update`` ``in-progress`` also asks the telephony gateway to listen to the call, in the
  background (:mod:`context_api.gateway`);
- anything else (``transcript``, ``conversation-update``, ``speech-update``, unknown): 200, counted.

Store work runs in worker threads; nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from context_api import api, auth, metrics
from context_api.context import one_line
from context_api.gateway import GatewayStarter
from context_api.settings import ContextApiSettings
from context_api.store import Pool, StoreUnavailable, record_report, record_status
from context_api.tools import TOOL_NAMES, Caller, ToolCall, ToolError, Tools, minimal_context, parse_tool_calls

log = logging.getLogger("context_api")

IGNORED_TYPES = ("transcript", "conversation-update", "speech-update")


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge
        except ValueError:
            raise BodyTooLarge from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, reason: str, message: str) -> JSONResponse:
    metrics.REJECTED.labels(reason).inc()
    return JSONResponse({"error": message}, status_code=status)


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def create_app(settings: ContextApiSettings, pool: Pool | None = None) -> FastAPI:
    pool = pool or Pool(settings.postgres_dsn.get_secret_value(), settings.context_api_db_pool_size,
                        settings.context_api_db_timeout_ms)
    tools = Tools(settings, pool)
    gateway = GatewayStarter(settings, pool)
    app = FastAPI(title="Lupita context API", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.pool = pool
    app.state.tools = tools
    app.state.gateway = gateway
    api.install(app, settings, pool, tools)  # the JSON API, /v1

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        timeout = settings.context_api_readyz_timeout_ms / 1000

        def ping() -> None:
            with pool.connection(timeout) as conn:
                conn.execute("SELECT 1").fetchone()

        try:
            await asyncio.wait_for(asyncio.to_thread(ping), timeout)
        except (asyncio.TimeoutError, StoreUnavailable, Exception) as exc:  # any failure: not ready
            return JSONResponse({"status": "not ready", "postgres": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready", "postgres": "ok"})

    @app.post("/vapi/webhook")
    async def webhook(request: Request) -> JSONResponse:
        try:
            body = await read_body(request, settings.context_api_max_body_bytes)
        except BodyTooLarge:
            return _error(413, "too_large", f"request body over {settings.context_api_max_body_bytes} bytes")
        try:
            auth.check(settings, request.headers, body)
        except auth.AuthError as exc:
            log.warning("webhook refused", extra={"stage": "auth", "reason": exc.reason})
            return _error(401, exc.reason, "unauthorized")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "malformed_json", "body is not valid JSON")
        message = payload.get("message") if isinstance(payload, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return _error(400, "bad_shape", 'body must be {"message": {"type": ...}}')
        kind = message["type"]
        label = kind if kind in metrics.MESSAGE_TYPES else "unknown"
        metrics.MESSAGES.labels(label).inc()
        if kind == "assistant-request":
            return await assistant_request(message)
        if kind == "tool-calls":
            return await tool_calls(message)
        if kind in ("end-of-call-report", "status-update"):
            return await call_report(kind, message)
        log.debug("webhook message ignored", extra={"stage": "webhook", "type": label})
        return JSONResponse({"ok": True, "ignored": label})

    async def assistant_request(message: dict[str, Any]) -> JSONResponse:
        started = time.perf_counter()
        budget = settings.context_api_assistant_request_budget_ms / 1000
        caller = tools.caller(message)
        degraded = None
        if caller.person is None:
            ctx, text = minimal_context()
            degraded = "no_phone"
        else:
            try:
                # at call start nothing of the call is stored yet: no live alerts to read
                ctx, text = await asyncio.wait_for(tools.context_async(caller.person, budget_s=budget), budget)
            except asyncio.TimeoutError:
                ctx, text = minimal_context()
                degraded = "timeout"
            except Exception as exc:
                log.warning("context read failed", extra={"stage": "assistant-request", "error": type(exc).__name__})
                ctx, text = minimal_context()
                degraded = "error"
        if degraded:
            metrics.DEGRADED.labels(degraded).inc()
        elapsed = time.perf_counter() - started
        metrics.ASSISTANT_SECONDS.observe(elapsed)
        log.info("assistant-request answered", extra={
            "stage": "assistant-request", "vapi_call_id": caller.vapi_call_id, "known": ctx.get("known"),
            "degraded": degraded, "ms": round(elapsed * 1000, 2)})
        return JSONResponse({
            "assistantId": settings.context_api_assistant_id,
            "assistantOverrides": {"variableValues": {"user_context": text}},
        })

    async def tool_calls(message: dict[str, Any]) -> JSONResponse:
        caller = tools.caller(message)
        calls = parse_tool_calls(message)
        results = []
        for i, call in enumerate(calls):
            if isinstance(call, tuple):
                results.append({"toolCallId": call[0], "name": "", "error": call[1]})
                metrics.TOOL_CALLS.labels("unknown", "error").inc()
                continue
            if i >= settings.context_api_max_tool_calls:
                results.append({"toolCallId": call.id, "name": call.name,
                                "error": "Demasiadas llamadas de herramienta en un mensaje."})
                metrics.TOOL_CALLS.labels(_tool_label(call.name), "error").inc()
                continue
            results.append(await one_tool(call, caller))
        return JSONResponse({"results": results})

    async def one_tool(call: ToolCall, caller: Caller) -> dict[str, str]:
        label = _tool_label(call.name)
        started = time.perf_counter()
        timeout = settings.context_api_tool_timeout_ms / 1000
        outcome = "ok"
        try:
            result = await asyncio.wait_for(tools.run_async(call, caller, timeout), timeout)
            out = {"toolCallId": call.id, "name": call.name, "result": one_line(result)}
        except ToolError as exc:
            outcome = "error"
            out = {"toolCallId": call.id, "name": call.name, "error": one_line(str(exc), 500)}
        except asyncio.TimeoutError:
            outcome = "timeout"
            out = {"toolCallId": call.id, "name": call.name,
                   "error": "El sistema tardó demasiado en responder; sigue la conversación sin ese dato."}
        except Exception as exc:  # a store failure: this call only
            outcome = "error"
            log.warning("tool call failed", extra={"stage": "tool-calls", "tool": label,
                                                   "error": type(exc).__name__})
            out = {"toolCallId": call.id, "name": call.name,
                   "error": "No se pudo completar ahora; sigue la conversación sin ese dato."}
        elapsed = time.perf_counter() - started
        metrics.TOOL_CALLS.labels(label, outcome).inc()
        metrics.TOOL_SECONDS.labels(label).observe(elapsed)
        log.info("tool call answered", extra={"stage": "tool-calls", "tool": label, "outcome": outcome,
                                              "vapi_call_id": caller.vapi_call_id, "ms": round(elapsed * 1000, 2)})
        return out

    async def call_report(kind: str, message: dict[str, Any]) -> JSONResponse:
        caller = tools.caller(message)
        if caller.vapi_call_id is None:
            return _error(400, "bad_shape", "message.call.id missing or invalid")
        call = message.get("call") if isinstance(message.get("call"), dict) else {}
        ended_reason = message.get("endedReason", call.get("endedReason"))
        ended_reason = one_line(ended_reason, 200) if isinstance(ended_reason, str) else None
        row = {"vapi_call_id": caller.vapi_call_id, "call_id": caller.call_id, "hash": caller.person,
               "ended_reason": ended_reason}
        timeout = settings.context_api_tool_timeout_ms / 1000
        if kind == "status-update":
            status = message.get("status")
            row["status"] = one_line(status, 64) if isinstance(status, str) else None
            if status == "in-progress":
                gateway.start(message, caller.person, caller.vapi_call_id)  # in the background

            def work() -> bool:
                with pool.connection(timeout) as conn:
                    record_status(conn, **row)
                return True
        else:
            started_at = _iso(message.get("startedAt", call.get("startedAt")))
            ended_at = _iso(message.get("endedAt", call.get("endedAt")))
            duration = message.get("durationSeconds")
            if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 <= duration < 1e8:
                duration = (ended_at - started_at).total_seconds() if started_at and ended_at and ended_at >= started_at else None
            row.update(started_at=started_at, ended_at=ended_at, duration=duration)

            def work() -> bool:
                with pool.connection(timeout) as conn:
                    return record_report(conn, **row)
        try:
            stored = await asyncio.wait_for(asyncio.to_thread(work), timeout)
        except Exception as exc:
            log.warning("call report not stored", extra={"stage": kind, "error": type(exc).__name__,
                                                         "vapi_call_id": caller.vapi_call_id})
            # 503: VAPI does not retry server messages, but a proxy or a replay tool can
            return JSONResponse({"error": "store unavailable"}, status_code=503)
        if kind == "end-of-call-report":
            metrics.REPORTS.labels("stored" if stored else "duplicate").inc()
        log.info("call report kept", extra={"stage": kind, "vapi_call_id": caller.vapi_call_id,
                                            "duplicate": not stored})
        return JSONResponse({"ok": True, "duplicate": not stored})

    return app


def _tool_label(name: str) -> str:
    return name if name in TOOL_NAMES else "unknown"
