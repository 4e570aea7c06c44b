"""Alerts stage core: Spanish distress and health-emergency cues in the person's leg.

Plain synchronous code, no Kafka: the Faust agent, ``lupita replay`` and ``bench/alerts`` call the
same :class:`AlertDetector`.

The cue catalogue is data (``stream_processor/data/alert_cues.json`` by default, another file via
``LUPITA_ALERT_CUES_PATH``); :func:`load_catalogue` validates it and fails with a precise message
(file, cue, pattern, what is wrong). Matching runs on a normalised copy of the utterance (lower
case, accents removed, punctuation reduced to sentence ends ``.`` and pauses ``,``) that keeps a map
back to the original characters, so each :class:`~stream_processor.contracts.AlertHit` carries
the character span of the cue in the utterance text as it was transcribed.

A pattern match is *not* an alert when

- it overlaps one of the cue's ``exclude`` patterns (figurative uses: "me caigo de sueño",
  "me pegó la gripa", "me quiero morir de la vergüenza");
- a negator ("no", "nunca", "nadie", "sin", ...) stands within ``negation_window`` words before it,
  in the same clause (a comma or a sentence end stops the look-back): "no me caí",
  "nunca me he caído", "no tengo dolor en el pecho". A match that itself starts with a negator
  ("no puedo respirar", "nadie me da de comer") is not checked;
- the cue has ``past_resolves`` (default true) and its sentence holds a remote-past marker
  ("hace dos años", "de niña", "el año pasado") but no recent marker ("hoy", "ayer",
  "hace un rato", "otra vez"): "hace años me caí" is history, "hace años que me pegan" is not
  (``hace ... que`` is excluded from the past markers: it means "for years, still").

Transcripts are imperfect (Whisper base on 8 kHz telephone audio gets a third to two thirds of the
words wrong), and a safety cue is asymmetric: a missed chest pain is far worse than a question too
many. With the catalogue's ``uncertainty`` section (:class:`Uncertainty`), a negator or past marker
that would drop a match of a critical/high cue is not believed when it is doubtful (its word
probability, given to :meth:`AlertDetector.scan` as ``words``, is low; without word probabilities
the utterance's ``confidence`` stands for it) or implausible (with a neighbouring word it spells
"anoche" or "nomás": Whisper's "a no che me caí"); a word one edit away from a cue word
("respriar") is read as that word; a cue no pattern matched exactly is looked for as whole
phrases heard approximately, every long word sounding alike ("me huele mucho en fecho" read as
"me duele ... el pecho", ``approximate_phrase_min_score``); and an exclusion heard only
approximately ("me caigo, me dueño") does not drop the match. Such a hit is raised with
``AlertHit.to_verify`` and the evidence in ``AlertHit.verification``: a human checks it.
``AlertDetector(uncertainty=False)`` believes every negator (the plain catalogue, for comparison);
``approximate_phrases=False`` keeps the word-level reading only.

What rules like these miss: cues said in other words than the catalogue's, reported speech
("mi vecina se cayó" is ignored, but "mi hija dice que me caí" fires), irony and jokes, a cue split
across two segments, double negation ("no es que no pueda respirar"), negation further than the
window ("no creo que de verdad me haya caído"), ASR errors that change a cue word's sound more
than a letter or two ("se me durmió" heard as "se me murió", "el brazo" as "el rato") or in
phrases with fewer than two long words ("no sé qué día es hoy"); and the approximate phrases
raise look-alikes to verify ("un dolor en el techo"). It
finds phrases, not situations: an alert is a prompt for a human, not a diagnosis.

Settings: ``LUPITA_ALERT_CUES_PATH`` (:class:`AlertSettings`; unset = the packaged catalogue).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic_settings import SettingsConfigDict

from lupita.config import CommonSettings
from stream_processor.contracts import AlertHit, EvidenceSpan, Utterance

PERSON_LEG = "person"
LUPITA_LEG = "lupita"
LEGS = frozenset({PERSON_LEG, LUPITA_LEG})
SEVERITIES = ("critical", "high", "medium")
CATALOGUE_VERSION = 1
DEFAULT_CATALOGUE = "alert_cues.json"

_CUE_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CUE_KEYS = {"id", "severity", "description", "patterns", "exclude", "past_resolves"}
_TOP_KEYS = {"version", "language", "negators", "negation_window", "past_markers", "recent_markers", "cues",
             "uncertainty"}
_UNCERTAINTY_KEYS = {"severities", "word_probability_below", "utterance_confidence_below", "negator_lookalikes",
                     "approximate_min_length", "approximate_phrase_min_score"}

Status = Literal["hit", "negated", "past", "excluded"]


class AlertSettings(CommonSettings):
    """Settings of the alerts stage (``LUPITA_<FIELD>``); the worker's settings class may inherit it."""

    model_config = SettingsConfigDict(hide_input_in_errors=True)

    # Cue catalogue file (JSON, see stream_processor/data/alert_cues.json). Unset = the packaged one.
    alert_cues_path: Path | None = None


# --- errors ------------------------------------------------------------------------------------


