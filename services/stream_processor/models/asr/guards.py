"""Guards against Whisper's silence and repetition hallucinations (pure functions, no model).

Applied to every backend's segments (local and cloud) before a transcript is emitted:

1. **silence**: a segment whose ``no_speech_prob`` is above ``no_speech_threshold`` while its
   ``avg_logprob`` is below ``logprob_threshold`` is text decoded from silence (Whisper's own
   rule, applied after its temperature fallback gave up).
2. **known hallucinations**: phrases Whisper writes over silence or noise in Spanish because
   its training data was full of subtitled videos ("Subtítulos realizados por la comunidad de
   Amara.org", "Gracias por ver el video", "Suscríbete"...). The catalogue is data:
   :data:`HALLUCINATIONS_ES` entries are removed wherever they occur; :data:`HALLUCINATIONS_ES_ALONE`
   entries ("Gracias.", "Música") are real words in a call, so they are removed only when they
   are the whole segment *and* the decoder doubted it (low word probability or a high
   ``no_speech_prob``).
3. **repetition loops**: the same n-gram (n = 1..``max_ngram``) repeated consecutively more than
   ``max_repeats`` times is collapsed to one occurrence ("mira, mira, mira, mira, mira" ->
   "mira,"); if what is left still compresses better than ``compression_ratio_threshold``
   (zlib, Whisper's measure), the segment is dropped.

Comparisons are on normalised text: lower case, accents and punctuation removed.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass, replace

from stream_processor.models.asr.base import TranscriptSegment, Word

# Removed wherever they occur (they are never what a caller says on a phone call).
HALLUCINATIONS_ES: tuple[str, ...] = (
    "Subtítulos realizados por la comunidad de Amara.org",
    "Subtítulos por la comunidad de Amara.org",
    "Subtitulado por la comunidad de Amara.org",
    "Subtítulos en español de la comunidad de Amara.org",
    "Amara.org",
    "Gracias por ver el video",
    "Gracias por ver el vídeo",
    "Gracias por ver",
    "Gracias por su atención y hasta el próximo video",
    "Nos vemos en el próximo video",
    "No olvides suscribirte al canal",
    "Suscríbete al canal",
    "Suscríbanse al canal",
    "Suscríbete",
    "Dale like y suscríbete",
    "Por favor suscríbete",
    "Subtítulos hechos por la comunidad",
    "Subtítulos por Aprende Inglés",
    "Traducción y subtítulos",
    "Transcripción realizada por",
    "www.mooji.org",
)

# Removed only when they are the whole segment and the decoder was unsure.
HALLUCINATIONS_ES_ALONE: tuple[str, ...] = (
    "Gracias",
    "Muchas gracias",
    "Música",
    "Aplausos",
    "Risas",
    "Silencio",
    "Hasta la próxima",
    "Subtítulos",
)

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, no accents, no punctuation, single spaces ("¡Ay, Dios mío!" -> "ay dios mio")."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    no_accents = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACE.sub(" ", _PUNCT.sub(" ", no_accents)).strip()


def compression_ratio(text: str) -> float:
    """Whisper's measure: bytes of the UTF-8 text / bytes of its zlib compression."""
    data = text.encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(zlib.compress(data))


@dataclass(frozen=True)
class GuardConfig:
    """Thresholds of the guards (from the settings ``LUPITA_ASR_*``)."""

    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    max_ngram: int = 6
    max_repeats: int = 3
    # a lone HALLUCINATIONS_ES_ALONE phrase is dropped if its mean word probability is below
    # this or its no_speech_prob is above `alone_no_speech`
    alone_min_probability: float = 0.5
    alone_no_speech: float = 0.3
    phrases: tuple[str, ...] = HALLUCINATIONS_ES
    alone_phrases: tuple[str, ...] = HALLUCINATIONS_ES_ALONE


# --- 1. silence --------------------------------------------------------------------------------


def is_silence(segment: TranscriptSegment, cfg: GuardConfig) -> bool:
    """Whisper's no-speech rule: high ``no_speech_prob`` and low ``avg_logprob`` together."""
    if segment.no_speech_prob is None:
        return False
    low_logprob = segment.avg_logprob is None or segment.avg_logprob < cfg.logprob_threshold
    return segment.no_speech_prob > cfg.no_speech_threshold and low_logprob


# --- tokens: words with timings, or bare text ---------------------------------------------------


def _tokens(segment: TranscriptSegment) -> list[Word]:
    """The segment's words, or its text split on spaces (timeless words) when it has none."""
    if segment.words:
        return list(segment.words)
    return [Word(t, segment.start, segment.end, None) for t in segment.text.split()]


def _rebuild(segment: TranscriptSegment, tokens: list[Word]) -> TranscriptSegment:
    text = " ".join(t.text.strip() for t in tokens if t.text.strip())
    words = tuple(tokens) if segment.words else ()
    if words:
        return replace(segment, text=text, words=words, start=words[0].start, end=words[-1].end)
    return replace(segment, text=text, words=())


def _norm_tokens(tokens: list[Word]) -> list[str]:
    return [normalize_text(t.text) for t in tokens]


# --- 2. known hallucinations -------------------------------------------------------------------


