"""The gateway process: one websocket server (``websockets``, asyncio) for the vendors' sockets,
``/livez`` and ``/readyz`` on the same port, Prometheus on its own port, one gRPC channel to the
media bridge, graceful drain on SIGTERM.

- ``/livez``: 200 while the event loop answers.
- ``/readyz``: 200 while the bridge's gRPC health check says SERVING (probed every few seconds) and
  the gateway is not draining; else 503, so a load balancer stops sending new calls.
- ``LUPITA_GATEWAY_TWILIO_PATH`` (``/twilio``): the Twilio Media Streams endpoint. The upgrade is
  refused with 403 when X-Twilio-Signature is missing or wrong, 503 while draining or at
  ``gateway_max_calls``; anything else is 404.
- SIGTERM: refuse new calls (503; /readyz 503), let live calls finish for ``gateway_drain_seconds``, then end the rest
  with reason ``shutdown`` (each still gets its CallEnd, so the bridge records what arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from . import metrics as m
from . import signature
from .control import ControlApi
from .bridge_client import make_channel
from .chime import ChimeCalls, ChimeSession
from .chime_bus import ChimeBus
from .errors import BadInput
from .settings import GatewaySettings
from .session import SessionReport
from .twilio_session import TwilioSession
from .vapi_listen import VapiCall, VapiSession

log = logging.getLogger("telephony_gateway")

HEALTH_PROBE_SECONDS = 2.0


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.channel: grpc.aio.Channel | None = None
        self.server: Server | None = None
        self.sessions: set[TwilioSession | VapiSession | ChimeSession] = set()
        self.draining = False
        self.bridge_serving = False
        self.port: int | None = None
        self._probe: asyncio.Task | None = None
        self._session_closed = asyncio.Event()
        self.control: ControlApi | None = None
        self.chime = ChimeCalls(self)
        self.chime_bus: ChimeBus | None = None

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> int:
        s = self.settings
        self.channel = make_channel(s.bridge_target)
        await self._probe_bridge_once()
        self._probe = asyncio.create_task(self._probe_bridge())
        self.server = await serve(
            self._handle, s.gateway_host, s.gateway_port,
            process_request=self._process_request,
            max_size=s.gateway_max_message_bytes,
            # frames buffered per socket before websockets stops reading it (backpressure to TCP)
            max_queue=16,
            open_timeout=s.gateway_start_timeout_seconds,
            ping_interval=20, ping_timeout=20,
            # no permessage-deflate: Twilio's JSON frames are small, and a zlib window per socket
            # costs CPU per message and ~hundreds of KiB per call
            compression=None,
            server_header=None,
        )
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        if s.gateway_control_port or s.control_tokens():
            if not s.control_tokens():
                log.warning("control API off: LUPITA_GATEWAY_CONTROL_TOKENS is empty", extra={"stage": "gateway"})
            else:
                self.control = ControlApi(self)
                if s.gateway_chime_enabled:
                    # Chime events come in on the control API: the consumer (re)connects in the background
                    self.chime_bus = ChimeBus(s, self.chime)
                    self.chime.bus = self.chime_bus
                    self.chime_bus.start()
                await self.control.start(s.gateway_host, s.gateway_control_port)
        log.info("gateway listening", extra={"stage": "gateway", "port": self.port, "twilio_path": s.gateway_twilio_path,
                                             "control_port": self.control.port if self.control else None,
                                             "bridge": s.bridge_target, "forward_codec": s.gateway_forward_codec,
                                             "chime": self.chime_bus is not None})
        return self.port

    async def shutdown(self) -> None:
        """Graceful stop (see the module docstring)."""
        if self.draining:
            return
        self.draining = True
        log.info("draining", extra={"stage": "gateway", "live_calls": len(self.sessions),
                                    "drain_seconds": self.settings.gateway_drain_seconds})
        if self.chime_bus is not None:
            # Chime calls are not drained but handed off at once: checkpointed, the group left, the
            # other pods go on with them
            await self.chime_bus.stop()
        # the listener stays open while draining: /readyz answers 503 (the load balancer takes this
        # pod out) and new upgrades get 503, rather than connection refused
        deadline = time.monotonic() + self.settings.gateway_drain_seconds
        while self.sessions and time.monotonic() < deadline:
            self._session_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._session_closed.wait(), deadline - time.monotonic())
        if self.sessions:
            log.warning("drain deadline passed; ending live calls", extra={"stage": "gateway", "live_calls": len(self.sessions)})
            for session in list(self.sessions):
                session.shutdown()
        end = time.monotonic() + self.settings.gateway_bridge_close_seconds + 5
        while self.sessions and time.monotonic() < end:
            self._session_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._session_closed.wait(), end - time.monotonic())
        await self.close()
        log.info("stopped", extra={"stage": "gateway"})

    async def close(self) -> None:
        """Immediate stop (tests, failed start-up). Chime calls are cut as a crash would cut them:
        their bridge streams aborted, their checkpoints kept (the next process resumes them)."""
        if self.control is not None:
            await self.control.close()
        if self.chime_bus is not None:
            await self.chime_bus.halt()  # no more records: nothing new starts while the calls are cut
        chime = [x for x in self.sessions if isinstance(x, ChimeSession)]
        for session in chime:
            for kvs in session._kvs:
                kvs.stop()
        for task in list(self.chime.tasks):
            task.cancel()
        await asyncio.gather(*self.chime.tasks, return_exceptions=True)
        for session in chime:
            if session.bridge is not None:
                await session.bridge.abort()
        if self.chime_bus is not None:
            await self.chime_bus.close()
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.channel is not None:
            await self.channel.close()

    # -- health -----------------------------------------------------------------------------------

    async def _probe_bridge_once(self) -> None:
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_PROBE_SECONDS)
            serving = resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = False
        if serving != self.bridge_serving:
            log.log(logging.INFO if serving else logging.WARNING, "bridge %s", "serving" if serving else "not serving",
                    extra={"stage": "gateway", "bridge": self.settings.bridge_target})
        self.bridge_serving = serving

    async def _probe_bridge(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PROBE_SECONDS)
            await self._probe_bridge_once()

    @property
    def ready(self) -> bool:
        return self.bridge_serving and not self.draining

    # -- the upgrade ------------------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/livez":
            return conn.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            chime = ""
            if self.chime_bus is not None:  # Chime's consumer, reported (a pod without it still takes Twilio/VAPI calls)
                chime = f"chime consumer: {self.chime_bus.state}, {len(self.chime_bus.assigned)} partitions\n"
            if self.ready:
                return conn.respond(http.HTTPStatus.OK, "ready\n" + chime)
            why = "draining" if self.draining else "bridge not serving"
            return conn.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {why}\n" + chime)
        if path != self.settings.gateway_twilio_path:
            return conn.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        token = self.settings.gateway_twilio_auth_token.get_secret_value()
        if token:
            url, params = signature.signed_url(self.settings.gateway_public_url, request.headers.get("Host", ""), request.path)
            if not signature.valid(token, request.headers.get(signature.HEADER), url, params):
                m.BAD_INPUT.labels("twilio", "signature").inc()
                log.warning("bad input", extra={"stage": "twilio", "kind": "signature",
                                                "error": "X-Twilio-Signature missing or not valid for this URL"})
                return conn.respond(http.HTTPStatus.FORBIDDEN, "invalid X-Twilio-Signature\n")
        if self.draining:
            return conn.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
        if len(self.sessions) >= self.settings.gateway_max_calls:
            return conn.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "at capacity\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        await self._run_session(TwilioSession(ws, self.settings, self.channel))

    async def listen_vapi(self, call: VapiCall) -> SessionReport:
        """Listen to one VAPI call (its ``call.monitor.listenUrl``) until it ends: what the
        context-api's webhook (call ``in-progress``) or an explicit request starts."""
        if self.draining:
            raise RuntimeError("the gateway is draining: no new calls")
        return await self._run_session(VapiSession(call, self.settings, self.channel))

    async def _run_session(self, session: TwilioSession | VapiSession | ChimeSession) -> SessionReport:
        self.sessions.add(session)
        try:
            return await session.run()
        except Exception:  # a bug in one call must not touch the others
            log.exception("session failed", extra={"stage": "gateway", "call_id": session.report.call_id or None})
            if session.bridge is not None:
                await session.bridge.abort()  # the bridge ends the call with reason "disconnect"
            return session.report
        finally:
            self.sessions.discard(session)
            self._session_closed.set()


async def run_gateway(settings: GatewaySettings) -> int:
    """Run until SIGTERM/SIGINT, then drain; returns the exit code."""
    import signal

    from lupita.metrics import serve_metrics

    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start()
    except BaseException:
        await gateway.close()
        raise
    serve_metrics(settings.gateway_metrics_port, settings.gateway_metrics_host)
    await stop.wait()
    log.info("signal received", extra={"stage": "gateway"})
    await gateway.shutdown()
    return 0


__all__ = ["BadInput", "Gateway", "run_gateway"]
