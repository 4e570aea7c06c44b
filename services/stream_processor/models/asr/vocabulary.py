"""Per-call vocabulary for the decoder: the words this person's memory already holds, plus a small
Mexican-Spanish health lexicon (plain code, data as tuples).

Whisper base loses names, places and medication names on 8 kHz telephone audio ("Rodrigo",
"Oaxaca", "losartán"). The local backend can bias its decoding toward a list of terms through
faster-whisper's ``hotwords`` (a text put in the decoder's previous-text context on every window):
:func:`call_vocabulary` builds that list for one call from the person's ``user_facts`` (values of
the fact types that name things: family and friends, pets, places, medications, doctors), the
person's terms first, then :data:`HEALTH_LEXICON_ES_MX`, at most ``max_terms`` and
``max_chars``. The list is an argument of each decode, never state of the shared model, so one
caller's words cannot reach another caller's transcript.

The lexicon is general (the medications most dispensed in Mexico's public clinics, common
conditions and body words of a check-in call), not the words of any test script.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Medications common in Mexico (generic names as people say them) and words of a health check-in.
HEALTH_LEXICON_ES_MX: tuple[str, ...] = (
    "metformina", "glibenclamida", "insulina", "losartán", "enalapril", "captopril", "amlodipino",
    "nifedipino", "atorvastatina", "pravastatina", "omeprazol", "ranitidina", "paracetamol", "naproxeno",
    "ibuprofeno", "diclofenaco", "ketorolaco", "levotiroxina", "aspirina", "clopidogrel", "furosemida",
    "hidroclorotiazida", "metoprolol", "salbutamol", "prednisona", "alprazolam", "sertralina",
    "presión", "azúcar", "diabetes", "glucosa", "colesterol", "tiroides", "artritis", "mareo", "caída",
    "pastilla", "receta", "consulta", "IMSS", "ISSSTE", "Seguro Popular", "centro de salud",
)

# fact types whose values are names of people, animals, places or medicines
NAMING_TYPES = frozenset({"family", "friend", "pet", "place", "health", "medication", "doctor", "caregiver",
                          "person", "location"})
# fact keys (before the per-value slug) that name something whatever their type
NAMING_KEY = re.compile(r"(^|_)(name|medication|medicine|city|town|place|doctor|hospital|clinic)(_|$|\.)")
MAX_TERM_WORDS = 4


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).strip()


def fact_terms(facts: Iterable[tuple[str, str, str]]) -> list[str]:
    """The naming values among ``(fact_type, fact_key, fact_value)`` rows, in order, short ones only
    (a name, a place, a medicine: at most four words; sentences are not vocabulary)."""
    out: list[str] = []
    for fact_type, key, value in facts:
        value = " ".join(str(value or "").split()).strip(" .,;:")
        if not value or len(value.split()) > MAX_TERM_WORDS or len(value) > 40:
            continue
        if fact_type in NAMING_TYPES or NAMING_KEY.search(key or ""):
            out.append(value)
    return out


def call_vocabulary(facts: Iterable[tuple[str, str, str]] = (), *, lexicon: Iterable[str] = HEALTH_LEXICON_ES_MX,
                    max_terms: int = 48, max_chars: int = 400) -> tuple[str, ...]:
    """The decoding vocabulary of one call: the person's naming facts first, then the lexicon;
    duplicates (accent- and case-insensitive) removed; at most ``max_terms`` terms and
    ``max_chars`` characters joined (Whisper's prompt holds about 220 tokens)."""
    terms: list[str] = []
    seen: set[str] = set()
    length = 0
    for term in [*fact_terms(facts), *lexicon]:
        key = _fold(term)
        if not key or key in seen:
            continue
        if len(terms) >= max_terms or length + len(term) + 2 > max_chars:
            break
        seen.add(key)
        terms.append(term)
        length += len(term) + 2
    return tuple(terms)


def hotwords_text(terms: Iterable[str]) -> str | None:
    """The ``hotwords`` text of a vocabulary ("Rodrigo, Oaxaca, metformina"), None when empty."""
    text = ", ".join(t for t in terms if t)
    return text or None
