"""The fact lexicons (data) and approximate matching of transcript words against them.

Three lists live in ``stream_processor/data/`` as JSON, validated at load like the catalogues
(a broken file fails at start-up with ``CatalogueError`` naming the place):

- ``medications.json``: medication names common in Mexico (generic names of the Cuadro Básico used
  in primary care, common over-the-counter medicines, brand names mapped to their generic);
- ``given_names.json``: given names common in Mexico and their usual nicknames;
- ``places.json``: cities and states where relatives live or go (the United States, Mexico) and
  the ways of saying "the United States" ("el norte", "el otro lado").

Matching runs on :func:`~stream_processor.models.analyzer.text.fold`-ed text (lower case, accents
off, one character per character), so the offsets found are offsets in the transcript too.
Whisper on telephone audio misspells words ("metformía", "lozartán", "Beronica"): a window of one
to three words is compared with every entry by the normalised Indel similarity of ``rapidfuzz``
(``fuzz.ratio``, 0-100). The score is returned with the match, so a rule can ask for more
certainty where a false match costs more (a medication named without any medication context).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from pydantic import Field
from rapidfuzz import fuzz, process

from stream_processor.models.analyzer.catalog import _load, _Model
from stream_processor.models.analyzer.text import fold

WORD_RX = re.compile(r"[a-zñ0-9]+")
_GLUE = frozenset({"la", "el", "los", "las", "de", "del", "en", "con", "que", "por", "para", "un", "una", "y", "mi",
                   "me", "se", "le", "lo", "su", "al", "ya", "no", "si", "muy", "mas"})

# Spanish spellings of one sound, made one (Mexican Spanish: b/v, s/z/ce/ci, y/ll, silent h,
# k/qu/c): Whisper writes what it hears, so "Beronica" and "Verónica" must compare as equal.
_SOUNDS = ((re.compile(r"h"), ""), (re.compile(r"ll"), "y"), (re.compile(r"v"), "b"), (re.compile(r"z"), "s"),
           (re.compile(r"c(?=[ei])"), "s"), (re.compile(r"qu(?=[ei])"), "k"), (re.compile(r"c"), "k"),
           (re.compile(r"g(?=[ei])"), "j"), (re.compile(r"gu(?=[ei])"), "g"), (re.compile(r"x"), "ks"), (re.compile(r"(.)\1"), r"\1"))


def sound(folded: str) -> str:
    """A folded word's Spanish sound key ("beronica" and "veronica" -> "beronika")."""
    for rx, rep in _SOUNDS:
        folded = rx.sub(rep, folded)
    return folded


class Medication(_Model):
    generic: str = Field(min_length=2, max_length=80)
    cls: str = Field(default="", alias="class", max_length=40)
    names: tuple[str, ...] = ()


class MedicationLexicon(_Model):
    version: int = 1
    description: str = ""
    medications: tuple[Medication, ...] = Field(min_length=1)


class GivenNames(_Model):
    version: int = 1
    description: str = ""
    female: tuple[str, ...] = Field(min_length=1)
    male: tuple[str, ...] = Field(min_length=1)


class Places(_Model):
    version: int = 1
    description: str = ""
    aliases: dict[str, str] = {}
    places: tuple[str, ...] = Field(min_length=1)


@dataclass(frozen=True)
class Match:
    value: str  # the canonical value (generic name, name as spelled in the list, place)
    start: int  # character range in the (folded = original) text
    end: int
    score: float  # 0-100 similarity of what was said to the entry


def _windows(folded: str, start: int, end: int, max_words: int) -> list[tuple[int, int, str]]:
    """Every run of 1..max_words words inside folded[start:end] as (start, end, words)."""
    words = [(m.start(), m.end()) for m in WORD_RX.finditer(folded, start, end)]
    out = []
    for i in range(len(words)):
        for n in range(1, max_words + 1):
            if i + n > len(words):
                break
            s, e = words[i][0], words[i + n - 1][1]
            out.append((s, e, " ".join(folded[a:b] for a, b in words[i:i + n])))
    return out


