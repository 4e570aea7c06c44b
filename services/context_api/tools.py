"""The voice agent's tools: argument parsing (VAPI's three tool-call shapes) and validation, and
the tools getUserContext, saveUserFact, forgetUserFact and scheduleCallback.

Every tool works for the CALLER of the live call (the phone VAPI puts in the message), never for a
number the model passes. A bad call gives an :class:`ToolError` whose message is one Spanish
sentence the agent can use; it never holds the phone number or an argument's value.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from context_api.context import build, empty, one_line
from context_api.phones import InvalidPhone, person_hash
from context_api.settings import ContextApiSettings
from context_api import metrics
from context_api.past import PastConversations
from context_api.store import Pool, Snapshot, read_profile, schedule_callback, with_past
from context_api.when import MAX_WHEN_CHARS, check_horizon, parse_when, say_datetime

# the one fact store (shared with the stream processor's analyzer), and its vocabulary: one set of
# fact types and one key shape for the facts the analyzer and the agent write
from lupita import facts
from lupita.facts import FACT_TYPES, KEY_PATTERN

# our call ids (companion_calls' CHECK)
CALL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")

TOOL_NAMES = ("getUserContext", "saveUserFact", "forgetUserFact", "scheduleCallback")
MAX_ARGUMENTS_CHARS = 4096
MAX_FACT_VALUE_CHARS = 200
MAX_REASON_CHARS = 300
_KEY_RE = re.compile(KEY_PATTERN)


SAVE_RESULTS = {
    facts.INSERTED: "Dato guardado.", facts.CONFIRMED: "Dato confirmado.",
    facts.UNCHANGED: "Ese dato ya estaba guardado.",
    facts.SUPERSEDED: "Dato actualizado; el valor anterior queda en el historial.",
    facts.STALE: "Ya hay un dato más reciente; no se cambió.",
    facts.TO_CONFIRM: "Anotado como pendiente de confirmar con la persona.",
}


class ToolError(Exception):
    """The tool call's error result (one line, safe to show to the model)."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: Any  # dict when well formed; anything else is refused by the tool


@dataclass(frozen=True)
class Caller:
    """Who is on the live call: the keyed hash of the number, or why there is none."""

    person: str | None
    problem: str | None
    vapi_call_id: str | None
    call_id: str | None  # ours, when VAPI passes it in the call's metadata


def parse_tool_calls(message: dict[str, Any]) -> list[ToolCall | tuple[str, str]]:
    """The calls of a ``tool-calls`` message in order: a :class:`ToolCall`, or (id, problem) for an
    entry that is not a tool call at all. Reads ``toolCallList``, else ``toolWithToolCallList[].toolCall``,
    else ``toolCalls``. Each entry is ``{id, type, function: {name, arguments}}`` (arguments a JSON string
    or an object) or ``{id, name, parameters | arguments}``."""
    raw = message.get("toolCallList")
    if not isinstance(raw, list):
        wrapped = message.get("toolWithToolCallList")
        if isinstance(wrapped, list):
            raw = [w.get("toolCall") if isinstance(w, dict) else None for w in wrapped]
        else:
            raw = message.get("toolCalls")
    if not isinstance(raw, list):
        return []
    out: list[ToolCall | tuple[str, str]] = []
    for item in raw:
        if not isinstance(item, dict):
            out.append(("", "Llamada de herramienta mal formada."))
            continue
        call_id = item.get("id")
        call_id = call_id if isinstance(call_id, str) and 0 < len(call_id) <= 200 else ""
        fn = item.get("function")
        if isinstance(fn, dict):
            name = fn.get("name")
            args = fn["arguments"] if "arguments" in fn else fn.get("parameters")
        else:
            name = item.get("name")
            args = item["parameters"] if "parameters" in item else item.get("arguments")
        if not call_id:
            out.append(("", "Llamada de herramienta sin id."))
            continue
        if not isinstance(name, str) or not name:
            out.append((call_id, "Llamada de herramienta sin nombre."))
            continue
        out.append(ToolCall(call_id, name[:100], args))
    return out


