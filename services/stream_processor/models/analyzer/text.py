"""Spanish text helpers of the local analyzer: length-preserving normalisation, tokens, negation.

:func:`fold` lower-cases and removes the accents of Spanish vowels one character for one
character (``"Migración"`` -> ``"migracion"``; ``ñ`` stays ``ñ``), so a regular expression run
on the folded text gives character offsets that are valid in the original text too: evidence
spans point at what the transcript really says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FOLD = str.maketrans({
    "á": "a", "é": "e", "í": "i", "ó": "o", "ú": "u", "ü": "u", "à": "a", "è": "e", "ì": "i", "ò": "o", "ù": "u",
    "Á": "a", "É": "e", "Í": "i", "Ó": "o", "Ú": "u", "Ü": "u", "À": "a", "È": "e", "Ì": "i", "Ò": "o", "Ù": "u",
    "Ñ": "ñ",
})


def fold(text: str) -> str:
    """Lower case without accents, exactly one output character per input character."""
    out = text.translate(_FOLD)
    low = out.lower()
    if len(low) == len(out):
        return low
    # str.lower() changed the length of some character (e.g. "İ"): keep those as they are.
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in out)


def fold_pattern(pattern: str) -> str:
    """A catalogue regular expression made to run on folded text: accents removed, case kept
    (compile it with ``re.IGNORECASE``; lower-casing would turn ``\\S`` into ``\\s``)."""
    return pattern.translate(_FOLD)


WORD_RE = re.compile(r"[a-zñ0-9]+(?:'[a-z]+)?")

# Words that turn the meaning of what follows around. "sin" is left out on purpose: "sin
# problema" is not a negated problem in the sense the lexicons care about.
NEGATORS = frozenset({"no", "nunca", "jamas", "ni", "tampoco", "nadie", "ningun", "ninguna", "ninguno", "nada"})
# A negation does not reach past these (a new clause starts).
CLAUSE_BREAK_RE = re.compile(r"[.;:!?¡¿,]|\b(?:pero|aunque|sino|porque|pues)\b")
HEDGES_RE = re.compile(r"\b(?:creo que|a lo mejor|tal vez|quizas?|puede que|dicen que|dice que|parece que|"
                       r"sera que|capaz que)\b")


@dataclass(frozen=True, slots=True)
class Token:
    text: str  # folded
    start: int
    end: int


def tokens(folded: str) -> list[Token]:
    return [Token(m.group(0), m.start(), m.end()) for m in WORD_RE.finditer(folded)]


def clause_start(folded: str, pos: int) -> int:
    """Offset where the clause holding ``pos`` starts (after the last clause break before it)."""
    start = 0
    for m in CLAUSE_BREAK_RE.finditer(folded, 0, pos):
        start = m.end()
    return start


def is_negated(folded: str, pos: int, *, window: int = 3) -> bool:
    """True when one of the ``window`` words before ``pos`` in the same clause is a negator
    ("no tengo diabetes", "ya no me siento sola", "nunca estoy triste")."""
    before = tokens(folded[clause_start(folded, pos):pos])
    return any(t.text in NEGATORS for t in before[-window:])


def is_hedged(folded: str, pos: int) -> bool:
    """True when the clause before ``pos`` holds a hedge ("creo que tengo azúcar")."""
    return HEDGES_RE.search(folded, clause_start(folded, pos), pos) is not None


def is_question_at(text: str, pos: int) -> bool:
    """True when ``pos`` lies in a question (between "¿" and "?", or in a sentence ending in "?")."""
    start = max(text.rfind(c, 0, pos) for c in ".!?¡\n")
    end_candidates = [i for i in (text.find(c, pos) for c in ".!?\n") if i >= 0]
    end = min(end_candidates) if end_candidates else len(text)
    sentence = text[start + 1:end + 1]
    return "¿" in sentence or sentence.rstrip().endswith("?")


SENTENCE_RE = re.compile(r"[^.!?…]+(?:[.!?…]+|$)")


def sentences(text: str) -> list[tuple[int, int]]:
    """Character ranges of the sentences of ``text`` (stripped, empty ones dropped)."""
    out: list[tuple[int, int]] = []
    for m in SENTENCE_RE.finditer(text):
        s, e = m.start(), m.end()
        while s < e and text[s] in " \t\n\"'«»":
            s += 1
        while e > s and text[e - 1] in " \t\n\"'«»":
            e -= 1
        if e > s and any(c.isalnum() for c in text[s:e]):
            out.append((s, e))
    return out


def keyword_regex(term: str) -> str:
    """A catalogue keyword as a regular expression on folded text.

    ``"pastilla*"`` matches words starting with "pastilla"; spaces match any run of spaces;
    other characters are literal. Whole words only.
    """
    term = fold(term.strip())
    stem = term.endswith("*")
    if stem:
        term = term[:-1]
    parts = [re.escape(p) for p in term.split()]
    body = r"\s+".join(parts)
    return rf"\b{body}" + (r"[a-zñ]*\b" if stem else r"\b")