class CatalogueError(ValueError):
    """The cue catalogue is not valid; the message names the file, the cue and what is wrong."""


class AlertInputError(ValueError):
    """An utterance handed to the detector cannot be scanned as it is (the message says why)."""


# --- text normalisation ------------------------------------------------------------------------

_SENTENCE_END = frozenset(".;:!?¡¿\n")
_PAUSE = frozenset(",…")


@lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    """Lower case without diacritics: 'Á' -> 'a', 'ñ' -> 'n', 'ü' -> 'u' (may be '' or 2 chars)."""
    decomposed = unicodedata.normalize("NFD", ch)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def fold(text: str) -> str:
    """Accent- and case-folded text (no punctuation handling): how patterns are normalised."""
    return "".join(_fold_char(c) for c in text)


def normalise(text: str) -> tuple[str, list[int]]:
    """Normalised text and, for each of its characters, the index of the original character.

    Letters and digits are folded (:func:`fold`); sentence ends (``. ; : ! ? ¡ ¿`` and new lines)
    become a ``.`` token, pauses (``,``, ``…`` and ``..``) a ``,`` token; every other character
    separates words. Tokens are separated by exactly one space, so ``text.split(" ")`` gives the
    words and boundary tokens in order.
    """
    out: list[str] = []
    idx: list[int] = []
    n = len(text)
    for i, ch in enumerate(text):
        if ch.isalnum():
            for c in (ch.lower() if ch.isascii() else _fold_char(ch)):
                if c.isalnum():
                    out.append(c)
                    idx.append(i)
            continue
        if ch in _SENTENCE_END or ch in _PAUSE:
            if not out:
                continue  # leading punctuation ("¿Para qué...") bounds nothing
            if ch == "." and ((i + 1 < n and text[i + 1] == ".") or (i > 0 and text[i - 1] == ".")):
                mark = ","  # an ellipsis is a pause, not a sentence end
            else:
                mark = "," if ch in _PAUSE else "."
            last = len(out) - 1 if out[-1] != " " else len(out) - 2
            if last >= 0 and out[last] in ".,":
                if mark == ".":
                    out[last] = "."  # consecutive boundaries: one token, the stronger one
                continue
            if out[-1] != " ":
                out.append(" ")
                idx.append(i)
            out += [mark, " "]
            idx += [i, i]
            continue
        if out and out[-1] != " ":
            out.append(" ")
            idx.append(i)
    while out and out[-1] == " ":
        out.pop()
        idx.pop()
    return "".join(out), idx


# --- the catalogue -----------------------------------------------------------------------------

_GAP = r"\s+(?:\w+\s+){0,3}"  # " ... " in a pattern: up to 3 words in between
_SPACE = r"\s+(?:,\s+)?"  # a space in a pattern: spaces, and at most one pause between words


def compile_pattern(pattern: str) -> str:
    """Catalogue pattern -> regex source over normalised text (accent-folded, spaces widened,
    ``...`` gaps, word boundaries). Raises ``re.error`` if it is not a valid expression."""
    folded = fold(pattern.strip())
    parts = [re.sub(r" +", lambda _: _SPACE, part.strip()) for part in re.split(r"\s*\.\.\.\s*", folded)]
    source = _GAP.join(parts)
    re.compile(source)
    return source


@dataclass(frozen=True)
class Cue:
    id: str
    severity: str
    description: str
    patterns: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    past_resolves: bool = True


@dataclass(frozen=True)
class Uncertainty:
    """How transcription uncertainty changes the decision (the catalogue's ``uncertainty``).

    A negator or remote-past marker that would drop a match of a cue of one of ``severities`` does
    not drop it when it is doubtful: its word probability is below ``word_probability_below``
    (when the transcript's word probabilities are given), or, without them, the utterance's
    confidence is below ``utterance_confidence_below``; or it is implausible: joined with a
    neighbouring word it spells one of ``negator_lookalikes`` ("a no che" is "anoche", "no mas"
    is "nomás"). The match is then raised with ``to_verify``. Words of at least
    ``approximate_min_length`` letters one edit away from a catalogue word are read as that word
    (the hit is ``to_verify`` too); 0 turns that off.

    ``approximate_phrase_min_score`` (0 = off) reads whole cue phrases approximately, for cues of
    ``severities`` that no pattern matched exactly: a phrase of a pattern (its literal expansions,
    with two or more words of 4+ letters) is found when every such word is heard as a word that
    sounds alike (Spanish sound key, :func:`~stream_processor.models.analyzer.lexicon.sound`;
    character similarity of the keys >= 0.8), at most one short word is another short word, and
    the phrase's mean similarity is at least the score ("me huele mucho en fecho" is read as "me
    duele ... el pecho"). Such a hit is ``to_verify``, and goes through the same exclusions,
    negators and past markers. An ``exclude`` phrase found only approximately ("me caigo me dueño"
    for "me caigo de sueño") does not drop a match: it makes it ``to_verify``."""

    severities: frozenset[str] = frozenset({"critical", "high"})
    word_probability_below: float = 0.5
    utterance_confidence_below: float = 0.5
    negator_lookalikes: frozenset[str] = frozenset()
    approximate_min_length: int = 6
    approximate_phrase_min_score: float = 0.0