def arguments(call: ToolCall, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    args = call.arguments
    if args is None:
        args = {}
    if isinstance(args, str):
        if len(args) > MAX_ARGUMENTS_CHARS:
            raise ToolError("Los argumentos son demasiado largos.")
        if not args.strip():
            args = {}
        else:
            try:
                args = json.loads(args)
            except ValueError:
                raise ToolError("Los argumentos no son JSON válido.") from None
    if not isinstance(args, dict):
        raise ToolError("Los argumentos deben ser un objeto JSON.")
    if len(json.dumps(args, ensure_ascii=False, default=str)) > MAX_ARGUMENTS_CHARS:
        raise ToolError("Los argumentos son demasiado largos.")
    missing = [k for k in required if k not in args or args[k] is None]
    if missing:
        raise ToolError(f"Faltan argumentos: {', '.join(missing)}.")
    extra = sorted(k for k in args if k not in required and k not in optional)
    if extra:
        shown = ", ".join(one_line(k, 40) for k in extra[:5])
        raise ToolError(f"Argumentos no admitidos: {shown}.")
    return args


def _text(args: dict[str, Any], name: str, max_chars: int, *, min_chars: int = 1) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise ToolError(f"El argumento {name} debe ser texto.")
    value = one_line(value)
    if len(value) < min_chars:
        raise ToolError(f"El argumento {name} está vacío.")
    if len(value) > max_chars:
        raise ToolError(f"El argumento {name} es demasiado largo (máximo {max_chars} caracteres).")
    return value


class Tools:
    """The tools over the pool (synchronous: run them in a worker thread)."""

    def __init__(self, settings: ContextApiSettings, pool: Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.key = settings.hmac_key_bytes
        self.tz = settings.tz
        self.wait_s = settings.context_api_tool_timeout_ms / 1000
        self.past = PastConversations(settings)

    # -- who is calling

    def caller(self, message: dict[str, Any]) -> Caller:
        call = message.get("call") if isinstance(message.get("call"), dict) else {}
        vapi_call_id = call.get("id") if isinstance(call.get("id"), str) else None
        if vapi_call_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", vapi_call_id):
            vapi_call_id = None
        metadata = call.get("metadata") if isinstance(call.get("metadata"), dict) else {}
        ours = next((metadata[k] for k in ("lupita_call_id", "callId", "call_id") if isinstance(metadata.get(k), str)), None)
        ours = ours if ours and CALL_ID_RE.match(ours) else None
        number = None
        for holder in (call.get("customer"), message.get("customer")):
            if isinstance(holder, dict) and holder.get("number") is not None:
                number = holder.get("number")
                break
        if number is None:
            return Caller(None, "No se pudo identificar el número de la persona que llama.", vapi_call_id, ours)
        try:
            person = person_hash(number, self.key, default_region=self.settings.context_api_default_region,
                                 regions=self.settings.phone_regions)
        except InvalidPhone:
            return Caller(None, "El número de la persona que llama no es válido.", vapi_call_id, ours)
        return Caller(person, None, vapi_call_id, ours)

    # -- context

    @staticmethod
    def live_call_ids(caller: Caller) -> tuple[str, ...]:
        """The ids the live call may have in ``call_alerts``: ours from the call's metadata, and the
        one the telephony gateway gives a VAPI call it listens to (``vapi-<VAPI call id>``)."""
        ids = [caller.call_id] if caller.call_id else []
        if caller.vapi_call_id and CALL_ID_RE.match(f"vapi-{caller.vapi_call_id}"):
            ids.append(f"vapi-{caller.vapi_call_id}")
        return tuple(dict.fromkeys(ids))

    def read(self, person: str, *, live_call_ids: tuple[str, ...] = (), wait_s: float | None = None,
             fanout: bool | None = None) -> Snapshot:
        """The person's snapshot from Postgres (the profile, or the base tables with ``fanout``)."""
        s = self.settings
        fanout = s.context_api_context_source == "fanout" if fanout is None else fanout
        with self.pool.connection(self.wait_s if wait_s is None else wait_s) as conn:
            return read_profile(conn, person, max_facts=s.context_api_max_facts,
                                recent_calls=s.context_api_recent_calls, alert_days=s.context_api_alert_days,
                                live_call_ids=live_call_ids, fanout=fanout)

    def context(self, person: str, *, wait_s: float | None = None) -> tuple[dict[str, Any], str]:
        """The context from Postgres alone (no Weaviate part), synchronous."""
        return build(self.read(person, wait_s=wait_s), datetime.now(timezone.utc), self.tz,
                     self.settings.context_api_brief_max_chars)

    async def context_async(self, person: str, *, live_call_ids: tuple[str, ...] = (),
                            budget_s: float | None = None) -> tuple[dict[str, Any], str]:
        """The whole context within ``budget_s``: Postgres (a worker thread), then the relevant past
        conversations — those stored at the person's last analysis when they are about the
        profile's latest call, else from Weaviate with what is left of the budget (at most
        ``context_api_past_budget_ms``); a slow or failing Weaviate leaves them out, said in
        ``degraded`` and counted — never a wait past the budget. A slow Postgres raises
        ``asyncio.TimeoutError`` (the caller degrades)."""
        budget = self.wait_s if budget_s is None else budget_s
        started = time.perf_counter()
        snap = await asyncio.wait_for(
            asyncio.to_thread(self.read, person, live_call_ids=live_call_ids, wait_s=budget), budget)
        now = datetime.now(timezone.utc)
        if self.settings.context_api_past_conversations:
            left = min(self.settings.context_api_past_budget_ms / 1000, budget - (time.perf_counter() - started))
            exclude = {c["call_id"] for c in snap.calls}
            past, why = self.past.stored(person, snap.anchor, snap.stored_past, exclude, now), None
            if past is None:
                past, why = await self.past.find(person, snap.anchor, exclude, now, left)
            snap = with_past(snap, past, {"past_conversations": why} if why in ("timeout", "error") else {})
        if snap.live_alerts:
            metrics.LIVE_ALERTS.inc(len(snap.live_alerts))
        return build(snap, now, self.tz, self.settings.context_api_brief_max_chars)

    async def run_async(self, call: ToolCall, caller: Caller, timeout_s: float) -> str:
        """One tool call: getUserContext on the event loop (its Weaviate part is async), the others
        in a worker thread."""
        if call.name == "getUserContext":
            person = self.user_context_person(call, caller)  # arguments and a hash: no I/O
            ctx, text = await self.context_async(person, live_call_ids=self.live_call_ids(caller), budget_s=timeout_s)
            return json.dumps({"brief": text, "context": ctx}, ensure_ascii=False, separators=(",", ":"))
        return await asyncio.to_thread(self.run, call, caller)

    def run(self, call: ToolCall, caller: Caller) -> str:
        """The result string of one tool call, or :class:`ToolError`."""
        if call.name == "getUserContext":
            return self.get_user_context(call, caller)
        if call.name == "saveUserFact":
            return self.save_user_fact(call, caller)
        if call.name == "forgetUserFact":
            return self.forget_user_fact(call, caller)
        if call.name == "scheduleCallback":
            return self.schedule_callback(call, caller)
        raise ToolError("Herramienta desconocida.")

    def _person(self, caller: Caller) -> str:
        if caller.person is None:
            raise ToolError(caller.problem or "No se pudo identificar a la persona que llama.")
        return caller.person

    def get_user_context(self, call: ToolCall, caller: Caller) -> str:
        """getUserContext without the Weaviate part (synchronous callers)."""
        ctx, text = self.context(self.user_context_person(call, caller))
        return json.dumps({"brief": text, "context": ctx}, ensure_ascii=False, separators=(",", ":"))

    def user_context_person(self, call: ToolCall, caller: Caller) -> str:
        """The caller's person hash after checking getUserContext's arguments (ToolError if bad)."""
        args = arguments(call, (), ("phone",))
        person = self._person(caller)
        if args.get("phone") is not None:
            # the model may pass the number it was given; it must be the caller's own
            try:
                asked = person_hash(args["phone"], self.key, default_region=self.settings.context_api_default_region,
                                    regions=self.settings.phone_regions)
            except InvalidPhone:
                raise ToolError("El número indicado no es válido.") from None
            if asked != person:
                raise ToolError("Solo puedo dar el contexto de la persona que está en la llamada.")
        return person

    def save_user_fact(self, call: ToolCall, caller: Caller) -> str:
        args = arguments(call, ("type", "key", "value"), ("confidence",))
        fact_type = _text(args, "type", 40)
        if fact_type not in FACT_TYPES:
            raise ToolError(f"Tipo de dato desconocido; usa uno de: {', '.join(FACT_TYPES)}.")
        key = _text(args, "key", 81)
        if not _KEY_RE.match(key):
            raise ToolError("La clave debe ser snake_case en minúsculas, por ejemplo medication.metformina.")
        value = _text(args, "value", MAX_FACT_VALUE_CHARS)
        confidence = args.get("confidence", 0.8)
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not math.isfinite(confidence) \
                or not 0 <= confidence <= 1:
            raise ToolError("La confianza debe ser un número entre 0 y 1.")
        person = self._person(caller)
        obs = facts.Observation(fact_type=fact_type, key=key, value=value, confidence=float(confidence),
                                observed_at=datetime.now(timezone.utc), source="agent",
                                call_id=caller.call_id or caller.vapi_call_id)
        with self.pool.connection(self.wait_s) as conn:
            outcome = facts.record(conn, person, obs).outcome
        return SAVE_RESULTS.get(outcome, "Dato guardado.")

    def forget_user_fact(self, call: ToolCall, caller: Caller) -> str:
        """The person says a fact no longer holds ("ya no tomo la metformina"): ``type``, ``key`` and,
        for a multi-valued key (medications, children…), ``value``. The value is closed, kept in the
        history (``retracted``); the agent asked the person, so a protected fact is closed too."""
        args = arguments(call, ("type", "key"), ("value",))
        fact_type = _text(args, "type", 40)
        if fact_type not in FACT_TYPES:
            raise ToolError(f"Tipo de dato desconocido; usa uno de: {', '.join(FACT_TYPES)}.")
        key = _text(args, "key", 81)
        if not _KEY_RE.match(key):
            raise ToolError("La clave debe ser snake_case en minúsculas, por ejemplo medication.metformina.")
        value = _text(args, "value", MAX_FACT_VALUE_CHARS) if args.get("value") is not None else None
        if value is None and facts.is_multi_valued(key) and "." not in key:
            raise ToolError("Para esa clave indica también el valor que ya no aplica (value).")
        person = self._person(caller)
        with self.pool.connection(self.wait_s) as conn:
            outcome = facts.retract(conn, person, fact_type=fact_type, key=key, value=value,
                                    observed_at=datetime.now(timezone.utc), source="agent",
                                    call_id=caller.call_id or caller.vapi_call_id).outcome
        return {facts.RETRACTED: "Dato retirado; queda en el historial.",
                facts.NOT_FOUND: "No había ese dato guardado como vigente.",
                facts.STALE: "Ya hay un dato más reciente; no se cambió."}.get(outcome, "Dato retirado.")

    def schedule_callback(self, call: ToolCall, caller: Caller) -> str:
        args = arguments(call, ("when", "reason"))
        when_text = _text(args, "when", MAX_WHEN_CHARS)
        reason = _text(args, "reason", MAX_REASON_CHARS)
        person = self._person(caller)
        s = self.settings
        now = datetime.now(timezone.utc)
        when = parse_when(when_text, self.tz, now)
        if when is None:
            raise ToolError("No entendí la hora; ¿me la puede decir de otra forma, por ejemplo "
                            "«mañana a las cinco de la tarde»?")
        refusal = check_horizon(when, now, min_lead=timedelta(minutes=s.context_api_callback_min_lead_minutes),
                                max_ahead=timedelta(days=s.context_api_callback_max_days))
        if refusal:
            raise ToolError(refusal)
        with self.pool.connection(self.wait_s) as conn:
            created, kept = schedule_callback(conn, person=person, when=when, reason=reason,
                                              call_id=caller.call_id or caller.vapi_call_id,
                                              window=timedelta(minutes=s.context_api_callback_window_minutes))
        said = say_datetime(kept, self.tz)
        return f"Llamada agendada para {said}." if created else f"Ya había una llamada agendada para {said}."


def minimal_context() -> tuple[dict[str, Any], str]:
    from context_api.context import MINIMAL_BRIEF

    return {**empty(), "degraded": True}, MINIMAL_BRIEF
