"""The fact store: what is known about a person, with its history — ONE implementation for the
analyzer (stream processor, at call end) and the voice agent / JSON API (context API).

Plain SQL over a psycopg connection (no Kafka, no Weaviate, no analyzer): both services import it
cheaply. Tables: ``user_facts`` (one row per value of a key, migrations 0002 and 0005) and
``user_fact_observations`` (every time a value was seen).

The rule (see migration 0005 for the columns):

- **Bi-temporal, never deleted.** A value holds from ``valid_from`` to ``valid_to`` (as said in the
  calls) and was recorded from ``recorded_at`` to ``superseded_at``. Closing a value sets both ends;
  the row stays as history.
- **Single- vs multi-valued keys.** A multi-valued key (children's names, medications, allergies,
  likes…: :func:`is_multi_valued`) stores each value under its own canonical key
  ``base.slug(value)`` (``medication.metformina``), the analyzer's own key shape; a new value never
  closes another. A new value of a single-valued key (``wake_up_time``) closes the current one.
- **Retraction.** :func:`retract` closes just the named value ("ya no tomo la metformina").
- **Repetition.** Seeing a current value again adds an *observation* (keyed ``source:call``, so a
  replayed call or a retried tool call is the same one): ``observation_count`` rises and the
  confidence becomes ``1 - Π(1 - cᵢ)`` over the observations — never a duplicate row.
- **Protected classes** (medications, allergies, diagnoses, emergency contacts:
  :func:`is_protected`): the analyzer alone never closes them. Its conflicting value or retraction
  is kept as a row ``to_confirm`` (the context asks the agent to check: "¿Sigue tomando la
  metformina?"). The agent or a person (sources ``agent``/``manual``) decide: writing the proposed
  value accepts it, writing the current value again rejects the proposals.
- **Provenance.** Every observation keeps its source (``analysis``/``agent``/``manual``), call, the
  utterance it came from (leg, seq, time span, text) and that utterance's transcription confidence
  (given, or read from ``call_utterances`` of the call). The fact row carries the latest one.
- **Concurrency.** Writers of one person are serialised by a transaction-level advisory lock; the
  database itself refuses a second current row per (person, type, key) and a second open
  question per value (partial unique indexes ``user_facts_active_key``, ``user_facts_to_confirm_key``).
- **Stale observations.** A different value observed before the current value's latest confirmation
  by another call (a replay of an old call) changes nothing.

Every function works inside the caller's transaction when there is one, else in its own.
"""

from __future__ import annotations

import math
import re
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ContextManager

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

# the analyzer's vocabulary (stream_processor.models.analyzer.schema holds the same: a test checks)
FACT_TYPES = ("health", "family", "pet", "routine", "preference", "other")
# "medication.metformina", "daughter_name.rosa", "wake_up_time"
KEY_PATTERN = r"^[a-z][a-z0-9_]{0,40}(\.[a-z0-9_]{1,40})?$"
SOURCES = ("analysis", "agent", "manual")
# sources that may close a protected fact: the agent asked the person, or a person edited it
AUTHORITATIVE_SOURCES = ("agent", "manual")
# pg_advisory_xact_lock(class, hashtext(phone_number_hash)): serialises fact writers per person,
# "lupf" in ASCII (the same lock the stream processor's sink took before this module existed)
FACT_LOCK_CLASS = 0x6C757066
MAX_VALUE_CHARS = 1000
MAX_KEY_CHARS = 128
MAX_TYPE_CHARS = 40

# Outcomes
INSERTED = "inserted"  # a new current value
CONFIRMED = "confirmed"  # the current value seen again (a new or revised observation)
UNCHANGED = "unchanged"  # nothing new (a replay, a retried tool call)
SUPERSEDED = "superseded"  # a new value closed the previous one of a single-valued key
STALE = "stale"  # older than the current value's latest confirmation by another call: ignored
TO_CONFIRM = "to_confirm"  # a protected fact contradicted by the analyzer: a question for the agent
RETRACTED = "retracted"  # the value was closed by an explicit retraction
NOT_FOUND = "not_found"  # nothing current to retract

