"""Per-call conversation state built from final utterances (pure; the Faust table holds its dict).

What it tracks, all in call time (seconds from the call's start):

- talk time per leg (sum of utterance durations),
- turns (a turn starts whenever the speaking leg changes, ordered by start time),
- overlaps (total seconds both legs speak at once, and how many times the person is cut in on),
- the longest silence (no leg speaking) between the first and the last utterance,
- words per minute of each leg (words / talk minutes),
- the transcript so far (ordered by start time, one line per utterance), and each utterance's
  transcript words with their recognition probabilities when the ASR gave them (the analyzer
  weighs a fact by the probabilities of the words it came from),
- a running sentiment of the person's leg (exponential moving average of a scorer's output in
  [-1, 1]; the scorer is injected so the state does not depend on one analyzer).

Utterances may arrive out of order (the two legs are transcribed independently) and more than once
(at-least-once delivery): the state keeps each (leg, seq) once and derives everything from the
sorted set, so the result does not depend on arrival order or duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_processor.contracts import Utterance

LEGS = ("lupita", "person")
SENTIMENT_ALPHA = 0.3  # weight of the newest person utterance in the running sentiment


@dataclass
class ConversationState:
    call_id: str
    utterances: dict[str, dict[str, Any]] = field(default_factory=dict)  # "leg:seq" -> fields
    sentiment: float = 0.0
    sentiment_samples: int = 0

    # ------------------------------------------------------------------ updates

    def add(self, utt: Utterance, sentiment_of: Callable[[str], float] | None = None, *,
            words: Sequence[tuple[str, float | None]] | None = None) -> bool:
        """Add a final utterance (and its ``(word, probability)`` pairs, if any); False (and no
        change) when (leg, seq) was already seen."""
        if utt.call_id != self.call_id:
            raise ValueError(f"utterance of call {utt.call_id!r} offered to call {self.call_id!r}")
        if utt.leg not in LEGS:
            raise ValueError(f"unknown leg {utt.leg!r} (expected one of {LEGS})")
        if not utt.end_s >= utt.start_s >= 0:
            raise ValueError(f"bad utterance times {utt.start_s}..{utt.end_s}")
        key = f"{utt.leg}:{utt.seq}"
        if key in self.utterances:
            return False
        self.utterances[key] = {
            "leg": utt.leg, "seq": utt.seq, "start_s": utt.start_s, "end_s": utt.end_s,
            "text": utt.text, "confidence": utt.confidence,
        }
        if words:
            self.utterances[key]["words"] = [[str(w), None if p is None else round(float(p), 4)] for w, p in words]
        if utt.leg == "person" and sentiment_of is not None and utt.text.strip():
            score = max(-1.0, min(1.0, float(sentiment_of(utt.text))))
            if self.sentiment_samples == 0:
                self.sentiment = score
            else:
                self.sentiment = SENTIMENT_ALPHA * score + (1 - SENTIMENT_ALPHA) * self.sentiment
            self.sentiment_samples += 1
        return True

    # ------------------------------------------------------------------ derived figures

    def words(self) -> dict[tuple[str, int], list[tuple[str, float | None]]]:
        """Each utterance's transcript words with their probabilities, by (leg, seq) (only
        utterances whose ASR gave words)."""
        return {(u["leg"], int(u["seq"])): [(w, p) for w, p in u["words"]]
                for u in self.utterances.values() if u.get("words")}

    def ordered(self) -> list[dict[str, Any]]:
        return sorted(self.utterances.values(), key=lambda u: (u["start_s"], u["leg"], u["seq"]))

    def talk_seconds(self) -> dict[str, float]:
        out = dict.fromkeys(LEGS, 0.0)
        for u in self.utterances.values():
            out[u["leg"]] += u["end_s"] - u["start_s"]
        return out

    def turns(self) -> int:
        turns, last = 0, None
        for u in self.ordered():
            if u["leg"] != last:
                turns, last = turns + 1, u["leg"]
        return turns

    def overlap(self) -> tuple[float, int]:
        """(seconds both legs speak at once, times Lupita starts while the person speaks)."""
        by_leg = {leg: [(u["start_s"], u["end_s"]) for u in self.ordered() if u["leg"] == leg]
                  for leg in LEGS}
        seconds = 0.0
        for a0, a1 in by_leg["lupita"]:
            for b0, b1 in by_leg["person"]:
                seconds += max(0.0, min(a1, b1) - max(a0, b0))
        interruptions = sum(
            1 for a0, _ in by_leg["lupita"] if any(b0 < a0 < b1 for b0, b1 in by_leg["person"])
        )
        return seconds, interruptions

    def longest_silence(self) -> float:
        longest, covered_until = 0.0, None
        for u in self.ordered():
            if covered_until is not None and u["start_s"] > covered_until:
                longest = max(longest, u["start_s"] - covered_until)
            covered_until = u["end_s"] if covered_until is None else max(covered_until, u["end_s"])
        return longest

    def words_per_minute(self) -> dict[str, float]:
        talk = self.talk_seconds()
        words = dict.fromkeys(LEGS, 0)
        for u in self.utterances.values():
            words[u["leg"]] += len(u["text"].split())
        return {leg: (words[leg] / (talk[leg] / 60.0) if talk[leg] > 0 else 0.0) for leg in LEGS}

    def transcript(self) -> str:
        return "\n".join(
            f"[{u['start_s']:7.2f}] {u['leg']}: {u['text'].strip()}" for u in self.ordered() if u["text"].strip()
        )

    def summary(self) -> dict[str, Any]:
        overlap_s, interruptions = self.overlap()
        return {
            "utterances": len(self.utterances),
            "talk_seconds": {k: round(v, 3) for k, v in self.talk_seconds().items()},
            "turns": self.turns(),
            "overlap_seconds": round(overlap_s, 3),
            "interruptions": interruptions,
            "longest_silence_seconds": round(self.longest_silence(), 3),
            "words_per_minute": {k: round(v, 1) for k, v in self.words_per_minute().items()},
            "sentiment": round(self.sentiment, 3),
        }

    # ------------------------------------------------------------------ table form

    def to_dict(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "utterances": self.utterances,
                "sentiment": self.sentiment, "sentiment_samples": self.sentiment_samples}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversationState:
        return cls(call_id=data["call_id"], utterances=dict(data.get("utterances", {})),
                   sentiment=float(data.get("sentiment", 0.0)),
                   sentiment_samples=int(data.get("sentiment_samples", 0)))
