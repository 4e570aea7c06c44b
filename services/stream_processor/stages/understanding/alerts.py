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

What rules like these miss: cues said in other words than the catalogue's, reported speech
("mi vecina se cayó" is ignored, but "mi hija dice que me caí" fires), irony and jokes, a cue split
across two segments, double negation ("no es que no pueda respirar"), negation further than the
window ("no creo que de verdad me haya caído"), and ASR errors in the cue words themselves. It
finds phrases, not situations: an alert is a prompt for a human, not a diagnosis.

Settings: ``LUPITA_ALERT_CUES_PATH`` (:class:`AlertSettings`; unset = the packaged catalogue).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
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
_TOP_KEYS = {"version", "language", "negators", "negation_window", "past_markers", "recent_markers", "cues"}

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
class Catalogue:
    """A validated cue catalogue (build it with :func:`load_catalogue` or :func:`parse_catalogue`)."""

    cues: tuple[Cue, ...]
    negators: frozenset[str]
    negation_window: int
    past_markers: tuple[str, ...]
    recent_markers: tuple[str, ...]
    source: str = "<data>"
    language: str = "es"

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
                     source=source, language=language)


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

    def __init__(self, catalogue: Catalogue | None = None) -> None:
        self.catalogue = catalogue or load_catalogue()
        cat = self.catalogue
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

    def scan(self, utterance: Utterance, seen: set[str] | None = None) -> list[AlertHit]:
        """New alerts in one utterance (none for Lupita's leg); adds their cue ids to ``seen``."""
        self._check(utterance)
        if utterance.leg != PERSON_LEG:
            return []
        raised = seen if seen is not None else set()
        hits: list[AlertHit] = []
        for m in self.matches(utterance.text):
            if m.status != "hit" or m.cue_id in raised:
                continue
            raised.add(m.cue_id)
            hits.append(AlertHit(
                call_id=utterance.call_id, cue_id=m.cue_id, severity=m.severity,
                evidence=EvidenceSpan(leg=utterance.leg, seq=utterance.seq, start_s=utterance.start_s,
                                      end_s=utterance.end_s, text=utterance.text,
                                      char_start=m.char_start, char_end=m.char_end)))
        return hits

    def matches(self, text: str) -> list[CueMatch]:
        """Every cue match in ``text`` with its status (hit / negated / past / excluded), in text
        order; for tests, debugging and the catalogue authors. Ignores legs (plain text)."""
        if not isinstance(text, str):
            raise AlertInputError(f"text must be a string, got {type(text).__name__}")
        norm, idx = normalise(text)
        if not norm:
            return []
        out: list[tuple[int, CueMatch]] = []
        for cc in self._cues:
            excl_spans: list[tuple[int, int]] | None = None
            for m in cc.regex.finditer(norm):
                a, b = m.start(), m.end()
                status: Status = "hit"
                reason = ""
                if cc.exclude is not None:
                    if excl_spans is None:
                        excl_spans = [e.span() for e in cc.exclude.finditer(norm)]
                    for ea, eb in excl_spans:
                        if ea < b and a < eb:
                            status, reason = "excluded", norm[ea:eb]
                            break
                if status == "hit":
                    neg = self._negator_before(norm, a, m.group(0))
                    if neg:
                        status, reason = "negated", neg
                if status == "hit" and cc.cue.past_resolves:
                    past = self._remote_past(norm, a, b)
                    if past:
                        status, reason = "past", past
                start, end = idx[a], idx[b - 1] + 1
                out.append((a, CueMatch(cc.cue.id, cc.cue.severity, start, end, text[start:end], status, reason)))
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

    def _negator_before(self, norm: str, start: int, matched: str) -> str:
        negators = self.catalogue.negators
        first = matched.split(" ", 1)[0]
        if first in negators:
            return ""  # the cue is itself a negative statement ("no puedo respirar")
        window = self.catalogue.negation_window
        if window == 0 or start == 0:
            return ""
        words = 0
        for tok in reversed(norm[:start].split()):
            if tok in (".", ","):
                break
            if tok in negators:
                return tok
            words += 1
            if words >= window:
                break
        return ""

    def _remote_past(self, norm: str, start: int, end: int) -> str:
        if self._past is None:
            return ""
        s0 = norm.rfind(".", 0, start) + 1
        s1 = norm.find(".", end)
        sentence = norm[s0:] if s1 < 0 else norm[s0:s1]
        past = self._past.search(sentence)
        if past is None:
            return ""
        if self._recent is not None and self._recent.search(sentence):
            return ""
        return past.group(0)