# Keys holding several current values. The analyzer's own list (analyzer.facts.MULTI_VALUED) is
# a subset (a test checks it); every "*_name" and "*_lives_in" key is multi-valued too (three
# daughters; two sons in two cities), as in the analyzer (analyzer.facts.MULTI_VALUED_SUFFIXES).
MULTI_VALUED_SUFFIXES = ("_name", "_lives_in")
MULTI_VALUED_BASES = frozenset({
    "medication", "condition", "diagnosis", "allergy", "likes", "dislikes", "pet", "child", "grandchild",
    "emergency_contact", "hobby", "visitor",
})
# Never closed by the analyzer alone: medications, allergies, diagnoses, emergency contacts.
PROTECTED_BASES = frozenset({"medication", "allergy", "condition", "diagnosis"})
PROTECTED_PREFIXES = ("emergency_contact",)

# the analyzer's fold (stream_processor.models.analyzer.text): Spanish accents off, lower case
_FOLD = str.maketrans({
    "á": "a", "é": "e", "í": "i", "ó": "o", "ú": "u", "ü": "u", "à": "a", "è": "e", "ì": "i", "ò": "o", "ù": "u",
    "Á": "a", "É": "e", "Í": "i", "Ó": "o", "Ú": "u", "Ü": "u", "À": "a", "È": "e", "Ì": "i", "Ò": "o", "Ù": "u",
    "Ñ": "ñ",
})


class FactInputError(ValueError):
    """The fact cannot be stored as given (nothing was written); the message names the field."""


# --------------------------------------------------------------------------- keys (pure)


def slug(value: str, limit: int = 40) -> str:
    """Lower-case ASCII snake_case of a value ("Café de olla" -> "cafe_de_olla"), exactly as the
    analyzer slugs the values of its multi-valued keys."""
    folded = value.translate(_FOLD).lower()
    s = re.sub(r"[^a-z0-9]+", "_", folded.replace("ñ", "n")).strip("_")
    return s[:limit].rstrip("_") or "x"


def base_key(key: str) -> str:
    return key.partition(".")[0]


def is_multi_valued(key: str) -> bool:
    base = base_key(key)
    return "." in key or base in MULTI_VALUED_BASES or base.endswith(MULTI_VALUED_SUFFIXES)


def is_protected(key: str) -> bool:
    base = base_key(key)
    return base in PROTECTED_BASES or base.startswith(PROTECTED_PREFIXES)


def canonical_key(key: str, value: str) -> str:
    """The stored key: a multi-valued key without its item part gets the value's slug
    (``medication`` + "Metformina" -> ``medication.metformina``), so the agent's and the analyzer's
    writes of one value meet on one row."""
    base, dot, _item = key.partition(".")
    if not dot and (base in MULTI_VALUED_BASES or base.endswith(MULTI_VALUED_SUFFIXES)):
        return f"{base}.{slug(value)}"
    return key


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Observation:
    """One sighting of a fact value, by one source, in one call (or tool call)."""

    fact_type: str  # health, family, pet, routine, preference, other
    key: str  # "medication", "medication.metformina", "wake_up_time"
    value: str
    confidence: float
    observed_at: datetime  # when it was said (the call's time)
    source: str = "analysis"
    call_id: str | None = None  # the call it was said in (ours or VAPI's); None: outside a call
    # {"leg", "seq", "start_s", "end_s", "text", "char_start", "char_end"} of the utterance
    evidence: dict[str, Any] | None = None
    # transcription confidence of that utterance; None: read from call_utterances (call, leg, seq)
    asr_confidence: float | None = None
    # when it became true, when the person said so ("desde enero"); default: observed_at
    valid_from: datetime | None = None


@dataclass(frozen=True)
class Written:
    outcome: str
    fact_id: int | None = None


