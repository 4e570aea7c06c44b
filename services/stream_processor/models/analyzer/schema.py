"""The CallAnalysis JSON schema, a strict validator for it, and the mapping to/from CallAnalysis.

The schema is built from the catalogues (topic ids, emotion ids and behavioral code ids are
enums), so a model cannot invent a topic or a code. It is the ``input_schema`` of the tool the
Anthropic backend forces the model to call, and every tool input is validated against it
before use with :func:`validate`, a strict validator of exactly the keywords this schema uses
(it refuses a schema with other keywords, so it cannot silently ignore a rule); the tests check
it against the reference ``jsonschema`` implementation.

The payload refers to utterances by ``(leg, seq)``; :func:`to_call_analysis` checks that they
exist and turns them into :class:`EvidenceSpan` s with character ranges. Error messages name the
place (``facts[2].confidence``) and the rule, never the value (values come from the transcript).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from stream_processor.models.analyzer.base import AnalyzerOutputInvalid
from stream_processor.models.analyzer.catalog import Catalogues
from stream_processor.models.analyzer.text import fold
from stream_processor.contracts import CallAnalysis, EvidenceSpan, UserFact, Utterance

FACT_TYPES = ("health", "family", "pet", "routine", "preference", "other")
# "medication.metformina", "daughter_name.rosa", "wake_up_time" (see analyzer.facts.fact_key)
KEY_PATTERN = r"^[a-z][a-z0-9_]{0,40}(\.[a-z0-9_]{1,40})?$"
LEG_ENUM = ["lupita", "person"]


def analysis_schema(cat: Catalogues, *, max_topics: int = 8, max_facts: int = 40,
                    max_summary_chars: int = 1200) -> dict[str, Any]:
    """JSON Schema (draft 2020-12 subset) of the analysis payload."""
    utterance_ref = {
        "type": "object",
        "additionalProperties": False,
        "required": ["leg", "seq"],
        "properties": {
            "leg": {"type": "string", "enum": LEG_ENUM},
            "seq": {"type": "integer", "minimum": 0},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["topics", "emotion_primary", "emotion_trend", "behavioral_codes", "facts", "summary"],
        "properties": {
            "topics": {
                "type": "array", "maxItems": max_topics, "uniqueItems": True,
                "description": "Topic ids of the catalogue the conversation was about, most important first.",
                "items": {"type": "string", "enum": list(cat.topics.ids)},
            },
            "emotion_primary": {
                "type": "string", "enum": list(cat.emotions.ids),
                "description": "The person's dominant emotion over the call ('neutral' when none stands out).",
            },
            "emotion_trend": {
                "type": "array", "maxItems": 500,
                "description": "The person's emotion in each of their utterances, by utterance seq.",
                "items": {
                    "type": "object", "additionalProperties": False, "required": ["seq", "emotion"],
                    "properties": {
                        "seq": {"type": "integer", "minimum": 0},
                        "emotion": {"type": "string", "enum": list(cat.emotions.ids)},
                    },
                },
            },
            "behavioral_codes": {
                "type": "array", "uniqueItems": True, "maxItems": len(cat.codes.ids),
                "description": "Ids of the behavioral codes of the catalogue that occurred in the call.",
                "items": {"type": "string", "enum": list(cat.codes.ids)},
            },
            "facts": {
                "type": "array", "maxItems": max_facts,
                "description": "Durable facts about the person, stated affirmatively in the call.",
                "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["type", "key", "value", "confidence", "evidence"],
                    "properties": {
                        "type": {"type": "string", "enum": list(FACT_TYPES)},
                        "key": {"type": "string", "pattern": KEY_PATTERN},
                        "value": {"type": "string", "minLength": 1, "maxLength": 200},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                        "evidence": {
                            "type": "object", "additionalProperties": False, "required": ["leg", "seq", "quote"],
                            "properties": {
                                **utterance_ref["properties"],
                                "quote": {"type": "string", "minLength": 1, "maxLength": 500},
                            },
                        },
                    },
                },
            },
            "summary": {
                "type": "string", "minLength": 1, "maxLength": max_summary_chars,
                "description": "Two or three sentences in Spanish summarising the call.",
            },
        },
    }


# --- validation --------------------------------------------------------------------------------

_KNOWN = frozenset({"type", "properties", "required", "additionalProperties", "items", "enum", "minimum",
                    "maximum", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems", "pattern",
                    "description"})
_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}


def _type_ok(value: Any, t: str) -> bool:
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if t == "integer":
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if t == "number":
        return isinstance(value, (int, float)) and math.isfinite(value)
    raise ValueError(f"unknown type {t!r}")


def _path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + p
    return out or "(top level)"


def validate(instance: Any, schema: dict[str, Any]) -> list[str]:
    """All violations of ``schema`` by ``instance``, as "place: rule" strings (empty = valid)."""
    errors: list[str] = []
    _validate(instance, schema, [], errors)
    return errors


def _validate(value: Any, schema: dict[str, Any], path: list[str | int], errors: list[str]) -> None:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise ValueError(f"schema at {_path(path)} uses keywords this validator does not implement: "
                         f"{sorted(unknown)}")
    where = _path(path)
    t = schema.get("type")
    if t is not None:
        if t not in _TYPES:
            raise ValueError(f"schema at {where}: unknown type {t!r}")
        if not _type_ok(value, t):
            errors.append(f"{where}: expected {t}, got {_json_type(value)}")
            return
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        errors.append(f"{where}: not one of the allowed values ({len(schema['enum'])} allowed)")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: does not match the pattern {schema['pattern']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: less than the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: greater than the maximum {schema['maximum']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if schema.get("uniqueItems"):
            for i, item in enumerate(value):
                if any(_same(item, other) for other in value[:i]):
                    errors.append(f"{_path(path + [i])}: duplicate item")
        if "items" in schema:
            for i, item in enumerate(value):
                _validate(item, schema["items"], path + [i], errors)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{_path(path + [name])}: required property missing")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                _validate(item, props[name], path + [name], errors)
            elif extra is False:
                errors.append(f"{_path(path + [str(name)])}: property not allowed")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _json_type(value: Any) -> str:
    for t in ("null", "boolean", "object", "array", "string", "integer", "number"):
        try:
            if _type_ok(value, t):
                return t
        except ValueError:
            pass
    return type(value).__name__


def schema_errors(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Violations (place and rule, never the value), from :func:`validate`."""
    return validate(instance, schema)


