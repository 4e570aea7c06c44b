"""The local analyzer: rules, lexicons and (optionally) embedding prototypes. Offline, no model.

How it decides, and what that means for the quality of its answers:

- **Topics**: keyword sets from ``data/topics.json`` (whole words, ``stem*`` wildcards, weights).
  A keyword in the person's leg counts 1 x its weight, in Lupita's leg ``lupita_leg_weight``
  (0.5); a topic is kept when its score reaches its ``min_score`` (1.0), at most ``max_topics``,
  best first. With an embedder (any object with ``embed(texts) -> np.ndarray`` of unit rows),
  the person's utterances are also compared with each topic's prototype sentences; a cosine
  of at least ``embedding_threshold`` adds ``embedding_weight`` to the topic's score, so a topic
  said in other words can still be found. Without an embedder only the keywords count.
- **Emotion**: a Spanish lexicon (``data/emotions.json``) over the person's utterances; a term
  after a negation in the same clause ("no estoy triste", "ya no me siento sola") does not
  count (a negated "contenta" counts a little for tristeza). Each person segment gets its top
  emotion if it scores ``segment_min_score``, else ``neutral`` (the trend); the call's primary
  emotion is the top summed emotion if it reaches ``call_min_score``, else ``neutral``.
- **Behavioral codes**: the catalogue in ``data/behavioral_codes.json``: regular expressions on
  one leg (with negation and optional context checks) and the ``echo_open_question`` detector
  (an open question of Lupita's that re-uses content words of the person's last utterances).
- **Facts**: Spanish first-person patterns, see :mod:`stream_processor.models.analyzer.facts`.
- **Summary**: extractive: one templated sentence (topics and mood) plus the one or two most
  informative sentences the person said, quoted verbatim.

Honest limits: it reads words, not meaning. It misses irony, sarcasm, indirect speech and
anything said without the catalogue's words; it cannot tell a joke about being sick from a
diagnosis; negation is a three-word window inside a clause, so "no creo que esté triste" or
double negatives may be read wrong; emotions from words alone underestimate calm sadness and
overestimate politeness formulas ("muy bien, gracias"); ASR errors (Whisper base on telephone
audio) flow straight into every rule; names need capitalised transcripts. It is a floor that is
cheap, deterministic and explainable (every fact and code has its evidence span), not an
equal of an LLM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
from rapidfuzz import fuzz, process

from stream_processor.models.analyzer.base import Analyzer, prepare_utterances
from stream_processor.models.analyzer.catalog import (
    EMOTION_NEUTRAL,
    Catalogues,
    EchoOpenQuestionTrigger,
    PatternTrigger,
    load_catalogues,
)
from stream_processor.models.analyzer.facts import extract_facts
from stream_processor.models.analyzer.lexicon import Lexicons, load_lexicons, sound
from stream_processor.models.analyzer.text import fold, is_negated, sentences, tokens
from stream_processor.contracts import CallAnalysis, EvidenceSpan, UserFact, Utterance

log = logging.getLogger("stream_processor.models.analyzer")

# a transcript word that sounds like a topic keyword (or is one misheard) counts this share of it
APPROX_KEYWORD_FACTOR = 0.8
APPROX_KEYWORD_CUTOFF = 88.0
# a call in which the person said this many words or more is never left without a topic
WEAK_TOPIC_MIN_WORDS = 8
WEAK_TOPIC_MIN_COSINE = 0.3


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> Any:
        """One unit-length row per text (numpy array of shape (len(texts), dim))."""


@dataclass(frozen=True)
class CodeHit:
    code_id: str
    evidence: EvidenceSpan


def light_stem(word: str) -> str:
    """Very light Spanish stemming for word overlap: plural and final gender vowel removed
    ("hijos", "hija" -> "hij"; "norte" -> "nort")."""
    if len(word) > 5 and word.endswith("es"):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s"):
        word = word[:-1]
    if len(word) > 3 and word[-1] in "aeo":
        word = word[:-1]
    return word


def _span(u: Utterance, start: int, end: int) -> EvidenceSpan:
    return EvidenceSpan(leg=u.leg, seq=u.seq, start_s=u.start_s, end_s=u.end_s, text=u.text,
                        char_start=start, char_end=end)


def _join_es(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + (" e " if fold(items[-1]).startswith(("i", "hi")) else " y ") + items[-1]


class LocalAnalyzer(Analyzer):
    """Rules + lexicons (+ optional embedding prototypes) over the call's utterances."""

    name = "local"

    def __init__(
        self,
        catalogues: Catalogues | None = None,
        *,
        embedder: Embedder | None = None,
        max_topics: int = 5,
        embedding_threshold: float = 0.45,
        embedding_weight: float = 1.0,
        summary_sentences: int = 3,
        quote_max_chars: int = 160,
        min_fact_confidence: float = 0.0,
        lexicons: Lexicons | None = None,
    ) -> None:
        if max_topics < 1:
            raise ValueError(f"max_topics must be >= 1, got {max_topics}")
        if not -1.0 <= embedding_threshold <= 1.0:
            raise ValueError(f"embedding_threshold is a cosine in [-1, 1], got {embedding_threshold}")
        if summary_sentences < 1:
            raise ValueError(f"summary_sentences must be >= 1, got {summary_sentences}")
        self.catalogues = catalogues or load_catalogues()
        self.embedder = embedder
        self.max_topics = max_topics
        self.embedding_threshold = embedding_threshold
        self.embedding_weight = embedding_weight
        self.summary_sentences = summary_sentences
        self.quote_max_chars = quote_max_chars
        if not 0.0 <= min_fact_confidence <= 1.0:
            raise ValueError(f"min_fact_confidence must be in [0, 1], got {min_fact_confidence}")
        self.min_fact_confidence = min_fact_confidence
        self.lexicons = lexicons or load_lexicons()
        self._prototypes: list[tuple[str, np.ndarray]] | None = None
        self._approx: dict[str, list[tuple[str, float]]] | None = None
        self._approx_keys: list[str] = []

    # -- the whole analysis -------------------------------------------------------------------

    def analyze(self, call_id: str, utterances: Sequence[Utterance], *,
                words: Mapping[tuple[str, int], Sequence[tuple[str, float | None]]] | None = None) -> CallAnalysis:
        utts = prepare_utterances(call_id, utterances)
        notes: list[str] = []
        sims: dict[str, float] = {}
        scores = self.topic_scores(utts, notes=notes, sims=sims)
        topics = self.select_topics(scores)
        if not topics:
            topics = self.weak_topic(utts, scores, sims, notes)
        primary, trend = self.emotions(utts)
        hits = self.code_hits(utts)
        codes = tuple(dict.fromkeys(h.code_id for h in hits))
        facts = tuple(extract_facts(utts, words, lexicons=self.lexicons, min_confidence=self.min_fact_confidence))
        summary = self.summarize(utts, topics, primary, facts, hits)
        if not any(u.leg == "person" and u.text.strip() for u in utts):
            notes.append("no speech from the person: emotion and facts not assessed")
        log.info("call analyzed", extra={
            "call_id": call_id, "stage": "analyzer", "backend": self.name, "utterances": len(utts),
            "topics": len(topics), "codes": len(codes), "facts": len(facts)})
        return CallAnalysis(call_id=call_id, topics=topics, emotion_primary=primary, emotion_trend=trend,
                            behavioral_codes=codes, facts=facts, summary=summary, analyzer=self.name,
                            notes=tuple(notes))

    # -- topics -------------------------------------------------------------------------------

    def topic_scores(self, utts: Sequence[Utterance], *, notes: list[str] | None = None,
                     sims: dict[str, float] | None = None) -> dict[str, float]:
        """Score of every topic of the catalogue (0.0 when nothing was found); ``sims`` (if given)
        receives the best prototype cosine of each topic."""
        cat = self.catalogues.topics
        scores = {t.id: 0.0 for t in cat.topics}
        answered = self._answered(utts, cat.answer_min_words)
        for i, u in enumerate(utts):
            leg_weight = 1.0 if u.leg == "person" else \
                (cat.lupita_answered_weight if i in answered else cat.lupita_leg_weight)
            if leg_weight:
                for tid, v in self.keyword_scores(u.text).items():
                    scores[tid] += v * leg_weight
        if self.embedder is not None:
            try:
                for topic_id, sim in self.embedding_similarities(utts).items():
                    if sims is not None:
                        sims[topic_id] = sim
                    if sim >= self.embedding_threshold:
                        scores[topic_id] += self.embedding_weight
            except Exception as exc:  # noqa: BLE001 - the embedding signal is optional
                log.warning("topic embeddings failed; keywords only", extra={
                    "stage": "analyzer", "error": type(exc).__name__})
                if notes is not None:
                    notes.append(f"topic embeddings unavailable ({type(exc).__name__}); keywords only")
        return scores

    @staticmethod
    def _answered(utts: Sequence[Utterance], min_words: int) -> set[int]:
        """Indexes of Lupita's utterances that the person's next turn (her utterances before
        Lupita speaks again) answered with ``min_words`` words or more."""
        out: set[int] = set()
        pending: int | None = None
        words = 0
        for i, u in enumerate(utts):
            if u.leg == "lupita" and u.text.strip():
                if pending is not None and words >= min_words:
                    out.add(pending)
                pending, words = i, 0
            elif u.leg == "person":
                words += len(tokens(fold(u.text)))
        if pending is not None and words >= min_words:
            out.add(pending)
        return out

    def keyword_scores(self, text: str) -> dict[str, float]:
        """Keyword score of each topic in one piece of text (weights summed over matches). A word
        that is no keyword but sounds like one of 5+ letters ("preción", "medisina") counts as
        the keyword; one misheard (similarity >= ``APPROX_KEYWORD_CUTOFF``, 7+ letters) counts
        ``APPROX_KEYWORD_FACTOR`` of its weight."""
        f = fold(text)
        out: dict[str, float] = {}
        if not f.strip():
            return out
        exact_spans: list[tuple[int, int]] = []
        for t in self.catalogues.topics.topics:
            for rx, weight in t.matchers:
                for m in rx.finditer(f):
                    out[t.id] = out.get(t.id, 0.0) + weight
                    exact_spans.append((m.start(), m.end()))
        approx = self._approx_keywords()
        for tok in tokens(f):
            if len(tok.text) < 5 or any(a <= tok.start < b for a, b in exact_spans):
                continue
            hit, factor = approx.get(sound(tok.text)), 1.0  # spelt otherwise, sounds the same: the keyword
            if hit is None and len(tok.text) >= 7:
                best = process.extractOne(sound(tok.text), self._approx_keys, scorer=fuzz.ratio,
                                          score_cutoff=APPROX_KEYWORD_CUTOFF)
                hit, factor = (approx[best[0]] if best is not None else None), APPROX_KEYWORD_FACTOR
            if hit is not None:
                for topic_id, weight in hit:
                    out[topic_id] = out.get(topic_id, 0.0) + weight * factor
        return out

    def _approx_keywords(self) -> dict[str, list[tuple[str, float]]]:
        """Sound key of every one-word keyword of 5+ letters (a ``stem*`` keyword: of its stem
        plus the common endings) -> [(topic, weight)]."""
        if self._approx is None:
            index: dict[str, list[tuple[str, float]]] = {}
            for t in self.catalogues.topics.topics:
                for k in t.keywords:
                    term, weight = (k, 1.0) if isinstance(k, str) else (k.term, k.weight)
                    term = fold(term).strip()
                    if " " in term:
                        continue
                    forms = [term[:-1] + e for e in ("", "a", "o", "as", "os", "es", "s")] if term.endswith("*") \
                        else [term]
                    for form in forms:
                        if len(form) >= 5 and len(sound(form)) >= 5:  # "ahorr*" sounds "aor": too short
                            index.setdefault(sound(form), []).append((t.id, weight))
            self._approx = {k: list(dict.fromkeys(v)) for k, v in index.items()}
            self._approx_keys = list(self._approx)
        return self._approx

    def weak_topic(self, utts: Sequence[Utterance], scores: dict[str, float], sims: dict[str, float],
                   notes: list[str]) -> tuple[str, ...]:
        """When no topic reached its minimum but the person did talk (``WEAK_TOPIC_MIN_WORDS``
        words or more): the topic with the most evidence, so that a conversation is never filed
        under no topic. Evidence: the keyword score (any), else the best prototype cosine if it
        reaches ``WEAK_TOPIC_MIN_COSINE``. A note says the topic rests on weak evidence."""
        said = sum(len(tokens(fold(u.text))) for u in utts if u.leg == "person")
        if said < WEAK_TOPIC_MIN_WORDS:
            return ()
        order = {t.id: i for i, t in enumerate(self.catalogues.topics.topics)}
        best = max(scores, key=lambda t: (scores[t], sims.get(t, -1.0), -order[t]), default=None)
        if best is None or (scores[best] <= 0 and sims.get(best, -1.0) < WEAK_TOPIC_MIN_COSINE):
            return ()
        notes.append(f"topic {best} from weak evidence (keyword score {scores[best]:.2f}, "
                     f"best prototype cosine {sims.get(best, float('nan')):.2f})")
        return (best,)

    def select_topics(self, scores: dict[str, float]) -> tuple[str, ...]:
        cat = self.catalogues.topics
        order = {t.id: i for i, t in enumerate(cat.topics)}
        kept = [tid for tid, s in scores.items()
                if s > 0 and s + 1e-9 >= (cat.get(tid).min_score or cat.default_min_score)]
        kept.sort(key=lambda tid: (-scores[tid], order[tid]))
        return tuple(kept[: self.max_topics])

    def _prototype_vectors(self) -> list[tuple[str, np.ndarray]]:
        if self._prototypes is None:
            texts: list[str] = []
            owners: list[str] = []
            for t in self.catalogues.topics.topics:
                for p in t.prototypes:
                    texts.append(p)
                    owners.append(t.id)
            vecs = _unit_rows(self.embedder.embed(texts), len(texts)) if texts else np.zeros((0, 1))
            self._prototypes = [(owners[i], vecs[i]) for i in range(len(texts))]
        return self._prototypes

    def embedding_similarities(self, utts: Sequence[Utterance]) -> dict[str, float]:
        """Best cosine between any person utterance (3+ words) and each topic's prototypes."""
        texts = [u.text for u in utts if u.leg == "person" and len(tokens(fold(u.text))) >= 3]
        protos = self._prototype_vectors()
        if not texts or not protos:
            return {}
        vecs = _unit_rows(self.embedder.embed(texts), len(texts))
        out: dict[str, float] = {}
        for owner, p in protos:
            if p.shape[0] != vecs.shape[1]:
                raise ValueError(f"embedder returned {vecs.shape[1]}-d vectors for utterances but "
                                 f"{p.shape[0]}-d for prototypes")
            sim = float(np.max(vecs @ p))
            out[owner] = max(out.get(owner, -1.0), sim)
        return out

    # -- emotion ------------------------------------------------------------------------------

    def emotion_scores(self, text: str) -> dict[str, float]:
        lex = self.catalogues.emotions
        scores = {e.id: 0.0 for e in lex.emotions}
        f = fold(text)
        for e in lex.emotions:
            for rx, weight in e.matchers:
                for m in rx.finditer(f):
                    if is_negated(f, m.start(), window=lex.negation_window):
                        target = lex.negated_as.get(e.id)
                        if target:
                            scores[target] += weight * lex.negated_weight
                    else:
                        scores[e.id] += weight
        return scores

    def emotions(self, utts: Sequence[Utterance]) -> tuple[str, tuple[tuple[float, str], ...]]:
        """(primary emotion of the call, (start_s, emotion) for every person segment)."""
        lex = self.catalogues.emotions
        order = [e.id for e in lex.emotions]
        total = dict.fromkeys(order, 0.0)
        trend: list[tuple[float, str]] = []
        for u in utts:
            if u.leg != "person" or not u.text.strip():
                continue
            s = self.emotion_scores(u.text)
            for k, v in s.items():
                total[k] += v
            top = max(order, key=lambda k: (s[k], -order.index(k)))
            trend.append((u.start_s, top if s[top] + 1e-9 >= lex.segment_min_score else EMOTION_NEUTRAL))
        top = max(order, key=lambda k: (total[k], -order.index(k)))
        primary = top if total[top] + 1e-9 >= lex.call_min_score else EMOTION_NEUTRAL
        return primary, tuple(trend)

    # -- behavioral codes ---------------------------------------------------------------------

    def code_hits(self, utts: Sequence[Utterance]) -> list[CodeHit]:
        """The first piece of evidence of every code that fired, in catalogue order."""
        hits: list[CodeHit] = []
        for code in self.catalogues.codes.codes:
            leg_utts = [u for u in utts if u.leg == code.leg]
            trig = code.trigger
            hit = None
            if isinstance(trig, PatternTrigger):
                hit = _pattern_hit(trig, leg_utts)
            elif isinstance(trig, EchoOpenQuestionTrigger):
                hit = self._echo_hit(trig, utts)
            if hit is not None:
                hits.append(CodeHit(code.id, hit))
        return hits

    def _content_stems(self, text: str, min_len: int) -> set[str]:
        stop = self.catalogues.codes.stopword_set
        return {light_stem(t.text) for t in tokens(fold(text))
                if len(t.text) >= min_len and t.text not in stop and not t.text.isdigit()}

    def _echo_hit(self, trig: EchoOpenQuestionTrigger, utts: Sequence[Utterance]) -> EvidenceSpan | None:
        person_before: list[Utterance] = []
        for u in utts:
            if u.leg == "person":
                if u.text.strip():
                    person_before.append(u)
                continue
            recent = person_before[-trig.lookback_utterances:]
            if not recent:
                continue
            heard: set[str] = set()
            for p in recent:
                heard |= self._content_stems(p.text, trig.min_word_length)
            for s, e in sentences(u.text):
                sentence = fold(u.text[s:e])
                if not any(rx.search(sentence) for rx in trig.compiled):
                    continue
                shared = self._content_stems(u.text[s:e], trig.min_word_length) & heard
                if len(shared) >= trig.min_shared_words:
                    return _span(u, s, e)
        return None

    # -- summary ------------------------------------------------------------------------------

    def summarize(self, utts: Sequence[Utterance], topics: tuple[str, ...], emotion: str,
                  facts: tuple[UserFact, ...], hits: list[CodeHit]) -> str:
        """2-3 Spanish sentences: topics and mood, then the person's most informative sentences."""
        person = [u for u in utts if u.leg == "person" and u.text.strip()]
        if not any(u.text.strip() for u in utts):
            return "Llamada sin transcripción."
        if not person:
            return "La persona no habló durante la llamada (solo se transcribió a Lupita)."
        cat = self.catalogues
        labels = [cat.topics.get(t).label for t in topics[:3]]
        mood = {e.id: e.label for e in cat.emotions.emotions}.get(emotion, "neutral")
        if labels:
            lead = f"Se habló de {_join_es(labels)}; el ánimo predominante de la persona fue {mood}."
        else:
            lead = f"Conversación breve sin un tema claro; el ánimo de la persona fue {mood}."
        # Score every sentence of the person: catalogue words, facts and code evidence inside it.
        marks: dict[tuple[int, int], float] = {}
        for f in facts:
            if f.evidence is not None:
                marks[(f.evidence.seq, f.evidence.char_start)] = marks.get((f.evidence.seq, f.evidence.char_start), 0) + 2
        for h in hits:
            if h.evidence.leg == "person":
                marks[(h.evidence.seq, h.evidence.char_start)] = marks.get((h.evidence.seq, h.evidence.char_start), 0) + 2
        candidates: list[tuple[float, float, int, str]] = []
        for u in person:
            for s, e in sentences(u.text):
                text = u.text[s:e]
                if len(tokens(fold(text))) < 4:
                    continue
                score = sum(self.keyword_scores(text).values())
                score += sum(self.emotion_scores(text).values())
                score += sum(v for (seq, pos), v in marks.items() if seq == u.seq and s <= pos < e)
                if score > 0:
                    candidates.append((score, u.start_s, s, text))
        n_quotes = max(0, self.summary_sentences - 1)
        best = sorted(candidates, key=lambda c: (-c[0], c[1], c[2]))[:n_quotes]
        best.sort(key=lambda c: (c[1], c[2]))
        quotes = [self._quote(c[3]) for c in best]
        parts = [lead]
        if quotes:
            parts.append(f"La persona comentó: «{quotes[0]}».")
        if len(quotes) > 1:
            parts.append(f"También dijo: «{quotes[1]}».")
        return " ".join(parts)

    def _quote(self, text: str) -> str:
        text = " ".join(text.split()).rstrip(".!?…,;: ")
        if len(text) > self.quote_max_chars:
            cut = text[: self.quote_max_chars].rsplit(" ", 1)[0]
            text = cut.rstrip(",;: ") + "…"
        return text


def _pattern_hit(trig: PatternTrigger, leg_utts: list[Utterance]) -> EvidenceSpan | None:
    folded = [fold(u.text) for u in leg_utts]
    for i, (u, f) in enumerate(zip(leg_utts, folded)):
        for rx in trig.compiled:
            for m in rx.finditer(f):
                if trig.negatable and is_negated(f, m.start()):
                    continue
                if trig.compiled_requires and not _context_ok(trig, folded, i):
                    continue
                return _span(u, m.start(), m.end())
    return None


def _context_ok(trig: PatternTrigger, folded: list[str], i: int) -> bool:
    lo, hi = max(0, i - trig.context_utterances), min(len(folded), i + trig.context_utterances + 1)
    for f in folded[lo:hi]:
        for rx in trig.compiled_requires:
            for m in rx.finditer(f):
                if not (trig.negatable and is_negated(f, m.start())):
                    return True
    return False


def _unit_rows(x: Any, n: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"embedder returned shape {getattr(arr, 'shape', None)} for {n} texts; "
                         "expected (n, dim)")
    if not np.isfinite(arr).all():
        raise ValueError("embedder returned non-finite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return arr / norms

