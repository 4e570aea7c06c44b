"""Plain data shared by the understanding stages (alerts, analyzer, embedder, sinks).

These are the in-process contracts between the pure stages; the Kafka events that carry them
between agents are protobuf messages in ``protos/lupita/v1/events.proto``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Utterance:
    """One final transcript segment of one leg, in call time (seconds from call start)."""

    call_id: str
    leg: str  # "lupita" | "person"
    seq: int  # segment sequence number within the leg
    start_s: float
    end_s: float
    text: str
    confidence: float = 1.0


@dataclass(frozen=True)
class EvidenceSpan:
    """Where in the call something was found: the utterance and the character range in it."""

    leg: str
    seq: int
    start_s: float
    end_s: float
    text: str
    char_start: int = 0
    char_end: int = 0


@dataclass(frozen=True)
class AlertHit:
    """A distress or health-emergency cue in the person's leg."""

    call_id: str
    cue_id: str  # e.g. "fall", "chest_pain" (the catalogue's key)
    severity: str  # "critical" | "high" | "medium"
    evidence: EvidenceSpan
    # Raised although a negator or past marker that would have dropped it was doubtful (low word
    # probability, implausible) or a cue word was only approximately heard: a human should check.
    to_verify: bool = False
    verification: str = ""  # why, e.g. "negator 'no' doubtful (word probability 0.31)"


@dataclass(frozen=True)
class UserFact:
    """Something learned about the person (upserted into Postgres user_facts)."""

    fact_type: str  # e.g. "health", "family", "preference", "routine"
    key: str  # e.g. "medication", "daughter_name"
    value: str
    confidence: float
    evidence: EvidenceSpan | None = None


@dataclass(frozen=True)
class CallAnalysis:
    """What the analyzer concludes at the end of a call."""

    call_id: str
    topics: tuple[str, ...]
    emotion_primary: str
    emotion_trend: tuple[tuple[float, str], ...] = ()  # (segment start s, emotion) per person segment
    behavioral_codes: tuple[str, ...] = ()
    facts: tuple[UserFact, ...] = ()
    summary: str = ""
    analyzer: str = "local"  # which backend produced it ("local", "anthropic", "anthropic->local")
    notes: tuple[str, ...] = field(default=())  # e.g. why a fallback happened
