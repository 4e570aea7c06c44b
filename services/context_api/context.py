"""A person's context for the voice agent: structured (JSON) and a compact Spanish brief.

:func:`build` turns a :class:`~context_api.store.Snapshot` into ``{"known", "facts", "to_confirm",
"last_calls", "alerts", "pending_callbacks", "recurring_topics", "behavioral_hints",
"past_conversations", "this_call_alerts", "degraded"}`` and the brief, a single line that never
exceeds the character budget: sections go in order of use to the agent (what THIS call has raised
so far, alerts of recent calls to follow up, facts to confirm — "¿Sigue tomando la metformina?" —,
facts with the protected ones first, each under its spoken label ("medicamento: metformina 850",
"hija: Rosa": :mod:`context_api.labels`), what worked and what to treat with care, recurring topics,
pending callbacks, last calls, similar past conversations) and whatever does not fit is cut at an
item boundary. An unknown person gets a well-formed empty context and a brief that says so.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from context_api.labels import fact_label
from context_api.store import Snapshot
from context_api.when import say_ago, say_datetime

MINIMAL_BRIEF = ("Contexto no disponible en este momento: conversa con naturalidad, no supongas datos "
                 "previos y pregunta cómo ha estado.")
UNKNOWN_BRIEF = ("Persona sin llamadas ni datos previos: preséntate, pregunta su nombre y cómo está, "
                 "sin suponer nada.")
_SEVERITY_ES = {"critical": "crítica", "high": "alta", "medium": "media", "low": "baja"}
_FACT_TYPE_ES = {"health": "salud", "family": "familia", "pet": "mascota", "routine": "rutina",
                 "preference": "gusto", "other": "otro"}
_SPACE = re.compile(r"\s+")
# the analyzer's catalogues (stream_processor/data/{behavioral_codes,topics}.json) as the brief says
# them; a code or topic not listed here is said by its id
CODE_ES = {
    "echo_open_question": "preguntas abiertas que retoman sus palabras",
    "validacion_emocional": "validar lo que siente",
    "reminiscencia": "invitarle a recordar su pasado",
    "recordatorio_medicamento": "recordarle sus medicinas",
    "compromiso_seguimiento": "quedar en volver a llamar",
    "duelo_migratorio": "hablar de sus familiares que migraron",
    "expresion_soledad": "hablar de su soledad",
}
TOPIC_ES = {"sueno": "sueño", "migracion": "migración", "religion": "religión"}


def one_line(text: Any, limit: int | None = None) -> str:
    out = _SPACE.sub(" ", str(text or "")).strip()
    if limit is not None and len(out) > limit:
        out = out[: max(0, limit - 1)].rstrip() + "…"
    return out


def empty() -> dict[str, Any]:
    return {"known": False, "facts": [], "to_confirm": [], "last_calls": [], "alerts": [], "pending_callbacks": [],
            "recurring_topics": [], "behavioral_hints": {"worked": [], "sensitive_topics": []},
            "past_conversations": [], "this_call_alerts": [], "degraded": {}}


def topic_es(topic: str) -> str:
    return TOPIC_ES.get(topic, topic.replace("_", " "))


def code_es(code: str) -> str:
    return CODE_ES.get(code, code.replace("_", " "))


def _item(key: str) -> str:
    """A fact key as said: its spoken label (:mod:`context_api.labels`), else its base with spaces."""
    return fact_label(key) or key.partition(".")[0].replace("_", " ")


def fact_phrase(f: dict[str, Any]) -> str:
    """One fact of the brief: "medicamento: metformina 850", "hija: Rosa"; a key without a label
    keeps its type to place it ("salud, blood type: O+")."""
    label = fact_label(f["key"])
    if label is None:
        label = f"{_FACT_TYPE_ES.get(f['type'], f['type'])}, {_item(f['key'])}"
    return f"{label}: {one_line(f['value'], 120)}"


def question(f: dict[str, Any]) -> str:
    """What the agent should ask about an open question of the fact store (a protected fact the
    analyzer heard contradicted): "¿Sigue tomando la metformina?"."""
    base = f["fact_key"].partition(".")[0]
    current = one_line(f.get("current_value") or f["fact_value"], 80)
    proposed = one_line(f["fact_value"], 80)
    if f.get("proposal") == "retraction":
        if base == "medication":
            return f"¿Sigue tomando {current}?"
        if base == "allergy":
            return f"¿Sigue teniendo alergia a {current}?"
        if base in ("condition", "diagnosis"):
            return f"¿Sigue con {current}?"
        if base.startswith("emergency_contact"):
            return f"¿{current[:1].upper() + current[1:]} sigue siendo su contacto de emergencia?"
        return f"¿Sigue siendo así: {_item(f['fact_key'])} {current}?"
    if base == "medication":
        return f"¿Sigue tomando {current} o ahora {proposed}?"
    if base.startswith("emergency_contact"):
        return f"¿Su contacto de emergencia sigue siendo {current} o ahora es {proposed}?"
    return f"¿{_item(f['fact_key']).capitalize()}: sigue siendo {current} o ahora es {proposed}?"


def build(snap: Snapshot, now: datetime, tz: ZoneInfo, max_chars: int) -> tuple[dict[str, Any], str]:
    ctx = {
        "known": bool(snap.facts or snap.calls or snap.callbacks or snap.alerts),
        # current facts, protected (medications, allergies, diagnoses, emergency contacts) first
        "facts": [
            {"id": f.get("id"), "type": f["fact_type"], "key": f["fact_key"], "label": _item(f["fact_key"]),
             "value": f["fact_value"], "confidence": round(float(f["confidence"]), 3), "source": f["source"],
             "observed_at": f["observed_at"].isoformat(), "protected": bool(f.get("protected")),
             "observations": int(f.get("observation_count") or 1)}
            for f in snap.facts if f.get("status", "current") == "current"
        ],
        # protected facts the analyzer heard contradicted: the agent asks
        "to_confirm": [
            {"id": f.get("id"), "type": f["fact_type"], "key": f["fact_key"], "current_value": f.get("current_value"),
             "proposed": f.get("proposal"), "value": f["fact_value"], "question": question(f)}
            for f in snap.facts if f.get("status") == "to_confirm"
        ],
        "last_calls": [
            {"call_id": c["call_id"], "started_at": c["started_at"].isoformat(),
             "when": say_ago(c["started_at"], now, tz), "summary": c["summary"] or "",
             "emotion": c["emotion_primary"] or "", "topics": list(c["topics"] or [])}
            for c in snap.calls
        ],
        "alerts": [
            {"call_id": a["call_id"], "cue": a["cue_id"], "severity": a["severity"], "said": a["text"] or "",
             "raised_at": a["raised_at"].isoformat(), "when": say_ago(a["raised_at"], now, tz)}
            for a in snap.alerts
        ],
        "pending_callbacks": [
            {"scheduled_for": cb["scheduled_for"].isoformat(), "when": say_datetime(cb["scheduled_for"], tz),
             "reason": cb["reason"] or ""}
            for cb in snap.callbacks
        ],
        "recurring_topics": [
            {"topic": t["topic"], "label": topic_es(t["topic"]), "calls": int(t["calls"]),
             "last_when": say_ago(t["last_at"], now, tz) if t.get("last_at") else ""}
            for t in snap.recurring_topics
        ],
        "behavioral_hints": {
            "worked": [{"code": h["code"], "label": code_es(h["code"]), "calls": int(h["calls"]),
                        "good": int(h["good"])} for h in (snap.hints or {}).get("worked") or []],
            "sensitive_topics": [{"topic": h["topic"], "label": topic_es(h["topic"]), "calls": int(h["calls"]),
                                  "bad": int(h["bad"])} for h in (snap.hints or {}).get("sensitive_topics") or []],
        },
        "past_conversations": [
            {"call_id": c["call_id"], "started_at": c["started_at"].isoformat(),
             "when": say_ago(c["started_at"], now, tz), "summary": c["summary"], "topics": c["topics"],
             "emotion": c["emotion"], "similarity": c["similarity"]}
            for c in snap.past
        ],
        "this_call_alerts": [
            {"call_id": a["call_id"], "cue": a["cue_id"], "severity": a["severity"], "said": a["text"] or "",
             "raised_at": a["raised_at"].isoformat(), "to_verify": bool(a.get("to_verify")),
             "verification": a.get("verification") or ""}
            for a in snap.live_alerts
        ],
        "degraded": dict(snap.degraded),
    }
    # an alert of the live call is said once, as this call's
    live = {(a["call_id"], a["cue"]) for a in ctx["this_call_alerts"]}
    ctx["alerts"] = [a for a in ctx["alerts"] if (a["call_id"], a["cue"]) not in live]
    ctx["known"] = ctx["known"] or bool(ctx["this_call_alerts"])
    return ctx, brief(ctx, max_chars)


def brief(ctx: dict[str, Any], max_chars: int) -> str:
    if not ctx["known"]:
        return one_line(UNKNOWN_BRIEF, max_chars)
    sections: list[tuple[str, list[str]]] = []
    if ctx.get("this_call_alerts"):
        sections.append(("En esta llamada ya dijo", [
            f"{a['cue'].replace('_', ' ')} (gravedad {_SEVERITY_ES.get(a['severity'], a['severity'])}"
            + (", por verificar" if a["to_verify"] else "") + ")"
            + (f": «{one_line(a['said'], 120)}»" if a["said"] else "") + "; atiéndelo ahora"
            for a in ctx["this_call_alerts"]]))
    if ctx["alerts"]:
        sections.append(("Pendiente de seguimiento", [
            f"{a['when']}: {a['cue'].replace('_', ' ')} (gravedad {_SEVERITY_ES.get(a['severity'], a['severity'])})"
            + (f", dijo «{one_line(a['said'], 120)}»" if a["said"] else "") + "; pregunta cómo sigue"
            for a in ctx["alerts"]]))
    if ctx["to_confirm"]:
        sections.append(("Por confirmar con tacto", [q["question"] for q in ctx["to_confirm"]]))
    if ctx["facts"]:
        sections.append(("Lo que sabemos", [fact_phrase(f) for f in ctx["facts"]]))
    hints = ctx.get("behavioral_hints") or {}
    if hints.get("worked"):
        sections.append(("Le ha funcionado", [h["label"] for h in hints["worked"]]))
    if hints.get("sensitive_topics"):
        sections.append(("Temas con tacto (le afectaron)", [
            f"{h['label']} ({h['bad']} de {h['calls']} llamadas)" for h in hints["sensitive_topics"]]))
    if ctx.get("recurring_topics"):
        sections.append(("Temas frecuentes", [f"{t['label']} ({t['calls']} llamadas)" for t in ctx["recurring_topics"]]))
    if ctx["pending_callbacks"]:
        sections.append(("Llamadas agendadas", [
            f"{cb['when']}" + (f" ({one_line(cb['reason'], 80)})" if cb["reason"] else "")
            for cb in ctx["pending_callbacks"]]))
    if ctx["last_calls"]:
        # a call not analysed yet (no summary, no emotion) says nothing but when it was
        described = [c for c in ctx["last_calls"] if c["summary"] or c["emotion"]]
        sections.append(("Últimas llamadas", [
            f"{c['when']}" + (f", ánimo {c['emotion']}" if c["emotion"] else "")
            + (f": {one_line(c['summary'], 240).rstrip('.')}" if c["summary"] else "")
            for c in described] or [f"la más reciente {ctx['last_calls'][0]['when']}, aún sin resumen"]))
    if ctx.get("past_conversations"):
        sections.append(("Conversaciones parecidas", [
            f"{c['when']}: {one_line(c['summary'], 200).rstrip('.')}" for c in ctx["past_conversations"] if c["summary"]]))
    out = ""
    for title, items in sections:
        head = (" " if out else "") + f"{title}: "
        added = False
        for item in items:
            piece = (head if not added else "; ") + item
            if len(out) + len(piece) + 1 > max_chars:
                break
            out += piece
            added = True
        if added:
            out += "."
        if len(out) >= max_chars - 20:
            break
    return one_line(out or UNKNOWN_BRIEF, max_chars)
