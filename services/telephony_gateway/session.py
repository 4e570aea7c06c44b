"""What every source's session shares: its report, the accounting of bad input and bridge
failures (metrics + one log line per kind and call), and the bookkeeping of a call's end.

A session (``twilio_session.TwilioSession``, ``vapi_listen.VapiSession``) carries one vendor
connection into one bridge call; :meth:`SessionBase.run` never raises for the vendor's or the
bridge's faults: they become the call's outcome (``metrics.OUTCOMES``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import metrics as m
from .bridge_client import BridgeCall
from .errors import BadInput, BridgeFailed


@dataclass
class SessionReport:
    """What happened to one call (never holds the phone number)."""

    outcome: str = "rejected"
    call_id: str = ""
    call_sid: str = ""  # the vendor's call id (Twilio CallSid, VAPI call id)
    stream_sid: str = ""
    messages: int = 0  # websocket messages read off the vendor's socket
    frames: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, int] = field(default_factory=dict)
    bad_input: dict[str, int] = field(default_factory=dict)
    bridge_error: str = ""


class SessionBase:
    source = ""  # "twilio", "vapi": the metrics' source label and the logs' stage

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.report = SessionReport()
        self.bridge: BridgeCall | None = None
        self._warned: set[str] = set()
        self._live = False

    def extra(self, **kw) -> dict:
        """The fixed keys of this call's log lines."""
        return {"call_id": self.report.call_id or None, "stage": self.source,
                "vendor_call_id": self.report.call_sid or None, **kw}

    def bad(self, exc: BadInput) -> None:
        """Count a refusal; log it once per kind and call (a flood stays one line), fatal ones always."""
        m.BAD_INPUT.labels(self.source, exc.kind).inc()
        self.report.bad_input[exc.kind] = self.report.bad_input.get(exc.kind, 0) + 1
        if exc.kind == "media_format" and exc.fatal:
            m.FORMAT_MISMATCHES.labels(self.source).inc()
        if exc.kind not in self._warned or exc.fatal:
            self._warned.add(exc.kind)
            self.log.warning("bad input", extra=self.extra(kind=exc.kind, error=exc.message, fatal=exc.fatal))

    def bridge_failed(self, exc: BridgeFailed) -> None:
        m.BRIDGE_ERRORS.labels(self.source, exc.code).inc()
        self.report.bridge_error = f"{exc.code}: {exc.detail}"
        self.log.error("bridge failed", extra=self.extra(code=exc.code, error=exc.detail[:300]))

    def went_live(self) -> None:
        self._live = True
        m.LIVE_CALLS.labels(self.source).inc()

    async def end_bridge(self, outcome: str, ended_at_us: int) -> str:
        """The bridge side of a call's end: ``bridge_error`` aborts the stream (after recording
        the bridge's reason), anything else is sent as the CallEnd reason; a bridge that does not
        close the call cleanly turns the outcome into ``bridge_error``."""
        if self.bridge is None:
            return outcome
        if outcome == "bridge_error":
            if not self.report.bridge_error:
                self.bridge_failed(self.bridge.failure())
            await self.bridge.abort()
            return outcome
        try:
            await self.before_end()
            await self.bridge.end(outcome, ended_at_us)
        except BridgeFailed as exc:
            self.bridge_failed(exc)
            return "bridge_error"
        return outcome

    async def before_end(self) -> None:
        """Send what the session still holds (joined frames, a tail) before CallEnd."""

    def finish(self, outcome: str) -> None:
        if self._live:
            self._live = False
            m.LIVE_CALLS.labels(self.source).dec()
        self.report.outcome = outcome
        m.CALLS.labels(self.source, outcome).inc()
        self.log.info("call ended", extra=self.extra(outcome=outcome, frames=self.report.frames, gaps=self.report.gaps,
                                                     bad_input=self.report.bad_input or None))
