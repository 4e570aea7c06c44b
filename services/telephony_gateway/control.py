"""The gateway's control API (aiohttp, its own port): what starts listening to a VAPI call.

``POST /vapi/calls`` with ``Authorization: Bearer <one of LUPITA_GATEWAY_CONTROL_TOKENS>`` and a
JSON body: the VAPI call object as VAPI's server messages carry it (``id``,
``monitor.listenUrl``, ``customer.number``) plus what only we know::

    {"call": {"id": "…", "monitor": {"listenUrl": "wss://…/listen"}, "customer": {"number": "+52…"}},
     "consent": true, "consentSource": "ivr_prompt_v2", "region": "oaxaca", "language": "es-MX",
     "familyPlanId": "…", "direction": "outbound"}

It answers 202 ``{"callId": "vapi-<id>"}`` and listens in the background until the call ends; 401
without the token, 400 for a body that is not that (counted as bad input of source ``vapi``, the
message never quotes the body), 409 when that call is already being listened to, 503 while
draining. The caller is the context-api's VAPI webhook on ``status-update`` ``in-progress`` (or an
operator). The number travels in the body, never in the URL.

``POST /chime/events`` takes EventBridge's Chime streaming events and publishes them to Kafka
(202 after the broker's ack, 503 otherwise): see :mod:`~telephony_gateway.chime_bus`.

aiohttp because the websocket library the gateway serves Twilio with answers GET upgrades only;
aiohttp's ``AppRunner``/``TCPSite`` run inside the gateway's own event loop and leave its signal
handling alone.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lupita.v1 import audio_pb2

from . import chime_events as ce
from . import metrics as m
from .chime_bus import KafkaUnavailable
from .errors import BadInput
from .vapi_listen import VapiCall

if TYPE_CHECKING:
    from .server import Gateway

log = logging.getLogger("telephony_gateway.control")

MAX_BODY_BYTES = 256 * 1024
DIRECTIONS = {"outbound": audio_pb2.DIRECTION_OUTBOUND, "inbound": audio_pb2.DIRECTION_INBOUND}


class BadRequest(ValueError):
    pass


def vapi_call_from(body: object, listen_token: str) -> VapiCall:
    """The :class:`VapiCall` of a request body (BadRequest names the field, never its value)."""
    if not isinstance(body, dict) or not isinstance(body.get("call"), dict):
        raise BadRequest("body must be a JSON object with a 'call' object")
    call = body["call"]
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id or len(call_id) > 100 or not all(c.isalnum() or c == "-" for c in call_id):
        raise BadRequest("call.id must be VAPI's call id (letters, digits, '-')")
    monitor = call.get("monitor") if isinstance(call.get("monitor"), dict) else {}
    listen_url = monitor.get("listenUrl")
    if not isinstance(listen_url, str) or not listen_url.startswith(("wss://", "ws://")):
        raise BadRequest("call.monitor.listenUrl must be a ws(s):// URL")
    customer = call.get("customer") if isinstance(call.get("customer"), dict) else {}
    phone = customer.get("number")
    if not isinstance(phone, str) or not phone:
        raise BadRequest("call.customer.number is required")
    direction = DIRECTIONS.get(str(body.get("direction", "outbound")))
    if direction is None:
        raise BadRequest("direction must be 'outbound' or 'inbound'")

    def text(name: str, default: str = "") -> str:
        value = body.get(name, default)
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string")
        return value

    consent = body.get("consent", False)
    if not isinstance(consent, bool):
        raise BadRequest("consent must be true or false")
    return VapiCall(vapi_call_id=call_id, listen_url=listen_url, phone=phone, consent=consent,
                    consent_source=text("consentSource"), region=text("region"), language=text("language", "es-MX"),
                    family_plan_id=text("familyPlanId"), direction=direction, listen_token=listen_token)


class ControlApi:
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.tasks: set[asyncio.Task] = set()
        self.listening: set[str] = set()
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/vapi/calls", self._vapi_call)
        app.router.add_post("/chime/events", self._chime_events)
        self.app = app

    async def start(self, host: str, port: int) -> int:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self.port

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        tokens = self.gateway.settings.control_tokens()
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        ok = False
        for token in tokens:  # compare with every token: no early exit
            ok |= hmac.compare_digest(presented.strip().encode(), token.encode())
        return scheme.lower() == "bearer" and ok

    async def _json_body(self, request: web.Request, source: str) -> tuple[Any, web.Response | None]:
        """The request's JSON body, or the answer to give instead: 401 without a valid bearer
        token, 503 while draining (the caller retries), 400 for a body that is not JSON (counted
        as ``source``'s ``malformed_json``)."""
        if not self._authorized(request):
            return None, web.json_response({"error": "missing or invalid bearer token"}, status=401)
        if self.gateway.draining:
            return None, web.json_response({"error": "draining"}, status=503)
        try:
            return await request.json(), None
        except ValueError:
            m.BAD_INPUT.labels(source, "malformed_json").inc()
            return None, web.json_response({"error": "body is not JSON"}, status=400)

    async def _vapi_call(self, request: web.Request) -> web.Response:
        body, refusal = await self._json_body(request, "vapi")
        if refusal is not None:
            return refusal
        try:
            call = vapi_call_from(body, self.gateway.settings.gateway_vapi_listen_token.get_secret_value())
        except BadRequest as exc:
            m.BAD_INPUT.labels("vapi", "invalid_field").inc()
            log.warning("bad input", extra={"stage": "vapi", "kind": "invalid_field", "error": str(exc)})
            return web.json_response({"error": str(exc)}, status=400)
        if call.vapi_call_id in self.listening:
            return web.json_response({"error": "already listening to this call"}, status=409)
        self.listening.add(call.vapi_call_id)
        task = asyncio.create_task(self._listen(call))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response({"callId": f"vapi-{call.vapi_call_id}"}, status=202)

    async def _chime_events(self, request: web.Request) -> web.Response:
        """EventBridge (an API destination) delivers Chime's streaming events here: one event or a
        list. Each is checked and published to the Chime events topic (the pod that owns the
        call's partition runs it, :mod:`~telephony_gateway.chime_bus`): 202 with what was accepted
        and refused, only once Kafka acknowledged every accepted event; 503 when it did not
        (nothing was acknowledged: EventBridge retries the request); 400 for a body that is not
        JSON; 503 while draining; 404 when the Chime path is off. A refused event is counted and
        named by its class only."""
        bus = self.gateway.chime_bus
        if bus is None:
            return web.json_response({"error": "the Chime path is off (LUPITA_GATEWAY_CHIME_ENABLED)"}, status=404)
        body, refusal = await self._json_body(request, "chime")
        if refusal is not None:
            return refusal
        events = body if isinstance(body, list) else [body]
        checked, refused = [], []
        for event in events:
            try:
                ev = ce.parse(event)
                if ev.status == "STARTED":
                    bus.encrypt(ce.person_number(ev))  # a number that is not one is refused here, with its class
                checked.append(ev)
            except BadInput as exc:
                m.BAD_INPUT.labels("chime", exc.kind).inc()
                log.warning("bad input", extra={"stage": "chime", "kind": exc.kind, "error": exc.message})
                refused.append(exc.kind)
            except ValueError:  # no encryption key: nothing can be published
                return web.json_response({"error": "Chime events cannot be published"}, status=503)
        if checked:
            try:
                await bus.publish(checked)
            except KafkaUnavailable:
                return web.json_response({"error": "Kafka did not acknowledge the events; retry"}, status=503)
        return web.json_response({"accepted": len(checked), "refused": refused}, status=202)

    async def _listen(self, call: VapiCall) -> None:
        try:
            await self.gateway.listen_vapi(call)
        except RuntimeError:  # draining meanwhile
            pass
        finally:
            self.listening.discard(call.vapi_call_id)