def _find_phrase(norm: list[str], phrase: list[str]) -> int:
    """Start index of ``phrase`` in ``norm`` compared token-wise, ignoring empty tokens; -1 if absent."""
    n = len(phrase)
    for i in range(len(norm) - n + 1):
        if norm[i: i + n] == phrase:
            return i
    return -1


def strip_known_hallucinations(segment: TranscriptSegment, cfg: GuardConfig) -> tuple[TranscriptSegment, list[str]]:
    """Remove catalogue phrases; returns the segment (maybe with empty text) and what was removed."""
    actions: list[str] = []
    tokens = [t for t in _tokens(segment) if normalize_text(t.text)]
    if not tokens:  # "...", "¡!", "♪": punctuation or symbols only
        return _rebuild(segment, []), [f"no_words:{segment.text.strip()}"]
    # Longest phrases first so "Subtítulos realizados por la comunidad de Amara.org" wins over "Amara.org".
    phrases = sorted({normalize_text(p) for p in cfg.phrases if normalize_text(p)}, key=len, reverse=True)
    changed = True
    while changed and tokens:
        changed = False
        norm_joined = _norm_tokens(tokens)
        # a token may hold several normalised words ("amara.org" -> "amara org"): compare on words
        flat: list[str] = []
        owner: list[int] = []
        for i, n in enumerate(norm_joined):
            for part in n.split():
                flat.append(part)
                owner.append(i)
        for phrase in phrases:
            words = phrase.split()
            at = _find_phrase(flat, words)
            if at < 0:
                continue
            first, last = owner[at], owner[at + len(words) - 1]
            tokens = tokens[:first] + tokens[last + 1:]
            actions.append(f"hallucination:{phrase}")
            changed = True
            break
    if tokens:
        norm_all = " ".join(_norm_tokens(tokens))
        alone = {normalize_text(p) for p in cfg.alone_phrases}
        alone.discard("")
        if norm_all in alone and _doubtful(segment, tokens, cfg):
            actions.append(f"hallucination_alone:{norm_all}")
            tokens = []
    if not actions:
        return segment, []
    return _rebuild(segment, tokens), actions


def _doubtful(segment: TranscriptSegment, tokens: list[Word], cfg: GuardConfig) -> bool:
    probs = [t.probability for t in tokens if t.probability is not None]
    if probs and sum(probs) / len(probs) < cfg.alone_min_probability:
        return True
    if segment.no_speech_prob is not None and segment.no_speech_prob > cfg.alone_no_speech:
        return True
    if not probs and segment.avg_logprob is not None and segment.avg_logprob < cfg.logprob_threshold:
        return True
    return False


# --- 3. repetition loops -----------------------------------------------------------------------


def collapse_repetitions(tokens: list[Word], max_ngram: int, max_repeats: int) -> tuple[list[Word], list[str]]:
    """Collapse every n-gram repeated consecutively more than ``max_repeats`` times to one copy.

    Scans left to right; at each position tries n = 1..max_ngram and takes the n with the longest
    run. Tokens are compared normalised ("Mira," == "mira"). Returns the kept tokens (the first
    occurrence of each collapsed run keeps its own timings) and one action per collapse.
    """
    norm = _norm_tokens(tokens)
    out: list[Word] = []
    actions: list[str] = []
    i = 0
    while i < len(tokens):
        best_n, best_reps = 0, 1
        for n in range(1, max_ngram + 1):
            if i + 2 * n > len(tokens):
                break
            gram = norm[i: i + n]
            if not any(gram):
                continue
            reps = 1
            while norm[i + reps * n: i + (reps + 1) * n] == gram:
                reps += 1
            if reps > best_reps and reps * n > best_reps * best_n:
                best_n, best_reps = n, reps
        if best_reps > max_repeats:
            out.extend(tokens[i: i + best_n])
            actions.append(f"repetition:{' '.join(norm[i: i + best_n])}x{best_reps}")
            i += best_n * best_reps
        else:
            out.append(tokens[i])
            i += 1
    return out, actions


# --- all together ------------------------------------------------------------------------------


def guard_segment(segment: TranscriptSegment, cfg: GuardConfig) -> tuple[TranscriptSegment | None, list[str]]:
    """Apply the three guards to one segment; None when nothing of it is kept."""
    if not segment.text.strip():
        return None, []
    if is_silence(segment, cfg):
        return None, ["silence"]
    segment, actions = strip_known_hallucinations(segment, cfg)
    if not segment.text.strip():
        return None, actions
    tokens, rep_actions = collapse_repetitions(_tokens(segment), cfg.max_ngram, cfg.max_repeats)
    if rep_actions:
        segment = _rebuild(segment, tokens)
        actions += rep_actions
    if compression_ratio(segment.text) > cfg.compression_ratio_threshold:
        return None, actions + [f"compression_ratio>{cfg.compression_ratio_threshold:g}"]
    if not segment.text.strip():
        return None, actions
    return segment, actions


def guard_segments(
    segments: list[TranscriptSegment], cfg: GuardConfig
) -> tuple[tuple[TranscriptSegment, ...], tuple[str, ...]]:
    """Apply :func:`guard_segment` to each segment, keeping the order."""
    kept: list[TranscriptSegment] = []
    actions: list[str] = []
    for segment in segments:
        out, acts = guard_segment(segment, cfg)
        actions += acts
        if out is not None:
            kept.append(out)
    return tuple(kept), tuple(actions)
