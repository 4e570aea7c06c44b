"""Start listening to a VAPI call when it goes live: on a ``status-update`` whose ``status`` is
``in-progress`` the webhook asks the telephony gateway's control API (``POST /vapi/calls``,
``services/telephony_gateway/control.py``) to listen to the call's ``monitor.listenUrl``, so its
audio reaches the bridge and the platform records and understands the call.

- **In the background**: the webhook answers VAPI at once; the request runs as a task on the
  event loop with its own timeout (``context_api_gateway_timeout_ms``). Every outcome is counted
  (``lupita_context_api_gateway_listen_total{outcome}``): ``started`` (202), ``already`` (409: a
  repeated status-update), ``refused`` (other 4xx: our request is wrong — logged), ``error`` (5xx,
  timeout, unreachable), ``no_consent``, ``no_listen_url`` (VAPI's monitor plan has listening off).
- **Consent** (the gateway marks the call's recording consent; without it nothing is recorded or
  derived): first the call itself — ``call.metadata.recordingConsent`` (boolean) and
  ``consentSource``, which our own outbound dialer or assistant configuration sets when it creates
  the call (VAPI echoes the metadata back in every server message, and the message is
  authenticated) —, else the person's latest row of ``consent_records`` (a consent given in an
  earlier call, source ``consent_records:<its source>``). When neither says yes, the gateway is
  NOT asked to listen: the call's audio never leaves VAPI (``no_consent``).
- Off when ``LUPITA_CONTEXT_API_GATEWAY_URL`` is empty. The phone number travels only in the
  request body (the gateway needs it to key the call), never in a URL or a log line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from context_api import metrics
from context_api.settings import ContextApiSettings
from context_api.store import Pool

log = logging.getLogger("context_api")

_CONSENT = """
SELECT recording_consent, consent_source FROM consent_records
WHERE phone_number_hash = %s ORDER BY recorded_at DESC, id DESC LIMIT 1
"""


def consent_of_call(call: dict[str, Any]) -> tuple[bool, str] | None:
    """(consent, source) from the call's metadata, or None when it says nothing."""
    metadata = call.get("metadata") if isinstance(call.get("metadata"), dict) else {}
    consent = metadata.get("recordingConsent")
    if not isinstance(consent, bool):
        return None
    source = metadata.get("consentSource")
    source = source[:100] if isinstance(source, str) and source else "vapi_call_metadata"
    return consent, source


class GatewayStarter:
    """Asks the gateway to listen; one per app (its HTTP client is made on first use in the loop)."""

    def __init__(self, settings: ContextApiSettings, pool: Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.url = settings.context_api_gateway_url.rstrip("/") + "/vapi/calls" if settings.context_api_gateway_url else ""
        self.timeout = settings.context_api_gateway_timeout_ms / 1000
        self.tasks: set[asyncio.Task] = set()
        self._client: httpx.AsyncClient | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def start(self, message: dict[str, Any], person: str | None, vapi_call_id: str) -> None:
        """Schedule the request for an ``in-progress`` status-update (returns at once)."""
        if not self.enabled:
            return
        task = asyncio.create_task(self._start(message, person, vapi_call_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _consent_on_record(self, person: str) -> tuple[bool, str] | None:
        with self.pool.connection(self.timeout) as conn:
            row = conn.execute(_CONSENT, (person,)).fetchone()
        return None if row is None else (bool(row[0]), f"consent_records:{row[1] or 'unknown'}")

    async def _start(self, message: dict[str, Any], person: str | None, vapi_call_id: str) -> str:
        outcome = "error"
        try:
            outcome = await asyncio.wait_for(self._request(message, person), self.timeout)
        except asyncio.TimeoutError:
            outcome = "error"
        except Exception as exc:  # noqa: BLE001 - gateway unreachable, store down: counted, the call goes on
            log.warning("gateway not asked to listen", extra={"stage": "gateway", "vapi_call_id": vapi_call_id,
                                                               "error": type(exc).__name__})
        metrics.GATEWAY.labels(outcome).inc()
        log.info("gateway listen request", extra={"stage": "gateway", "vapi_call_id": vapi_call_id,
                                                  "outcome": outcome})
        return outcome

    async def _request(self, message: dict[str, Any], person: str | None) -> str:
        call = message.get("call") if isinstance(message.get("call"), dict) else {}
        monitor = call.get("monitor") if isinstance(call.get("monitor"), dict) else {}
        listen_url = monitor.get("listenUrl")
        if not isinstance(listen_url, str) or not listen_url.startswith(("wss://", "ws://")):
            return "no_listen_url"
        consent = consent_of_call(call)
        if consent is None and person is not None:
            consent = await asyncio.to_thread(self._consent_on_record, person)
        if consent is None or not consent[0]:
            return "no_consent"
        customer = call.get("customer") if isinstance(call.get("customer"), dict) else {}
        if not customer.get("number") and isinstance(message.get("customer"), dict):
            customer = message["customer"]
        metadata = call.get("metadata") if isinstance(call.get("metadata"), dict) else {}
        body: dict[str, Any] = {
            "call": {"id": call.get("id"), "monitor": {"listenUrl": listen_url},
                     "customer": {"number": customer.get("number")}},
            "consent": True, "consentSource": consent[1],
            "direction": "inbound" if str(call.get("type", "")).startswith("inbound") else "outbound",
        }
        for ours, theirs in (("region", "region"), ("language", "language"), ("familyPlanId", "familyPlanId")):
            if isinstance(metadata.get(theirs), str):
                body[ours] = metadata[theirs][:100]
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        r = await self._client.post(self.url, json=body, headers={
            "authorization": f"Bearer {self.settings.context_api_gateway_token.get_secret_value()}"})
        if r.status_code == 202:
            return "started"
        if r.status_code == 409:
            return "already"
        if 400 <= r.status_code < 500:
            # the gateway's message names the field, never its value
            log.warning("gateway refused the listen request", extra={
                "stage": "gateway", "status": r.status_code, "error": r.text[:200]})
            return "refused"
        return "error"

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