class _Index:
    """Folded surface form -> canonical value, with exact and approximate look-up."""

    def __init__(self, forms: dict[str, str], *, min_len_fuzzy: int) -> None:
        self.forms = forms
        self.by_sound = {sound(k): k for k in forms}
        self.keys = list(self.by_sound)
        self.keys_by_words: dict[int, list[str]] = {}
        for k in self.keys:
            self.keys_by_words.setdefault(len(k.split()), []).append(k)
        self.max_words = max(len(k.split()) for k in self.keys)
        self.min_len_fuzzy = min_len_fuzzy

    def lookup(self, folded_words: str, cutoff: float) -> tuple[str, float] | None:
        if folded_words in self.forms:
            return self.forms[folded_words], 100.0
        same = self.by_sound.get(sound(folded_words))
        if same is not None:  # spelt otherwise, sounds the same ("Beronica", "lozartán")
            return self.forms[same], 100.0
        if len(folded_words) < self.min_len_fuzzy or cutoff >= 100:
            return None
        said = sound(folded_words)
        # as many words as the entry: "combi en" is not a misheard "combivent"
        best = process.extractOne(said, self.keys_by_words.get(len(said.split()), []), scorer=fuzz.ratio,
                                  score_cutoff=cutoff)
        if best is None:
            return None
        key, score, _ = best
        # a fuzzy match must sound about as long as the entry and start like it (misheard names
        # differ at the end more than at the start: "metformía"), which keeps unrelated words of
        # a similar length out
        if abs(len(key) - len(said)) > 3 or key[0] != said[0]:
            return None
        if said.startswith(key) or key.startswith(said):
            return None  # a longer or shorter word around the entry ("temprano" is no "tempra")
        return self.forms[self.by_sound[key]], float(score)

    def joined(self, words: str, cutoff: float) -> tuple[str, float] | None:
        """A long entry the recogniser split into words ("libre en clamina" for glibenclamida):
        the words joined, compared with the entry and with the entry less its first sound (often
        lost at a word boundary); 9+ letters only."""
        parts = words.split()
        if any(len(p) < 3 or p in _GLUE for p in (parts[0], parts[-1])):
            return None  # "combi en la": a window ending on a little word is no split name
        said = sound("".join(parts))
        if len(said) < 9:
            return None
        best: tuple[str, float] | None = None
        for key in self.keys:
            if len(key) < 9 or abs(len(key) - len(said)) > 2:
                continue
            score = max(fuzz.ratio(said, key), fuzz.ratio(said, key[1:]) if said[0] != key[0] else 0.0)
            if score >= cutoff and (best is None or score > best[1]):
                best = (self.forms[self.by_sound[key]], float(score))
        return best

    def find_all(self, folded: str, cutoff: float, start: int = 0, end: int | None = None, *,
                 joined_cutoff: float | None = None) -> list[Match]:
        """Non-overlapping matches in folded[start:end], longest and best first (``joined_cutoff``:
        also entries split into 2-3 words by the recogniser, see :meth:`joined`)."""
        end = len(folded) if end is None else end
        cands: list[Match] = []
        for s, e, words in _windows(folded, start, end, max(self.max_words, 3 if joined_cutoff else 1)):
            hit = self.lookup(words, cutoff) if len(words.split()) <= self.max_words else None
            if hit is None and joined_cutoff is not None and " " in words:
                hit = self.joined(words, joined_cutoff)
            if hit is not None:
                cands.append(Match(hit[0], s, e, hit[1]))
        cands.sort(key=lambda m: (-m.score, -(m.end - m.start), m.start))
        taken: list[Match] = []
        for m in cands:
            if all(m.end <= t.start or m.start >= t.end for t in taken):
                taken.append(m)
        return sorted(taken, key=lambda m: m.start)


class Lexicons:
    """The three lists, loaded and indexed once per process (see :func:`load_lexicons`)."""

    def __init__(self, medications: MedicationLexicon, names: GivenNames, places: Places) -> None:
        self.medications = medications
        self.names = names
        self.places = places

    @cached_property
    def medication_index(self) -> _Index:
        forms: dict[str, str] = {}
        for m in self.medications.medications:
            for said in (m.generic, *m.names):
                forms.setdefault(" ".join(fold(said).split()), m.generic)
        return _Index(forms, min_len_fuzzy=6)

    @cached_property
    def name_index(self) -> _Index:
        forms = {fold(n): n for n in (*self.names.female, *self.names.male)}
        return _Index(forms, min_len_fuzzy=5)

    @cached_property
    def female_names(self) -> frozenset[str]:
        return frozenset(fold(n) for n in self.names.female)

    @cached_property
    def place_index(self) -> _Index:
        forms = {" ".join(fold(p).split()): p for p in self.places.places}
        for alias, place in self.places.aliases.items():
            forms[" ".join(fold(alias).split())] = place
        return _Index(forms, min_len_fuzzy=6)

    def medications_in(self, folded: str, cutoff: float = 80.0, start: int = 0, end: int | None = None, *,
                       joined_cutoff: float | None = None) -> list[Match]:
        return self.medication_index.find_all(folded, cutoff, start, end, joined_cutoff=joined_cutoff)

    def name(self, word: str, cutoff: float = 85.0) -> tuple[str, float] | None:
        """The listed given name a single word is (or is a slight misspelling of)."""
        return self.name_index.lookup(fold(word), cutoff)

    TERM_KINDS = ("medications", "brands", "names", "places")

    def terms(self, kinds: Iterable[str] = ("medications", "names", "places")) -> tuple[str, ...]:
        """The lists' entries as spelled (accents kept), for a recogniser's vocabulary such as the
        transcriber's per-call hotwords: ``medications`` (generic names), ``brands`` (their brand
        names), ``names`` (given names), ``places``; each term once, in this order and the lists'
        order. Raises ValueError for an unknown kind."""
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in self.TERM_KINDS]
        if unknown:
            raise ValueError(f"unknown term kind(s) {unknown}; expected some of {list(self.TERM_KINDS)}")
        out: dict[str, None] = {}
        for kind in kinds:
            if kind == "medications":
                words: Iterable[str] = (m.generic for m in self.medications.medications)
            elif kind == "brands":
                words = (n for m in self.medications.medications for n in m.names)
            elif kind == "names":
                words = (*self.names.female, *self.names.male)
            else:
                words = self.places.places
            for w in words:
                out.setdefault(" ".join(w.split()), None)
        return tuple(out)

    def places_in(self, folded: str, cutoff: float = 85.0, start: int = 0, end: int | None = None) -> list[Match]:
        return self.place_index.find_all(folded, cutoff, start, end)


@lru_cache(maxsize=4)
def load_lexicons(medications: Path | None = None, names: Path | None = None,
                  places: Path | None = None) -> Lexicons:
    """The packaged lists (or the files given), validated; one object per set of paths."""
    return Lexicons(_load(MedicationLexicon, medications, "medications.json"),
                    _load(GivenNames, names, "given_names.json"),
                    _load(Places, places, "places.json"))
