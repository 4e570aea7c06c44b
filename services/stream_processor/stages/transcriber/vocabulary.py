"""The transcriber's per-call vocabularies (plain code: no Kafka, no Faust).

When a call starts (``call.lifecycle`` ``started``), the person's current facts are read ONCE by
the phone hash (:func:`read_person_facts`, ``lupita.facts.live``: one indexed read) and turned into
the call's decoding vocabulary (:func:`stream_processor.models.asr.vocabulary.call_vocabulary`:
the person's names, places and medications, then the health lexicon when
``LUPITA_TRANSCRIBER_VOCABULARY_LEXICON`` is on — off by default: measured, the 43-term lexicon as
hotwords made Whisper base worse, see bench/README.md). :class:`CallVocabularies`
holds it by call id until both legs have ended; every decode of the call passes it as an
argument, so one caller's words never reach another caller's decode. A call whose start was not
seen here (another worker, or a restart) or whose caller has no facts gets the lexicon alone (or
nothing); a failed read is retried once and then falls back the same way (the vocabulary is a
hint: decoding never waits for it and nothing is lost without it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable

from stream_processor.models.asr.vocabulary import HEALTH_LEXICON_ES_MX, call_vocabulary

LEGS = ("lupita", "person")


def read_person_facts(run: Callable[[Callable[[Any], Any]], Any], phone_hash: str,
                      limit: int = 50) -> list[tuple[str, str, str]]:
    """``(fact_type, fact_key, fact_value)`` of the person's current facts (most confident
    first), through ``run(work)`` (a :class:`~stream_processor.stores.calls_db.CallStore`'s)."""
    from lupita import facts

    rows = run(lambda conn: facts.live(conn, phone_hash, limit))
    return [(r["fact_type"], r["fact_key"], r["fact_value"]) for r in rows if r.get("status") == "current"]


class CallVocabularies:
    """call id -> its vocabulary, from the call's start until both legs ended; at most
    ``max_calls`` (the oldest dropped first, for calls whose end never comes)."""

    def __init__(self, *, max_terms: int = 48, max_calls: int = 10000, lexicon: bool = False) -> None:
        self.max_terms = max_terms
        self.max_calls = max_calls
        self.lexicon = HEALTH_LEXICON_ES_MX if lexicon else ()
        self.lexicon_only = call_vocabulary((), lexicon=self.lexicon, max_terms=max_terms)
        self._calls: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._ended: dict[str, set[str]] = {}

    def start(self, call_id: str, facts: Iterable[tuple[str, str, str]] = ()) -> tuple[str, ...]:
        terms = call_vocabulary(facts, lexicon=self.lexicon, max_terms=self.max_terms)
        self._calls[call_id] = terms
        self._calls.move_to_end(call_id)
        while len(self._calls) > self.max_calls:
            old, _ = self._calls.popitem(last=False)
            self._ended.pop(old, None)
        return terms

    def get(self, call_id: str) -> tuple[str, ...]:
        """The call's vocabulary; the lexicon alone (or nothing) when its start was not seen here."""
        return self._calls.get(call_id, self.lexicon_only)

    def known(self, call_id: str) -> bool:
        return call_id in self._calls

    def leg_ended(self, call_id: str, leg: str) -> None:
        """Forget the call once both of its legs have ended."""
        if call_id not in self._calls:
            return
        ended = self._ended.setdefault(call_id, set())
        ended.add(leg)
        if ended >= set(LEGS):
            self._ended.pop(call_id, None)
            self._calls.pop(call_id, None)

    def __len__(self) -> int:
        return len(self._calls)