def _check_text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise FactInputError(f"{name} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise FactInputError(f"{name} contains a NUL character")
    if not value.strip():
        raise FactInputError(f"{name} must not be empty")
    if len(value) > limit:
        raise FactInputError(f"{name} is longer than {limit} characters")
    return value


def _check_probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        raise FactInputError(f"{name} must be a number between 0 and 1")
    return float(value)


def _check_time(name: str, value: Any) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise FactInputError(f"{name} must be a timezone-aware datetime")
    return value


def check(obs: Observation) -> Observation:
    """Raise :class:`FactInputError` unless ``obs`` can be stored."""
    _check_text("fact_type", obs.fact_type, MAX_TYPE_CHARS)
    _check_text("key", obs.key, MAX_KEY_CHARS)
    _check_text("value", obs.value, MAX_VALUE_CHARS)
    _check_probability("confidence", obs.confidence)
    _check_time("observed_at", obs.observed_at)
    if obs.source not in SOURCES:
        raise FactInputError(f"source must be one of {', '.join(SOURCES)}")
    if obs.call_id is not None:
        _check_text("call_id", obs.call_id, 128)
    if obs.asr_confidence is not None:
        _check_probability("asr_confidence", obs.asr_confidence)
    if obs.valid_from is not None and _check_time("valid_from", obs.valid_from) > obs.observed_at:
        raise FactInputError("valid_from is later than observed_at")
    if obs.evidence is not None and not isinstance(obs.evidence, dict):
        raise FactInputError("evidence must be an object")
    return obs


# --------------------------------------------------------------------------- SQL

_LOCK_PERSON = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"

_CURRENT = """
SELECT id, fact_value, value_norm = lupita_fact_norm(%(value)s) AS same, observed_at, source_call_id,
       valid_from, protected
FROM user_facts
WHERE phone_number_hash = %(hash)s AND fact_type = %(type)s AND fact_key = %(key)s AND is_active
FOR UPDATE
"""

_PENDING = """
SELECT id, proposal, value_norm = lupita_fact_norm(%(value)s) AS same
FROM user_facts
WHERE phone_number_hash = %(hash)s AND fact_type = %(type)s AND fact_key = %(key)s AND status = 'to_confirm'
FOR UPDATE
"""

_INSERT = """
INSERT INTO user_facts (
    phone_number_hash, fact_type, fact_key, fact_value, confidence, source_call_id, first_call_id, source,
    evidence, valid_from, observed_at, status, is_active, multi_valued, protected, proposal, conflicts_with
) VALUES (%(hash)s, %(type)s, %(key)s, %(value)s, %(confidence)s, %(call_id)s, %(call_id)s, %(source)s,
          %(evidence)s, %(valid_from)s, GREATEST(%(observed_at)s, %(valid_from)s), %(status)s,
          %(status)s = 'current', %(multi)s, %(protected)s, %(proposal)s, %(conflicts_with)s)
RETURNING id
"""

_CLOSE = """
UPDATE user_facts
SET status = %(status)s, is_active = false, valid_to = %(at)s, expired_at = %(at)s, superseded_at = now(),
    superseded_by = %(by)s, closed_by_source = %(source)s, closed_by_call_id = %(call_id)s, updated_at = now()
WHERE id = %(id)s
"""

_RESOLVE = """
UPDATE user_facts
SET status = %(status)s, superseded_at = now(), closed_by_source = %(source)s, closed_by_call_id = %(call_id)s,
    updated_at = now()
WHERE id = ANY(%(ids)s) AND status = 'to_confirm'
"""

_ACCEPT_VALUE = """
UPDATE user_facts
SET status = 'current', is_active = true, valid_from = %(at)s, observed_at = GREATEST(observed_at, %(at)s),
    updated_at = now()
WHERE id = %(id)s
"""

_OBSERVE = """
INSERT INTO user_fact_observations AS o (fact_id, observation, source, call_id, observed_at, confidence, evidence,
                                         asr_confidence)
VALUES (%(fact_id)s, %(observation)s, %(source)s, %(call_id)s, %(observed_at)s, %(confidence)s, %(evidence)s,
        COALESCE(%(asr)s::float8, (SELECT u.confidence FROM call_utterances u
                                  WHERE u.call_id = %(call_id)s AND u.leg = %(leg)s AND u.seq = %(seq)s)))
ON CONFLICT (fact_id, observation) DO UPDATE SET
    confidence = EXCLUDED.confidence, evidence = EXCLUDED.evidence, asr_confidence = EXCLUDED.asr_confidence
WHERE (o.confidence, o.evidence, o.asr_confidence)
      IS DISTINCT FROM (EXCLUDED.confidence, EXCLUDED.evidence, EXCLUDED.asr_confidence)
RETURNING (xmax = 0) AS inserted
"""

_OBSERVATIONS = """
SELECT confidence, observed_at, source, call_id, evidence, asr_confidence
FROM user_fact_observations WHERE fact_id = %s ORDER BY observed_at, recorded_at, observation
"""

_REFRESH = """
UPDATE user_facts
SET confidence = %(confidence)s, observation_count = %(count)s, observed_at = GREATEST(%(observed_at)s, valid_from),
    source = %(source)s, source_call_id = %(call_id)s, evidence = %(evidence)s, asr_confidence = %(asr)s,
    updated_at = now()
WHERE id = %(id)s
  AND (confidence, observation_count, observed_at, source, source_call_id, evidence, asr_confidence)
      IS DISTINCT FROM (%(confidence)s, %(count)s, GREATEST(%(observed_at)s, valid_from), %(source)s, %(call_id)s,
                        %(evidence)s, %(asr)s)
"""


def _tx(conn: psycopg.Connection) -> ContextManager[Any]:
    """The caller's transaction when there is one, else a new one."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and conn.autocommit:
        return conn.transaction()
    return nullcontext()


def combined_confidence(confidences: list[float]) -> float:
    """Independent observations: ``1 - Π(1 - cᵢ)`` (one observation keeps its own confidence)."""
    miss = 1.0
    for c in confidences:
        miss *= 1.0 - float(c)
    return round(min(1.0, max(0.0, 1.0 - miss)), 6)


def _params(person: str, obs: Observation, key: str) -> dict[str, Any]:
    return {
        "hash": person, "type": obs.fact_type, "key": key, "value": obs.value,
        "confidence": float(obs.confidence), "call_id": obs.call_id, "source": obs.source,
        "evidence": Jsonb(obs.evidence) if obs.evidence is not None else None,
        "valid_from": obs.valid_from or obs.observed_at, "observed_at": obs.observed_at,
        "multi": is_multi_valued(key), "protected": is_protected(key),
        "proposal": None, "conflicts_with": None, "status": "current",
    }


def _observe(conn: psycopg.Connection, fact_id: int, obs: Observation) -> bool:
    """Add (or revise) the observation; True if anything changed, then the fact row is refreshed."""
    ev = obs.evidence or {}
    leg, seq = ev.get("leg"), ev.get("seq")
    row = conn.execute(_OBSERVE, {
        "fact_id": fact_id,
        "observation": f"{obs.source}:{obs.call_id}" if obs.call_id else f"{obs.source}:{uuid.uuid4().hex}",
        "source": obs.source, "call_id": obs.call_id, "observed_at": obs.observed_at,
        "confidence": float(obs.confidence), "evidence": Jsonb(obs.evidence) if obs.evidence is not None else None,
        "asr": obs.asr_confidence, "leg": leg if isinstance(leg, str) else None,
        "seq": seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**31 else None,
    }).fetchone()
    if row is None:
        return False
    rows = conn.execute(_OBSERVATIONS, (fact_id,)).fetchall()
    confidence, observed_at, source, call_id, evidence, asr = rows[-1]
    conn.execute(_REFRESH, {
        "id": fact_id, "confidence": combined_confidence([r[0] for r in rows]), "count": len(rows),
        "observed_at": max(r[1] for r in rows), "source": source, "call_id": call_id,
        "evidence": Jsonb(evidence) if evidence is not None else None, "asr": asr,
    })
    return True


def _propose(conn: psycopg.Connection, person: str, obs: Observation, key: str, proposal: str,
             current_id: int) -> Written:
    """Open (or observe again) the question "is this still so?" about the current row."""
    params = _params(person, obs, key)
    pending = [r for r in conn.execute(_PENDING, params).fetchall() if r[1] == proposal and r[2]]
    if pending:
        fact_id = pending[0][0]
        changed = _observe(conn, fact_id, obs)
        return Written(TO_CONFIRM if changed else UNCHANGED, fact_id)
    params.update(status="to_confirm", proposal=proposal, conflicts_with=current_id)
    fact_id = conn.execute(_INSERT, params).fetchone()[0]
    _observe(conn, fact_id, obs)
    return Written(TO_CONFIRM, fact_id)


def _resolve(conn: psycopg.Connection, ids: list[int], status: str, obs: Observation) -> int:
    if not ids:
        return 0
    return conn.execute(_RESOLVE, {"ids": ids, "status": status, "source": obs.source,
                                   "call_id": obs.call_id}).rowcount


# --------------------------------------------------------------------------- writes


def record(conn: psycopg.Connection, person: str, obs: Observation) -> Written:
    """Store one observation of a fact value for ``person`` (the keyed phone hash); see the module
    docstring for the rule. Returns the outcome and the row it landed on."""
    check(obs)
    _check_text("person", person, 200)
    key = canonical_key(obs.key, obs.value)
    authoritative = obs.source in AUTHORITATIVE_SOURCES
    with _tx(conn):
        conn.execute(_LOCK_PERSON, (FACT_LOCK_CLASS, person))
        params = _params(person, obs, key)
        current = conn.execute(_CURRENT, params).fetchone()
        pending = conn.execute(_PENDING, params).fetchall()
        if current is None:
            same_value = [r[0] for r in pending if r[1] == "value" and r[2]]
            if same_value:
                # a proposed value said again while nothing holds (the value it questioned was
                # closed since): no conflict left, it holds
                fact_id = same_value[0]
                conn.execute(_ACCEPT_VALUE, {"id": fact_id, "at": obs.valid_from or obs.observed_at})
                if authoritative:
                    _resolve(conn, [r[0] for r in pending if r[0] != fact_id], "rejected", obs)
                _observe(conn, fact_id, obs)
                return Written(INSERTED, fact_id)
            fact_id = conn.execute(_INSERT, params).fetchone()[0]
            _observe(conn, fact_id, obs)
            return Written(INSERTED, fact_id)
        cur_id, _value, same, cur_observed, cur_call, _cur_from, cur_protected = current
        if same:
            changed = _observe(conn, cur_id, obs)
            # the agent / a person said the current value again: the open questions about it are answered
            rejected = _resolve(conn, [r[0] for r in pending], "rejected", obs) if authoritative else 0
            return Written(CONFIRMED if changed or rejected else UNCHANGED, cur_id)
        same_call = obs.call_id is not None and cur_call == obs.call_id
        if not same_call and obs.observed_at < cur_observed:
            return Written(STALE, cur_id)
        if cur_protected and not authoritative:
            return _propose(conn, person, obs, key, "value", cur_id)
        at = max(obs.observed_at, cur_observed)
        conn.execute(_CLOSE, {"id": cur_id, "status": "superseded", "at": at, "by": None, "source": obs.source,
                              "call_id": obs.call_id})
        same_value = [r[0] for r in pending if r[1] == "value" and r[2]]
        if same_value:
            fact_id = same_value[0]
            conn.execute(_ACCEPT_VALUE, {"id": fact_id, "at": at})
        else:
            params["valid_from"] = max(obs.valid_from or at, at)
            fact_id = conn.execute(_INSERT, params).fetchone()[0]
        conn.execute("UPDATE user_facts SET superseded_by = %s WHERE id = %s", (fact_id, cur_id))
        _resolve(conn, [r[0] for r in pending if r[1] == "retraction"], "accepted", obs)
        _resolve(conn, [r[0] for r in pending if r[1] == "value" and r[0] != fact_id], "rejected", obs)
        _observe(conn, fact_id, obs)
        return Written(SUPERSEDED, fact_id)


def retract(conn: psycopg.Connection, person: str, *, fact_type: str, key: str, value: str | None = None,
            observed_at: datetime, source: str, call_id: str | None = None,
            evidence: dict[str, Any] | None = None, confidence: float = 1.0,
            valid_to: datetime | None = None) -> Written:
    """Close the current value of ``key`` ("ya no tomo la metformina": key ``medication``, value
    ``metformina``), or — a protected fact retracted by the analyzer — open the question. ``value``
    is needed for a multi-valued key and, when given for a single-valued one, must be the current
    value. ``valid_to``: when it stopped being true, if said (default ``observed_at``)."""
    obs = Observation(fact_type=fact_type, key=key, value=value if value is not None else "-",
                      confidence=confidence, observed_at=observed_at, source=source, call_id=call_id,
                      evidence=evidence)
    check(obs)
    _check_text("person", person, 200)
    if valid_to is not None:
        _check_time("valid_to", valid_to)
    if value is None and is_multi_valued(key) and "." not in key:
        raise FactInputError("a multi-valued key needs the value to retract")
    key = canonical_key(key, value) if value is not None else key
    with _tx(conn):
        conn.execute(_LOCK_PERSON, (FACT_LOCK_CLASS, person))
        params = _params(person, obs, key)
        current = conn.execute(_CURRENT, params).fetchone()
        if current is None or (value is not None and not current[2]):
            return Written(NOT_FOUND)
        cur_id, cur_value, _same, cur_observed, cur_call, cur_from, cur_protected = current
        if not (call_id is not None and cur_call == call_id) and observed_at < cur_observed:
            return Written(STALE, cur_id)
        if cur_protected and source not in AUTHORITATIVE_SOURCES:
            return _propose(conn, person, replace(obs, value=cur_value), key, "retraction", cur_id)
        at = max(valid_to or observed_at, cur_from)
        conn.execute(_CLOSE, {"id": cur_id, "status": "retracted", "at": at, "by": None, "source": source,
                              "call_id": call_id})
        pending = conn.execute(_PENDING, params).fetchall()
        _resolve(conn, [r[0] for r in pending if r[1] == "retraction"], "accepted", obs)
        return Written(RETRACTED, cur_id)


def retract_by_id(conn: psycopg.Connection, person: str, fact_id: int, *, observed_at: datetime, source: str,
                  call_id: str | None = None, valid_to: datetime | None = None) -> Written:
    """:func:`retract` of the current row ``fact_id`` of ``person`` (another person's id: not found)."""
    row = conn.execute(
        "SELECT fact_type, fact_key, fact_value FROM user_facts WHERE id = %s AND phone_number_hash = %s "
        "AND is_active", (fact_id, person)).fetchone()
    if row is None:
        return Written(NOT_FOUND)
    return retract(conn, person, fact_type=row[0], key=row[1], value=row[2], observed_at=observed_at,
                   source=source, call_id=call_id, valid_to=valid_to)


# --------------------------------------------------------------------------- reads

FACT_COLUMNS = """id, fact_type, fact_key, fact_value, status, confidence, observation_count, protected,
multi_valued, source, source_call_id, first_call_id, evidence, asr_confidence, valid_from, valid_to,
observed_at, recorded_at, superseded_at, superseded_by, closed_by_source, proposal, conflicts_with"""

LIVE_SQL = f"""
SELECT {FACT_COLUMNS},
       (SELECT c.fact_value FROM user_facts c WHERE c.id = f.conflicts_with) AS current_value
FROM user_facts f
WHERE phone_number_hash = %s AND status IN ('current', 'to_confirm')
ORDER BY protected DESC, confidence DESC, observed_at DESC, id DESC
LIMIT %s
"""


def live(conn: psycopg.Connection, person: str, limit: int = 50) -> list[dict[str, Any]]:
    """The person's current facts and open questions (``status`` ``to_confirm``, with the value
    they question in ``current_value``): protected first, then by confidence and recency. One
    indexed read (``user_facts_live_idx``)."""
    return conn.cursor(row_factory=dict_row).execute(LIVE_SQL, (person, limit)).fetchall()


def history(conn: psycopg.Connection, person: str, *, fact_type: str | None = None, key: str | None = None,
            observations: bool = False, limit: int = 500) -> list[dict[str, Any]]:
    """Every row of the person (current, open, closed), oldest first per key; with
    ``observations`` each row lists its observations."""
    where, args = ["phone_number_hash = %s"], [person]
    if fact_type is not None:
        where.append("fact_type = %s")
        args.append(fact_type)
    if key is not None:
        where.append("(fact_key = %s OR fact_key LIKE %s)")
        args += [key, key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ".%"]
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        f"SELECT {FACT_COLUMNS} FROM user_facts WHERE {' AND '.join(where)} "
        "ORDER BY fact_type, fact_key, valid_from, id LIMIT %s", (*args, limit)).fetchall()
    if observations and rows:
        obs = cur.execute(
            "SELECT fact_id, source, call_id, observed_at, confidence, evidence, asr_confidence, recorded_at "
            "FROM user_fact_observations WHERE fact_id = ANY(%s) ORDER BY observed_at, recorded_at",
            ([r["id"] for r in rows],)).fetchall()
        by_fact: dict[int, list[dict[str, Any]]] = {}
        for o in obs:
            by_fact.setdefault(o.pop("fact_id"), []).append(o)
        for r in rows:
            r["observations"] = by_fact.get(r["id"], [])
    return rows


def get(conn: psycopg.Connection, person: str, fact_id: int) -> dict[str, Any] | None:
    """One row of ``person`` by id (another person's id: None)."""
    return conn.cursor(row_factory=dict_row).execute(
        f"SELECT {FACT_COLUMNS} FROM user_facts WHERE id = %s AND phone_number_hash = %s",
        (fact_id, person)).fetchone()