@dataclass(frozen=True)
class Catalogue:
    """A validated cue catalogue (build it with :func:`load_catalogue` or :func:`parse_catalogue`)."""

    cues: tuple[Cue, ...]
    negators: frozenset[str]
    negation_window: int
    past_markers: tuple[str, ...]
    recent_markers: tuple[str, ...]
    source: str = "<data>"
    language: str = "es"
    uncertainty: Uncertainty | None = None  # None: every negator and past marker is believed

    def cue(self, cue_id: str) -> Cue:
        for c in self.cues:
            if c.id == cue_id:
                return c
        raise KeyError(cue_id)


def _fail(source: str, where: str, message: str) -> CatalogueError:
    return CatalogueError(f"{source}: {where}: {message}" if where else f"{source}: {message}")


def _pattern_list(source: str, where: str, value: Any, *, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(source, where, f"must be a list of strings, got {type(value).__name__}")
    if not value and not allow_empty:
        raise _fail(source, where, "is empty: a cue needs at least one pattern")
    seen: set[str] = set()
    out: list[str] = []
    for j, p in enumerate(value):
        if not isinstance(p, str) or not p.strip():
            raise _fail(source, f"{where}[{j}]", f"must be a non-empty string, got {p!r}")
        try:
            regex = re.compile(compile_pattern(p))
        except re.error as exc:
            raise _fail(source, f"{where}[{j}] {p!r}", f"bad regular expression: {exc}") from None
        if regex.fullmatch("") is not None or regex.fullmatch(" ") is not None:
            raise _fail(source, f"{where}[{j}] {p!r}", "matches the empty string (it would fire on anything)")
        if regex.groupindex:
            raise _fail(source, f"{where}[{j}] {p!r}", "named groups are not allowed (patterns are combined)")
        if re.search(r"\\[1-9]", p):
            raise _fail(source, f"{where}[{j}] {p!r}", "back-references are not allowed (patterns are combined)")
        key = fold(p.strip())
        if key in seen:
            raise _fail(source, f"{where}[{j}] {p!r}", "duplicate pattern")
        seen.add(key)
        out.append(p.strip())
    return tuple(out)


def parse_catalogue(data: Any, *, source: str = "<data>") -> Catalogue:
    """Validate a decoded catalogue (the JSON object) and build a :class:`Catalogue`.

    Raises :class:`CatalogueError` naming the first problem: unknown or missing keys, an unknown
    severity, an empty or duplicate id, empty patterns, a bad regular expression, a pattern that
    matches the empty string. Keys starting with ``_`` are comments and ignored.
    """
    if not isinstance(data, Mapping):
        raise _fail(source, "", f"the catalogue must be a JSON object, got {type(data).__name__}")
    unknown = sorted(k for k in data if k not in _TOP_KEYS and not str(k).startswith("_"))
    if unknown:
        raise _fail(source, "", f"unknown key(s) {unknown}; expected {sorted(_TOP_KEYS)}")
    version = data.get("version")
    if version != CATALOGUE_VERSION:
        raise _fail(source, "version", f"must be {CATALOGUE_VERSION}, got {version!r}")
    language = data.get("language", "es")
    if not isinstance(language, str) or not re.fullmatch(r"[a-z]{2}", language):
        raise _fail(source, "language", f"must be an ISO 639-1 code such as 'es', got {language!r}")

    negators_raw = data.get("negators", [])
    if not isinstance(negators_raw, list) or not all(isinstance(w, str) and re.fullmatch(r"\w+", fold(w))
                                                      for w in negators_raw):
        raise _fail(source, "negators", "must be a list of single words")
    window = data.get("negation_window", 3)
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= 10:
        raise _fail(source, "negation_window", f"must be an integer number of words in [0, 10], got {window!r}")
    past = _pattern_list(source, "past_markers", data.get("past_markers", []), allow_empty=True)
    recent = _pattern_list(source, "recent_markers", data.get("recent_markers", []), allow_empty=True)

    cues_raw = data.get("cues")
    if not isinstance(cues_raw, list) or not cues_raw:
        raise _fail(source, "cues", "must be a non-empty list of cue objects")
    cues: list[Cue] = []
    ids: set[str] = set()
    for i, c in enumerate(cues_raw):
        where = f"cues[{i}]"
        if not isinstance(c, Mapping):
            raise _fail(source, where, f"must be an object, got {type(c).__name__}")
        cid = c.get("id")
        if isinstance(cid, str):
            where = f"cues[{i}] (id {cid!r})"
        extra = sorted(k for k in c if k not in _CUE_KEYS and not str(k).startswith("_"))
        if extra:
            raise _fail(source, where, f"unknown key(s) {extra}; expected {sorted(_CUE_KEYS)}")
        if not isinstance(cid, str) or not _CUE_ID.fullmatch(cid):
            raise _fail(source, where, f"id must be snake_case ([a-z][a-z0-9_]*, <= 64 chars), got {cid!r}")
        if cid in ids:
            raise _fail(source, where, f"duplicate id {cid!r}")
        ids.add(cid)
        severity = c.get("severity")
        if severity not in SEVERITIES:
            raise _fail(source, where, f"unknown severity {severity!r}; expected one of {list(SEVERITIES)}")
        description = c.get("description")
        if not isinstance(description, str) or not description.strip():
            raise _fail(source, where, "description must be a non-empty string")
        if "patterns" not in c:
            raise _fail(source, where, "has no 'patterns'")
        patterns = _pattern_list(source, f"{where}.patterns", c["patterns"], allow_empty=False)
        exclude = _pattern_list(source, f"{where}.exclude", c.get("exclude", []), allow_empty=True)
        past_resolves = c.get("past_resolves", True)
        if not isinstance(past_resolves, bool):
            raise _fail(source, where, f"past_resolves must be true or false, got {past_resolves!r}")
        cues.append(Cue(cid, severity, description.strip(), patterns, exclude, past_resolves))
    return Catalogue(tuple(cues), frozenset(fold(w) for w in negators_raw), window, past, recent,
                     source=source, language=language,
                     uncertainty=_parse_uncertainty(source, data.get("uncertainty")))


def _parse_uncertainty(source: str, raw: Any) -> Uncertainty | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise _fail(source, "uncertainty", f"must be an object, got {type(raw).__name__}")
    extra = sorted(k for k in raw if k not in _UNCERTAINTY_KEYS and not str(k).startswith("_"))
    if extra:
        raise _fail(source, "uncertainty", f"unknown key(s) {extra}; expected {sorted(_UNCERTAINTY_KEYS)}")
    sev = raw.get("severities", ["critical", "high"])
    if not isinstance(sev, list) or any(x not in SEVERITIES for x in sev):
        raise _fail(source, "uncertainty.severities", f"must be a list of {list(SEVERITIES)}, got {sev!r}")
    out: dict[str, Any] = {"severities": frozenset(sev)}
    for key in ("word_probability_below", "utterance_confidence_below"):
        v = raw.get(key, 0.5)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise _fail(source, f"uncertainty.{key}", f"must be a number in [0, 1], got {v!r}")
        out[key] = float(v)
    looks = raw.get("negator_lookalikes", [])
    if not isinstance(looks, list) or not all(isinstance(w, str) and re.fullmatch(r"[a-z]+", fold(w)) for w in looks):
        raise _fail(source, "uncertainty.negator_lookalikes", "must be a list of single words")
    out["negator_lookalikes"] = frozenset(fold(w) for w in looks)
    n = raw.get("approximate_min_length", 6)
    if isinstance(n, bool) or not isinstance(n, int) or not (n == 0 or 4 <= n <= 30):
        raise _fail(source, "uncertainty.approximate_min_length", f"must be 0 (off) or an integer in [4, 30], got {n!r}")
    out["approximate_min_length"] = n
    ps = raw.get("approximate_phrase_min_score", 0.0)
    if isinstance(ps, bool) or not isinstance(ps, (int, float)) or not (ps == 0 or 0.5 <= ps <= 1):
        raise _fail(source, "uncertainty.approximate_phrase_min_score",
                    f"must be 0 (off) or a number in [0.5, 1], got {ps!r}")
    out["approximate_phrase_min_score"] = float(ps)
    return Uncertainty(**out)


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read and validate a catalogue file; ``None`` = the packaged ``data/alert_cues.json``."""
    if path is None:
        ref = resources.files("stream_processor") / "data" / DEFAULT_CATALOGUE
        source = f"stream_processor/data/{DEFAULT_CATALOGUE}"
        text = ref.read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CatalogueError(f"{source}: no such file (LUPITA_ALERT_CUES_PATH)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogueError(f"{source}: cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return parse_catalogue(data, source=source)


# --- the detector ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CueMatch:
    """One pattern match of a cue in an utterance and what became of it."""

    cue_id: str
    severity: str
    char_start: int  # in the original text
    char_end: int
    text: str  # the original text of the span
    status: Status
    reason: str = ""  # the negator, past marker or exclusion that dropped it
    to_verify: bool = False  # raised although a doubtful negator / past marker or an approximate word
    verification: str = ""  # why it is to be verified (the evidence), e.g. "negator 'no' p=0.31"


def _union(sources: Iterable[str]) -> re.Pattern[str] | None:
    parts = [f"(?:{s})" for s in sources]
    if not parts:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)")


@dataclass(frozen=True)
class _CompiledCue:
    cue: Cue
    regex: re.Pattern[str]
    exclude: re.Pattern[str] | None


class AlertDetector:
    """Scans final transcript segments of the person's leg for the catalogue's cues.

    ``scan(utterance, seen)`` returns the new :class:`AlertHit` s of one utterance, in text order,
    at most one per cue; ``seen`` (the cue ids already raised in this call, which the agent keeps
    in its per-call table) is updated in place, so a cue is raised once per call. Thread-safe (no
    state besides the compiled catalogue).
    """

    def __init__(self, catalogue: Catalogue | None = None, *, uncertainty: bool = True,
                 approximate_phrases: bool = True) -> None:
        self.catalogue = catalogue or load_catalogue()
        cat = self.catalogue
        # uncertainty=False: the catalogue's ``uncertainty`` is ignored (every negator is believed)
        self.uncertainty = cat.uncertainty if uncertainty else None
        # approximate_phrases=False: no cue or exclude phrase is read approximately (for comparison)
        score = self.uncertainty.approximate_phrase_min_score if self.uncertainty is not None else 0.0
        self._phrase_score = score if approximate_phrases else 0.0
        self._phrases = {c.id: _phrases(c.patterns) for c in cat.cues} if self._phrase_score else {}
        self._excl_phrases = {c.id: _phrases(c.exclude) for c in cat.cues} if self._phrase_score else {}
        self._sim: dict[tuple[str, str], float] = {}
        self._vocab, self._known = _vocabulary(cat)
        self._near: dict[str, str | None] = {}  # word heard -> the cue word it is read as (None: none)
        self._cues = tuple(
            _CompiledCue(c, _union(compile_pattern(p) for p in c.patterns),  # type: ignore[arg-type]
                         _union(compile_pattern(p) for p in c.exclude))
            for c in cat.cues)
        self._past = _union(compile_pattern(p) for p in cat.past_markers)
        self._recent = _union(compile_pattern(p) for p in cat.recent_markers)

    @classmethod
    def from_settings(cls, settings: AlertSettings) -> "AlertDetector":
        return cls(load_catalogue(settings.alert_cues_path))

    # -- public --------------------------------------------------------------------------------

    def scan(self, utterance: Utterance, seen: set[str] | None = None, *,
             words: Sequence[tuple[str, float | None]] | None = None) -> list[AlertHit]:
        """New alerts in one utterance (none for Lupita's leg); adds their cue ids to ``seen``.

        ``words``: the transcript's words with their probabilities (``TranscriptEvent.words`` as
        ``(word, probability)`` pairs), in order; without them the utterance's ``confidence`` stands
        for every word. A cue is raised once per call, doubtful (``to_verify``) or not, whichever
        comes first."""
        self._check(utterance)
        if utterance.leg != PERSON_LEG:
            return []
        raised = seen if seen is not None else set()
        hits: list[AlertHit] = []
        for m in self.matches(utterance.text, words=words, confidence=utterance.confidence):
            if m.status != "hit" or m.cue_id in raised:
                continue
            raised.add(m.cue_id)
            hits.append(AlertHit(
                call_id=utterance.call_id, cue_id=m.cue_id, severity=m.severity,
                evidence=EvidenceSpan(leg=utterance.leg, seq=utterance.seq, start_s=utterance.start_s,
                                      end_s=utterance.end_s, text=utterance.text,
                                      char_start=m.char_start, char_end=m.char_end),
                to_verify=m.to_verify, verification=m.verification))
        return hits

    def matches(self, text: str, *, words: Sequence[tuple[str, float | None]] | None = None,
                confidence: float | None = None) -> list[CueMatch]:
        """Every cue match in ``text`` with its status (hit / negated / past / excluded), in text
        order; for tests, debugging and the catalogue authors. Ignores legs (plain text).
        ``words`` / ``confidence``: see :meth:`scan` (used only with the catalogue's ``uncertainty``)."""
        if not isinstance(text, str):
            raise AlertInputError(f"text must be a string, got {type(text).__name__}")
        norm, idx = normalise(text)
        if not norm:
            return []
        unc = self.uncertainty
        fixes: list[tuple[int, int, str, str]] = []  # (start, end) in the new norm, heard, read as
        if unc is not None and unc.approximate_min_length:
            norm, idx, fixes = self._approximate(norm, idx, unc.approximate_min_length)
        probs = _token_probabilities(norm, words) if unc is not None and words else None
        out: list[tuple[int, CueMatch]] = []
        tokens: list[tuple[int, str]] | None = None  # (offset, token) of norm, for approximate phrases
        for cc in self._cues:
            excl_spans: list[tuple[int, int]] | None = None
            found: list[tuple[int, int, str]] = [(m.start(), m.end(), "") for m in cc.regex.finditer(norm)]
            approx = (not found and self._phrase_score > 0 and unc is not None
                      and cc.cue.severity in unc.severities and bool(self._phrases.get(cc.cue.id)))
            if approx:
                tokens = tokens if tokens is not None else _tokens(norm)
                found = [(a, b, f"heard '{norm[a:b]}', read as '{phrase}'")
                         for a, b, phrase in self._find_phrases(tokens, self._phrases[cc.cue.id])]
            for a, b, approx_doubt in found:
                status: Status = "hit"
                reason = ""
                if cc.exclude is not None:
                    if excl_spans is None:
                        excl_spans = [e.span() for e in cc.exclude.finditer(norm)]
                    for ea, eb in excl_spans:
                        if ea < b and a < eb:
                            status, reason = "excluded", norm[ea:eb]
                            break
                doubts: list[str] = [approx_doubt] if approx_doubt else []
                if status == "hit" and self._excl_phrases.get(cc.cue.id):
                    tokens = tokens if tokens is not None else _tokens(norm)
                    for ea, eb, phrase in self._find_phrases(tokens, self._excl_phrases[cc.cue.id]):
                        if ea < b and a < eb:
                            doubts.append(f"'{norm[ea:eb]}' resembles the figurative '{phrase}'")
                            break
                if status == "hit":
                    neg, at = self._negator_before(norm, a, norm[a:b])
                    if neg:
                        doubt = self._doubt(cc.cue, norm, at, at + len(neg), probs, confidence, negator=True)
                        if doubt:
                            doubts.append(f"negator '{neg}' {doubt}")
                        else:
                            status, reason = "negated", neg
                if status == "hit" and cc.cue.past_resolves:
                    past, pa, pb = self._remote_past(norm, a, b)
                    if past:
                        doubt = self._doubt(cc.cue, norm, pa, pb, probs, confidence, negator=False)
                        if doubt:
                            doubts.append(f"past marker '{past}' {doubt}")
                        else:
                            status, reason = "past", past
                if status == "hit":
                    doubts += [f"heard '{heard}', read as '{word}'" for fa, fb, heard, word in fixes
                               if fa < b and a < fb]
                start, end = idx[a], idx[b - 1] + 1
                out.append((a, CueMatch(cc.cue.id, cc.cue.severity, start, end, text[start:end], status, reason,
                                        to_verify=bool(doubts), verification="; ".join(doubts))))
        out.sort(key=lambda t: t[0])
        return [m for _, m in out]

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _check(u: Utterance) -> None:
        if not isinstance(u, Utterance):
            raise AlertInputError(f"expected an Utterance, got {type(u).__name__}")
        if u.leg not in LEGS:
            raise AlertInputError(f"utterance {u.call_id}/{u.seq}: unknown leg {u.leg!r}; expected one of "
                                  f"{sorted(LEGS)}")
        if not isinstance(u.text, str):
            raise AlertInputError(f"utterance {u.call_id}/{u.seq}: text must be a string, got "
                                  f"{type(u.text).__name__}")

    def _negator_before(self, norm: str, start: int, matched: str) -> tuple[str, int]:
        """The negator that drops a match starting at ``start`` and where it is ('', -1: none)."""
        negators = self.catalogue.negators
        first = matched.split(" ", 1)[0]
        if first in negators:
            return "", -1  # the cue is itself a negative statement ("no puedo respirar")
        window = self.catalogue.negation_window
        if window == 0 or start == 0:
            return "", -1
        words = 0
        for t in reversed(list(re.finditer(r"\S+", norm[:start]))):
            tok = t.group(0)
            if tok in (".", ","):
                break
            if tok in negators:
                return tok, t.start()
            words += 1
            if words >= window:
                break
        return "", -1

    def _remote_past(self, norm: str, start: int, end: int) -> tuple[str, int, int]:
        if self._past is None:
            return "", -1, -1
        s0 = norm.rfind(".", 0, start) + 1
        s1 = norm.find(".", end)
        sentence = norm[s0:] if s1 < 0 else norm[s0:s1]
        past = self._past.search(sentence)
        if past is None:
            return "", -1, -1
        if self._recent is not None and self._recent.search(sentence):
            return "", -1, -1
        return past.group(0), s0 + past.start(), s0 + past.end()

    def _doubt(self, cue: Cue, norm: str, a: int, b: int, probs: dict[int, float] | None,
               confidence: float | None, *, negator: bool) -> str:
        """Why the negator / past marker at ``norm[a:b]`` is not to be believed ('' = believe it)."""
        unc = self.uncertainty
        if unc is None or cue.severity not in unc.severities or a < 0:
            return ""
        if negator and unc.negator_lookalikes:
            before = norm[:a].rstrip().rsplit(" ", 1)[-1] if a > 0 else ""
            after = norm[b:].lstrip().split(" ", 1)[0]
            word = norm[a:b]
            for joined in (before + word + after, before + word, word + after):
                if joined != word and joined in unc.negator_lookalikes:
                    return f"implausible (with its neighbour it spells '{joined}')"
        if probs is not None:
            ps = [p for start, p in probs.items() if a <= start < b]
            if ps:
                p = sum(ps) / len(ps)
                return f"doubtful (word probability {p:.2f})" if p < unc.word_probability_below else ""
        if confidence is not None and confidence < unc.utterance_confidence_below:
            return f"doubtful (utterance confidence {confidence:.2f})"
        return ""

    def _similar(self, heard: str, word: str) -> float:
        """How alike a heard word and a phrase word sound: 1.0 (equal sound keys), the character
        similarity (of the sound keys or of the words, the higher) when both have 4+ letters and it
        is >= 0.8, 0.5 for a short word heard as another short word, else 0."""
        if heard == word:
            return 1.0
        key = (heard, word)
        got = self._sim.get(key)
        if got is None:
            from rapidfuzz import fuzz

            from stream_processor.models.analyzer.lexicon import sound

            if len(word) < 4 or len(heard) < 4:
                got = 0.5 if (len(word) < 4 and len(heard) < 4 and heard.isalpha()) else 0.0
            else:
                a, b = sound(heard), sound(word)
                r = 1.0 if a == b else max(fuzz.ratio(a, b), fuzz.ratio(heard, word)) / 100.0
                got = r if r >= 0.8 else 0.0
            if len(self._sim) < 200_000:
                self._sim[key] = got
        return got

    def _find_phrases(self, tokens: list[tuple[int, str]],
                      phrases: Sequence[tuple[str, ...]]) -> list[tuple[int, int, str]]:
        """Approximate occurrences of the phrases in the tokens: (start, end) in norm, the phrase;
        the best-scoring phrase per start, non-overlapping, in text order."""
        words = [t for _, t in tokens]
        heard = {w for w in words if len(w) >= 4}
        present: dict[str, bool] = {}  # a phrase's long word -> some heard word is alike
        best: dict[int, tuple[float, int, str]] = {}
        for phrase in phrases:
            for w in phrase:
                if len(w) >= 4 and w != "…" and present.setdefault(
                        w, w in heard or any(self._similar(h, w) > 0 for h in heard)) is False:
                    break
            else:
                self._phrase_at(words, phrase, best)
        out: list[tuple[int, int, str]] = []
        last = -1
        for i in sorted(best):
            score, end, phrase = best[i]
            if i <= last:
                continue
            a = tokens[i][0]
            b = tokens[end][0] + len(tokens[end][1])
            out.append((a, b, phrase))
            last = end
        return out

    def _phrase_at(self, words: list[str], phrase: tuple[str, ...], best: dict[int, tuple[float, int, str]]) -> None:
        """Each start where the phrase aligns with a score of at least the minimum -> best (score,
        last token, phrase)."""
        for i in range(len(words)):
            got = self._align(words, i, phrase)
            if got is None:
                continue
            score, end = got
            if score >= self._phrase_score and score > best.get(i, (0.0, 0, ""))[0]:
                best[i] = (score, end, " ".join(phrase))

    def _align(self, words: list[str], i: int, phrase: tuple[str, ...]) -> tuple[float, int] | None:
        """Phrase words (``…`` = a gap of up to 3 words) against the tokens from ``i`` on: (mean
        similarity of the phrase's words of 4+ letters, index of the last token) of the best
        alignment, or None. Every word must be alike (see :meth:`_similar`), at most one short
        word replaced by another; a pause may stand between two words, a sentence end may not."""
        best: tuple[float, int] | None = None

        def go(j: int, k: int, total: float, n: int, shorts: int, first: bool) -> None:
            nonlocal best
            if j == len(phrase):
                score = total / n
                if best is None or score > best[0]:
                    best = (score, k - 1)
                return
            w = phrase[j]
            if w == "…":
                for skip in range(0, 4):
                    kk = k + skip
                    if kk > len(words) or any(t == "." for t in words[k:kk]):
                        break
                    if skip and words[kk - 1] == ",":
                        continue
                    go(j + 1, kk, total, n, shorts, False)
                return
            if not first and k < len(words) and words[k] == ",":
                k += 1
            if k >= len(words) or words[k] in (".", ","):
                return
            sim = self._similar(words[k], w)
            if sim <= 0:
                return
            short = len(w) < 4
            short_sub = sim < 1 and short
            if short_sub and shorts >= 1:
                return
            go(j + 1, k + 1, total + (0.0 if short else sim), n + (0 if short else 1), shorts + short_sub, False)

        go(0, i, 0.0, 0, 0, True)
        return best

    def _approximate(self, norm: str, idx: list[int], min_len: int) -> tuple[str, list[int], list[tuple[int, int, str, str]]]:
        """Words of ``min_len`` letters or more one edit away from a catalogue word (and not
        catalogue words themselves) replaced by it; the index map follows."""
        toks = norm.split(" ")
        out_t: list[str] = []
        out_i: list[int] = []
        fixes: list[tuple[int, int, str, str]] = []
        pos = 0
        new_pos = 0
        for k, tok in enumerate(toks):
            rep = tok
            if len(tok) >= min_len and tok.isalpha() and tok not in self._known:
                near = self._near.get(tok, "")
                if near == "":
                    near = _nearest(tok, self._vocab, min_len)
                    if len(self._near) < 100_000:  # bounded: words heard are a small vocabulary
                        self._near[tok] = near
                rep = near or tok
            span = idx[pos:pos + len(tok)]
            if rep != tok:
                fixes.append((new_pos, new_pos + len(rep), tok, rep))
                span = [span[min(j, len(span) - 1)] for j in range(len(rep))]
            out_t.append(rep)
            out_i += span
            new_pos += len(rep)
            pos += len(tok)
            if k < len(toks) - 1:
                out_i.append(idx[pos])
                pos += 1
                new_pos += 1
        return " ".join(out_t), out_i, fixes


# --- approximate words and word probabilities -------------------------------------------------------


def _vocabulary(cat: Catalogue) -> tuple[dict[int, tuple[str, ...]], frozenset[str]]:
    """(catalogue words of the cue patterns by length, every literal word of the catalogue)."""
    cue_words: set[str] = set()
    known: set[str] = set(cat.negators)
    for c in cat.cues:
        for p in c.patterns:
            cue_words.update(re.findall(r"[a-z]+", fold(p)))
        for p in c.exclude:
            known.update(re.findall(r"[a-z]+", fold(p)))
    for p in (*cat.past_markers, *cat.recent_markers):
        known.update(re.findall(r"[a-z]+", fold(p)))
    cue_words.discard("w")  # from \w in patterns
    known |= cue_words
    by_len: dict[int, list[str]] = {}
    for w in sorted(cue_words):
        by_len.setdefault(len(w), []).append(w)
    return {n: tuple(ws) for n, ws in by_len.items()}, frozenset(known)


def _within_one(a: str, b: str) -> bool:
    """One substitution, insertion, deletion or transposition of neighbours apart (a != b)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                   and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1:]


def _nearest(tok: str, vocab: dict[int, tuple[str, ...]], min_len: int) -> str | None:
    """The one catalogue word of ``min_len`` letters or more one edit away from ``tok`` (None: none,
    or more than one). A plural or singular of a catalogue word ("muchos" / "mucho") is a word of
    its own, not a mis-hearing."""
    found = [w for n in (len(tok) - 1, len(tok), len(tok) + 1) if n >= min_len for w in vocab.get(n, ())
             if _within_one(tok, w) and tok != w + "s" and w != tok + "s"]
    return found[0] if len(found) == 1 else None


def _tokens(norm: str) -> list[tuple[int, str]]:
    """(offset, token) of the normalised text's tokens (words, ``.`` and ``,``)."""
    out = []
    pos = 0
    for t in norm.split(" "):
        if t:
            out.append((pos, t))
        pos += len(t) + 1
    return out


class _Unsupported(Exception):
    pass


_PHRASE_LIMIT = 256  # literal expansions per pattern at most; a pattern with more is not approximated


def _expand(pattern: str) -> list[str]:
    """The literal strings a (folded) catalogue pattern stands for: groups of alternatives, ``?``
    after a character or a group, `` ... `` gaps (kept as ``…``). Raises :class:`_Unsupported` for
    any other regular-expression construct, or past :data:`_PHRASE_LIMIT` expansions."""
    p = pattern
    pos = 0

    def seq() -> list[str]:
        nonlocal pos
        outs = [""]
        while pos < len(p) and p[pos] not in ")|":
            if p.startswith("...", pos):
                part, pos = [" … "], pos + 3
            elif p[pos] == "(":
                if p.startswith("(?", pos):
                    raise _Unsupported
                pos += 1
                part = alt()
                if pos >= len(p) or p[pos] != ")":
                    raise _Unsupported
                pos += 1
            elif p[pos].isalnum() or p[pos] == " ":
                part, pos = [p[pos]], pos + 1
            else:
                raise _Unsupported
            if pos < len(p) and p[pos] == "?":
                pos += 1
                part = [*part, ""]
            outs = [a + b for a in outs for b in part]
            if len(outs) > _PHRASE_LIMIT:
                raise _Unsupported
        return outs

    def alt() -> list[str]:
        nonlocal pos
        outs = seq()
        while pos < len(p) and p[pos] == "|":
            pos += 1
            outs += seq()
        return outs

    out = alt()
    if pos != len(p):
        raise _Unsupported
    return out


def _phrases(patterns: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """The literal phrases of the patterns worth reading approximately: two or more words of 4+
    letters (a single long word is :meth:`AlertDetector._approximate`'s business)."""
    out: set[tuple[str, ...]] = set()
    for p in patterns:
        try:
            expansions = _expand(fold(p.strip()))
        except _Unsupported:
            continue
        for e in expansions:
            words = tuple(w for w in e.split() if w)
            while words and words[-1] == "…":
                words = words[:-1]
            while words and words[0] == "…":
                words = words[1:]
            if sum(len(w) >= 4 for w in words if w != "…") >= 2:
                out.add(words)
    return tuple(sorted(out))


def _token_probabilities(norm: str, words: Sequence[tuple[str, float | None]]) -> dict[int, float] | None:
    """Start offset in ``norm`` of each word token -> the probability of the transcript word it
    came from (aligned on the folded words; tokens that do not align get none)."""
    from difflib import SequenceMatcher

    heard: list[tuple[str, float]] = []
    for w, p in words:
        if p is None:
            continue
        for t in normalise(str(w))[0].split(" "):
            if t and t not in (".", ","):
                heard.append((t, float(p)))
    if not heard:
        return None
    starts: list[int] = []
    toks: list[str] = []
    pos = 0
    for t in norm.split(" "):
        if t and t not in (".", ","):
            starts.append(pos)
            toks.append(t)
        pos += len(t) + 1
    out: dict[int, float] = {}
    sm = SequenceMatcher(a=toks, b=[t for t, _ in heard], autojunk=False)
    for blk in sm.get_matching_blocks():
        for k in range(blk.size):
            out[starts[blk.a + k]] = heard[blk.b + k][1]
    return out