# --- mapping -----------------------------------------------------------------------------------


def to_call_analysis(call_id: str, payload: Any, utterances: Sequence[Utterance], cat: Catalogues, *,
                     analyzer: str, schema: dict[str, Any] | None = None, backend: str = "anthropic",
                     notes: Sequence[str] = ()) -> CallAnalysis:
    """Validate ``payload`` against the schema and the call's utterances and build the result.

    Raises :class:`AnalyzerOutputInvalid` listing (up to 5 of) the problems. A fact's quote that
    is not found in the cited utterance keeps the whole utterance as evidence (and a note says so).
    """
    schema = schema or analysis_schema(cat)
    errors = schema_errors(payload, schema)
    if errors:
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        raise AnalyzerOutputInvalid(backend, "tool input does not match the CallAnalysis schema: "
                                    + "; ".join(errors[:5]) + more)
    by_ref = {(u.leg, u.seq): u for u in utterances}
    problems: list[str] = []
    out_notes = list(notes)

    trend: list[tuple[float, str]] = []
    for i, item in enumerate(payload["emotion_trend"]):
        u = by_ref.get(("person", int(item["seq"])))
        if u is None:
            problems.append(f"emotion_trend[{i}].seq: no person utterance with this seq")
            continue
        trend.append((u.start_s, item["emotion"]))
    trend.sort(key=lambda x: x[0])

    facts: list[UserFact] = []
    for i, item in enumerate(payload["facts"]):
        ev = item["evidence"]
        u = by_ref.get((ev["leg"], int(ev["seq"])))
        if u is None:
            problems.append(f"facts[{i}].evidence: no {ev['leg']} utterance with this seq")
            continue
        start, end = _find_quote(u.text, ev["quote"])
        if start < 0:
            out_notes.append(f"facts[{i}]: quote not found in {u.leg} utterance {u.seq}; "
                             "the evidence is the whole utterance")
            start, end = 0, len(u.text)
        facts.append(UserFact(fact_type=item["type"], key=item["key"], value=item["value"].strip(),
                              confidence=float(item["confidence"]),
                              evidence=EvidenceSpan(leg=u.leg, seq=u.seq, start_s=u.start_s, end_s=u.end_s,
                                                    text=u.text, char_start=start, char_end=end)))
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise AnalyzerOutputInvalid(backend, "tool input cites utterances that are not in the call: "
                                    + "; ".join(problems[:5]) + more)
    order = {c: i for i, c in enumerate(cat.codes.ids)}
    return CallAnalysis(
        call_id=call_id,
        topics=tuple(payload["topics"]),
        emotion_primary=payload["emotion_primary"],
        emotion_trend=tuple(trend),
        behavioral_codes=tuple(sorted(payload["behavioral_codes"], key=order.__getitem__)),
        facts=tuple(facts),
        summary=" ".join(payload["summary"].split()),
        analyzer=analyzer,
        notes=tuple(out_notes),
    )


def _find_quote(text: str, quote: str) -> tuple[int, int]:
    """Character range of ``quote`` in ``text`` (exact, then ignoring case, accents and spacing)."""
    quote = quote.strip().strip("«»\"'“”")
    if not quote:
        return -1, -1
    i = text.find(quote)
    if i >= 0:
        return i, i + len(quote)
    words = [re.escape(w) for w in fold(quote).split()]
    if not words:
        return -1, -1
    m = re.search(r"\s+".join(words), fold(text))
    return (m.start(), m.end()) if m else (-1, -1)


def to_payload(analysis: CallAnalysis, utterances: Sequence[Utterance]) -> dict[str, Any]:
    """The schema-shaped payload of a CallAnalysis (e.g. to compare backends, or as JSON)."""
    seq_at = {u.start_s: u.seq for u in utterances if u.leg == "person"}
    return {
        "topics": list(analysis.topics),
        "emotion_primary": analysis.emotion_primary,
        "emotion_trend": [{"seq": seq_at[t], "emotion": e} for t, e in analysis.emotion_trend if t in seq_at],
        "behavioral_codes": list(analysis.behavioral_codes),
        "facts": [{
            "type": f.fact_type, "key": f.key, "value": f.value, "confidence": f.confidence,
            "evidence": {"leg": f.evidence.leg, "seq": f.evidence.seq,
                         "quote": f.evidence.text[f.evidence.char_start:f.evidence.char_end]},
        } for f in analysis.facts if f.evidence is not None],
        "summary": analysis.summary,
    }
