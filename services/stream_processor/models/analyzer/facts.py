"""User facts from the person's own words, by Spanish patterns (the local analyzer's rules).

What it finds (first person, affirmative statements only):

=========== ======================= ==============================================================
type        key                     from, e.g.
=========== ======================= ==============================================================
health      medication.<slug>       "tomo metformina", "me tomo mi pastilla de la presión", a misheard
                                    "tomo metformía" (the medication lexicon, approximately)
health      condition.<slug>        "tengo diabetes", "tengo azúcar", "soy hipertensa",
                                    "me diagnosticaron artritis" (value normalised: "diabetes")
family      <relation>_name.<slug>  "mi hija Rosa", "mi nieto, que se llama Juan", "mis hijos Luis
                                    y Pedro", "mi nieto rodrigo" (daughter_name, grandson_name, ...)
family      <relation>_lives_in.    "mi hijo Luis se fue a Chicago", "mi hija vive en el norte"
            <slug>                  (son_lives_in.chicago: the place lexicon, approximately)
health      next_appointment        "tengo cita con el doctor el martes" (value: what and when)
pet         <animal>_name.<slug>,   "mi perrito Canelo", "tengo un gato" (dog_name.canelo, pet.gato)
            pet.<slug>
routine     wake_up_time, bedtime,  "me levanto a las seis" (value "06:00"), "me acuesto a las
            breakfast_time, ...     diez" ("22:00"), "ceno a las ocho" ("20:00")
routine     walk, mass_attendance   "salgo a caminar todas las mañanas", "voy a misa los domingos"
preference  likes.<slug>,           "me gusta el café de olla" (likes.cafe_de_olla), "no me gustan
            dislikes.<slug>         las tortillas frías" (dislikes.tortillas_frias)
=========== ======================= ==============================================================

Keys of things a person can have several of carry a slug of the value (``medication.metformina``,
``daughter_name.rosa``), see :func:`fact_key`. Negated statements give nothing ("no tengo diabetes", "ya no tomo metformina"); hedged ones
("creo que tengo azúcar", "a lo mejor") get 0.6 of the confidence; questions give nothing.

Robust to speech recognition errors: medications, given names and places are looked up in lists
kept as data (:mod:`~stream_processor.models.analyzer.lexicon`: medications common in Mexico,
given names, places) with approximate matching on the folded text ("metformía" -> metformina,
"Beronica" -> Verónica, a lower-case "rodrigo" after "mi nieto" is a name because it is a
listed name). The stored value is the list's spelling.

Confidence = the rule's base confidence (lower for an approximate match, a name that is only
capitalised, a medication named without any medication context) x (0.25 + 0.75 x p), where p is
the mean transcription probability of the transcript words the *value* came from (the
``TranscriptEvent`` words, passed as ``words``), or the utterance's ASR confidence when no word
probabilities are given. The analyzer drops facts below its ``min_confidence`` (a value Whisper
was unsure of is not written to a person's memory). The evidence span is the utterance with
the character range of the words that gave the fact.

Limits: a name neither capitalised nor listed is missed (unless after "se llama"); the
statement must be in the first person (what the person says about a relative's health is
not a fact about the person); one clause at a time, no coreference ("ella se llama Rosa"
after "mi hija" is missed); words the recogniser lost entirely cannot be recovered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

from stream_processor.models.analyzer.lexicon import Lexicons, _Index, load_lexicons, sound
from stream_processor.models.analyzer.text import clause_start, fold, is_hedged, is_negated, is_question_at
from stream_processor.contracts import EvidenceSpan, UserFact, Utterance

HEDGE_FACTOR = 0.6
# confidence = base x (WORD_FLOOR + (1 - WORD_FLOOR) x transcription probability of the value's words)
WORD_FLOOR = 0.25
# approximate matches: similarity (0-100) needed with / without a medication word nearby
MED_FUZZY_WITH_CONTEXT = 80.0
MED_FUZZY_ALONE = 95.0
# a long name the recogniser split into words ("tomo libre en clamina"): after a taking verb only
MED_JOINED = 85.0
# words that make a medication reading likely in the same sentence
MED_CONTEXT_RX = re.compile(r"\b(?:tom[oaeé]\w*|pastill\w*|medicin\w*|medicament\w*|tableta\w*|capsula\w*|jarabe|"
                            r"gotas|receta\w*|recet[oóe]\w*|inyect\w*|me\s+pongo|dosis|doctor\w*|medic[oa]s?|"
                            r"farmacia|veces\s+al\s+dia|cada\s+\w+\s+horas|en\s+ayunas|con\s+el\s+desayuno)\b")
# lower-case words that are given names too, but far more often plain words: a name only when
# the transcript capitalises it
COMMON_WORD_NAMES = frozenset({"luz", "flor", "dolores", "soledad", "esperanza", "socorro", "consuelo", "amparo",
                               "reyes", "refugio", "pilar", "aurora", "angel", "reina", "reyna", "victoria",
                               "mercedes", "nena", "paz", "rubi", "domingo", "clara", "alma", "concepcion",
                               "fer", "pepe", "rosario", "fidel", "lola", "emma", "eva", "mateo", "marco"})
MED_FORMS = r"(?:pastillas?|medicinas?|medicamentos?|gotas|jarabe|tabletas?|capsulas?)"
MED_PURPOSES = (r"(?:(?:la|el|los|las|mi|mis)\s+)?(?:presion(?:\s+alta)?|azucar|diabetes|corazon|colesterol|tiroides|"
                r"dolor(?:\s+de\s+\w+)?|artritis|reumas?|dormir|nervios|circulacion|estomago|gastritis|riñones|"
                r"tos|rodillas?|huesos|memoria|triglic[ee]ridos|acido urico|la vista)")

# folded condition phrase -> canonical value
CONDITIONS = {
    "diabetes": "diabetes", "azucar alta": "diabetes", "el azucar alta": "diabetes", "azucar": "diabetes",
    "el azucar": "diabetes", "la azucar": "diabetes",
    "presion alta": "hipertensión", "la presion alta": "hipertensión", "hipertension": "hipertensión",
    "artritis": "artritis", "reumas": "reumatismo", "reuma": "reumatismo", "reumatismo": "reumatismo",
    "colesterol alto": "colesterol alto", "el colesterol alto": "colesterol alto", "colesterol": "colesterol alto",
    "el colesterol": "colesterol alto", "osteoporosis": "osteoporosis", "asma": "asma", "cataratas": "cataratas",
    "glaucoma": "glaucoma", "epoc": "EPOC", "enfisema": "enfisema", "gastritis": "gastritis",
    "insuficiencia renal": "insuficiencia renal", "insomnio": "insomnio", "depresion": "depresión",
    "parkinson": "Parkinson", "alzheimer": "Alzheimer", "cancer": "cáncer", "problemas de tiroides": "tiroides",
    "hipotiroidismo": "hipotiroidismo", "problemas del corazon": "problemas del corazón",
    "la gota": "gota", "acido urico alto": "ácido úrico alto", "neuropatia": "neuropatía",
}
ADJ_CONDITIONS = {"diabetic": "diabetes", "hipertens": "hipertensión", "asmatic": "asma"}

RELATIONS = {
    "hija": "daughter", "hijo": "son", "nieta": "granddaughter", "nieto": "grandson",
    "bisnieta": "great_granddaughter", "bisnieto": "great_grandson", "esposo": "husband", "marido": "husband",
    "esposa": "wife", "hermana": "sister", "hermano": "brother", "sobrina": "niece", "sobrino": "nephew",
    "nuera": "daughter_in_law", "yerno": "son_in_law", "comadre": "comadre", "compadre": "compadre",
    "vecina": "neighbor", "vecino": "neighbor", "amiga": "friend", "amigo": "friend", "prima": "cousin",
    "primo": "cousin", "cuñada": "sister_in_law", "cuñado": "brother_in_law",
}
ANIMALS = {
    "perro": "dog", "perra": "dog", "perrito": "dog", "perrita": "dog", "gato": "cat", "gata": "cat",
    "gatito": "cat", "gatita": "cat", "perico": "bird", "loro": "bird", "pajarito": "bird", "canario": "bird",
    "burro": "donkey", "burra": "donkey", "caballo": "horse", "chivo": "goat", "chiva": "goat",
}
# Capitalised words that follow a relation but are not names.
NOT_NAMES = frozenset(fold(w) for w in (
    "Dios", "Estados", "Unidos", "Oaxaca", "México", "Norte", "Chicago", "Texas", "California", "Los", "Las", "El",
    "La", "Que", "Y", "Pero", "Ya", "Se", "Me", "No", "Sí", "Si", "Lunes", "Martes", "Miércoles", "Jueves",
    "Viernes", "Sábado", "Domingo", "Navidad", "Nueva", "York", "Ella", "Él", "Mi", "Mis", "Su", "Sus", "Muy",
    "Está", "Están", "Vive", "Viven", "Tiene", "Trabaja", "Bien", "Hoy", "Ayer", "Mañana", "Doña", "Don",
    "Señora", "Señor", "Lupita", "También", "Siempre", "Nunca", "Cuando", "Porque", "Pues", "Como", "Con",
))
NAME = r"[A-ZÁÉÍÓÚÑ][a-záéíóúñü]+"
NAME_ANY = r"[A-Za-zÁÉÍÓÚÑáéíóúñü]+"

NUMBERS = {"una": 1, "uno": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7, "ocho": 8,
           "nueve": 9, "diez": 10, "once": 11, "doce": 12}
TIME = (r"(?P<h>\d{1,2}|una|dos|tres|cuatro|cinco|seis|siete|ocho|nueve|diez|once|doce)(?::(?P<m>\d{2}))?"
        r"(?P<frac>\s+y\s+media|\s+y\s+cuarto|\s+menos\s+cuarto)?"
        r"(?P<part>\s+de\s+la\s+(?:mañana|tarde|noche|madrugada))?")
AT = r"(?:como\s+|desde\s+|bien\s+temprano\s+|temprano\s+|tipo\s+)?a\s+las?\s+"


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _alt(words: Iterable[str]) -> str:
    return "(?:" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True)) + ")"


# a verb of taking before the medication, in the same clause: its start is where negation is checked
MED_VERB_RX = _rx(r"\b(?:tomo|me\s+tomo|me\s+tome|tome|estoy\s+tomando|me\s+estoy\s+tomando|me\s+pongo|"
                  r"me\s+inyecto|uso|me\s+recetaron|me\s+dieron|me\s+mandaron)\b")
MED_FORM_RX = _rx(r"\b(?:(?P<verb>tomo|me\s+tomo|estoy\s+tomando|me\s+estoy\s+tomando|me\s+recetaron)\s+)?"
                  rf"(?:mi|mis|la|las|una|unas|su|sus)\s+(?P<v>{MED_FORMS}\s+(?:de|para)\s+{MED_PURPOSES})\b")
COND_RX = _rx(r"\b(?:tengo|padezco(?:\s+de)?|sufro(?:\s+de)?|me\s+diagnosticaron|me\s+detectaron|me\s+salio|"
              r"me\s+encontraron|ando\s+con|estoy\s+enferm[ao]\s+de|soy\s+enferm[ao]\s+de)\s+"
              r"(?:(?:un|una|de|del)\s+)?"
              rf"(?P<v>{_alt(CONDITIONS)})\b")
COND_VERB_RX = _rx(r"\b(?:tengo|padezco(?:\s+de)?|sufro(?:\s+de)?|me\s+diagnosticaron|me\s+detectaron|me\s+salio|"
                   r"me\s+encontraron|ando\s+con)\b")
COND_FUZZY = 85.0


@lru_cache(maxsize=1)
def _condition_index() -> _Index:
    return _Index({" ".join(k.split()): v for k, v in CONDITIONS.items() if len(k) >= 5}, min_len_fuzzy=6)


COND_ADJ_RX = _rx(r"\bsoy\s+(?P<v>diabetic[oa]|hipertens[oa]|asmatic[oa])\b")
RELATION_RX = _rx(rf"\b(?:mi|mis)\s+(?P<rel>{_alt(RELATIONS)})s?\b")
MIJO_RX = _rx(r"\bmij[oa]\b")
PET_NAMED_RX = _rx(rf"\b(?:mi|mis|un|una|el|la)\s+(?P<animal>{_alt(ANIMALS)})s?\b")
PET_HAVE_RX = _rx(rf"\btengo\s+(?:un|una|dos|tres|mis)\s+(?P<animal>{_alt(ANIMALS)})s?\b")
WAKE_RX = _rx(rf"\bme\s+(?:levanto|despierto)\s+{AT}{TIME}")
BED_RX = _rx(rf"\bme\s+(?:acuesto|duermo|voy\s+a\s+dormir|voy\s+a\s+acostar|meto\s+a\s+la\s+cama)\s+{AT}{TIME}")
# "como a las seis" usually means "at about six": "como" counts as eating only after "yo", "siempre"...
MEAL_RX = _rx(rf"\b(?P<meal>desayuno|almuerzo|(?<=yo )como|(?<=siempre )como|(?<=diario )como|ceno)\s+{AT}{TIME}")
WALK_RX = _rx(r"\b(?:salgo\s+a\s+caminar|camino|voy\s+a\s+caminar|salgo\s+a\s+dar\s+la\s+vuelta)\b[^.!?]{0,30}?"
              r"\b(?P<v>todas\s+las\s+mañanas|todas\s+las\s+tardes|todas\s+las\s+noches|todos\s+los\s+dias|diario|"
              r"cada\s+mañana|cada\s+tarde|en\s+las\s+mañanas|en\s+las\s+tardes)\b")
MASS_RX = _rx(r"\bvoy\s+a\s+(?:misa|la\s+iglesia|la\s+capilla|rezar)\s+(?P<v>(?:los|cada|todos\s+los)\s+"
              r"(?:domingos?|sabados?|dias|lunes|martes|miercoles|jueves|viernes))\b")
LIKE_RX = _rx(r"\b(?:me|nos)\s+(?P<verb>gusta|gustan|encanta|encantan)\s+(?:mucho\s+|muchisimo\s+|bastante\s+)?")
LIKE_OBJECT_RX = _rx(r"[^.,;:!?¿¡]{2,80}")
LIKE_CUT_RX = _rx(r"\s+(?:pero|porque|cuando|aunque|pues|entonces|y\s+(?:me|no|ya|luego|a\s+veces|tambien|eso)|"
                  r"que\s+(?:me|le|nos))\b")
LIKE_EMPTY = frozenset({"eso", "esto", "asi", "mucho", "tambien", "mas", "nada", "todo", "que", "ahi", "aqui",
                        "bien", "igual"})


@dataclass(frozen=True)
class _Found:
    fact_type: str
    key: str
    value: str
    confidence: float
    start: int
    end: int
    # the characters the value was read from (its transcription probability is the fact's);
    # (-1, -1): the whole evidence span
    value_start: int = -1
    value_end: int = -1


def _time_value(m: re.Match[str], kind: str) -> str | None:
    h_raw = m.group("h")
    h = int(h_raw) if h_raw.isdigit() else NUMBERS[h_raw]
    minute = int(m.group("m") or 0)
    frac = (m.group("frac") or "").split()
    if frac[-1:] == ["media"]:
        minute = 30
    elif frac[-2:] == ["y", "cuarto"]:
        minute = 15
    elif frac[-2:] == ["menos", "cuarto"]:
        h, minute = h - 1, 45
    part = (m.group("part") or "").split()[-1:] or [""]
    part = part[0]
    if h > 23 or minute > 59:
        return None
    if h <= 12:
        if part in ("tarde", "noche") and h < 12:
            h += 12
        elif part == "" and kind == "bedtime" and 6 <= h <= 11:
            h += 12
        elif part == "" and kind == "dinner_time" and 5 <= h <= 11:
            h += 12
        elif part == "" and kind == "lunch_time" and 1 <= h <= 6:
            h += 12
    return f"{h % 24:02d}:{minute:02d}"


NAMED_RX = re.compile(r"\s*,?\s*(?:que\s+)?se\s+llama(?:n|ba|ban)?\s+", re.IGNORECASE)
GAP_RX = re.compile(r"\s*(?P<comma>,)?\s*")
WORD_AT_RX = re.compile(NAME_ANY)
MORE_RX = re.compile(r"\s*(?:,|\by\b|\be\b)\s*")
FUNCTION_WORDS = frozenset({"el", "la", "los", "las", "un", "una", "que", "y", "pero", "asi", "como", "igual",
                            "muy", "bien", "mi", "su", "este", "esta", "ya", "no", "si", "se", "me", "le", "pues"})


def _name_at(text: str, at: int, lex: Lexicons, *, named: bool) -> tuple[str, int, int, float] | None:
    """The name written at ``at`` as (name, start, end, base confidence), or None.

    A listed given name (exactly, or spelt as it sounds: "Beronica") is a name in any case; a
    capitalised word that is not listed is a less sure name; after "se llama" any word is."""
    m = WORD_AT_RX.match(text, at)
    if m is None or len(m.group(0)) < 2:
        return None
    word = m.group(0)
    folded = fold(word)
    # a listed name the recogniser split in two words ("mi gel" for Miguel): sounds the same only
    second = re.compile(r"\s+(" + NAME_ANY + ")").match(text, m.end())
    if second is not None and len(word) + len(second.group(1)) >= 5:
        joined = lex.name_index.by_sound.get(sound(fold(word + second.group(1))))
        if joined is not None:
            return lex.name_index.forms[joined], m.start(), second.end(), 0.7
    if folded in FUNCTION_WORDS or folded in NOT_NAMES:
        return None
    listed = lex.name(word)
    capital = word[0].isupper()
    if listed is not None and (capital or named or folded not in COMMON_WORD_NAMES):
        base = 0.9 if named else (0.85 if capital else 0.8)
        return listed[0], m.start(), m.end(), base * listed[1] / 100.0
    if named:
        return word[0].upper() + word[1:], m.start(), m.end(), 0.75
    if capital and re.fullmatch(NAME, word):
        return word, m.start(), m.end(), 0.6
    return None


def _names_after(text: str, pos: int, lex: Lexicons) -> list[tuple[str, int, int, float]]:
    """Names written right after ``pos`` ("Rosa", ", Rosa y Carmen", " que se llama rosa",
    " rodrigo") as (name, start, end, confidence). One after a comma is less sure ("ay mi hija,
    Rosa vino" may be a vocative)."""
    m = NAMED_RX.match(text, pos)
    named = m is not None
    if named:
        at, factor = m.end(), 1.0
    else:
        gap = GAP_RX.match(text, pos)
        at, factor = gap.end(), (0.8 if gap.group("comma") else 1.0)
    out: list[tuple[str, int, int, float]] = []
    hit = _name_at(text, at, lex, named=named)
    while hit is not None:
        name, s, e, base = hit
        out.append((name, s, e, base * factor))
        more = MORE_RX.match(text, e)  # more names: "Luis y Pedro", "Rosa, Carmen y Luis"
        if more is None or more.end() == e:
            break
        hit = _name_at(text, more.end(), lex, named=False)
        if hit is not None and not text[hit[1]].isupper() and lex.name(text[hit[1]:hit[2]]) is None:
            break
    return out


PLACE_VERB_RX = _rx(r"\b(?:se\s+(?:fue|fueron|mudo|mudaron|regreso|vino|vinieron|cruzo|paso)|vive|viven|esta|estan|"
                    r"trabaja|trabajan|anda|andan|radica|radican|se\s+quedo|se\s+quedaron)\b"
                    r"(?:\s+\w+){0,3}?\s+(?:a|al|en|para|pa|por|hasta|alla\s+en|alla\s+por|aca\s+en)\s+")
APPT_RX = _rx(r"\b(?:tengo|me\s+toca|me\s+dieron|me\s+pusieron|me\s+hicieron)\s+(?:una\s+|mi\s+|la\s+)?"
              r"(?P<what>cita|consulta|revision|estudios?|analisis|operacion|cirugia|terapia)\b"
              r"(?P<v>[^.;!?]{0,60})")
APPT_WHEN_RX = _rx(r"\b(?:el\s+)?(?:lunes|martes|miercoles|jueves|viernes|sabado|domingo)\b|\bmañana\b|"
                   r"\bpasado\s+mañana\b|\bla\s+(?:proxima|otra)\s+semana\b|\bel\s+\d{1,2}\b|\bel\s+(?:dia|mes)\s+\w+|"
                   r"\bhoy\b|\ben\s+\w+\s+dias\b|\ba\s+las?\s+\w+")


def _scan(text: str, lex: Lexicons | None = None, *, carried_relation: str | None = None) -> list[_Found]:
    """The facts of one utterance. ``carried_relation``: the relative the person was talking
    about at the end of her previous utterance, when this one continues it (an elderly pause in
    the middle of "mi hijo se fue al norte, ... vive en Chicago")."""
    lex = lex or load_lexicons()
    f = fold(text)
    found: list[_Found] = []

    def ok(pos: int) -> bool:
        return not is_negated(f, pos) and not is_question_at(text, pos)

    def conf(base: float, pos: int) -> float:
        return base * (HEDGE_FACTOR if is_hedged(f, pos) else 1.0)

    # medications: the lexicon, approximately; a taking verb before it in the clause is where a
    # negation is looked for ("ya no tomo la metformina")
    for med in lex.medications_in(f, cutoff=MED_FUZZY_WITH_CONTEXT, joined_cutoff=MED_JOINED):
        cs = clause_start(f, med.start)
        sentence = f[max(f.rfind(".", 0, med.start), f.rfind("?", 0, med.start), 0):med.end + 60]
        verbs = list(MED_VERB_RX.finditer(f, cs, med.start))
        context = bool(verbs) or MED_CONTEXT_RX.search(sentence) is not None
        if med.score < MED_FUZZY_ALONE and not context:
            continue
        if " " in f[med.start:med.end] and not verbs and fold(med.value) != f[med.start:med.end]:
            continue  # a name split in words by the recogniser: only right after "tomo"
        at = verbs[-1].start() if verbs else med.start
        if not ok(at) or not ok(med.start):
            continue
        base = (0.9 if verbs else 0.8 if context else 0.65) * (1.0 if med.score >= 100 else med.score / 100.0)
        found.append(_Found("health", "medication", med.value, conf(base, at), at, med.end, med.start, med.end))
    for m in MED_FORM_RX.finditer(f):
        if ok(m.start()):
            base = 0.8 if m.group("verb") else 0.7
            found.append(_Found("health", "medication", " ".join(text[m.start("v"):m.end("v")].lower().split()),
                                conf(base, m.start()), m.start(), m.end(), m.start("v"), m.end("v")))
    for m in COND_RX.finditer(f):
        if ok(m.start()):
            value = CONDITIONS[" ".join(m.group("v").split())]
            found.append(_Found("health", "condition", value, conf(0.85, m.start()), m.start(), m.end(),
                                m.start("v"), m.end("v")))
    # a condition heard slightly wrong ("tengo la preción alta", "diabetis"): the phrases of
    # CONDITIONS approximately, right after a verb of having one
    exact = [(x.start, x.end) for x in found if x.key == "condition"]
    for c in _condition_index().find_all(f, COND_FUZZY):
        if c.score >= 100 and any(a <= c.start < b for a, b in exact):
            continue
        verb = None
        for v in COND_VERB_RX.finditer(f, clause_start(f, c.start), c.start):
            verb = v
        if verb is None or len(f[verb.end():c.start].split()) > 2 or any(a <= c.start < b for a, b in exact):
            continue
        if ok(verb.start()):
            base = 0.85 * c.score / 100.0
            found.append(_Found("health", "condition", c.value, conf(base, verb.start()), verb.start(), c.end,
                                c.start, c.end))
    for m in COND_ADJ_RX.finditer(f):
        if ok(m.start()):
            value = ADJ_CONDITIONS[m.group("v")[:-1]]  # "diabetica" -> "diabetic"
            found.append(_Found("health", "condition", value, conf(0.85, m.start()), m.start(), m.end(),
                                m.start("v"), m.end("v")))
    relations: list[tuple[int, int, str]] = []  # (start, end, relation) of every "mi hija"
    for m in RELATION_RX.finditer(f):
        rel = RELATIONS[m.group("rel")]
        relations.append((m.start(), m.end(), rel))
        for name, s, e, base in _names_after(text, m.end(), lex):
            if not is_question_at(text, m.start()):
                found.append(_Found("family", f"{rel}_name", name, base, m.start(), e, s, e))
    for m in MIJO_RX.finditer(f):  # "mijo Rodrigo": a listed name only (else it is a vocative)
        rel = "son" if m.group(0).endswith("o") else "daughter"
        relations.append((m.start(), m.end(), rel))
        for name, s, e, base in _names_after(text, m.end(), lex):
            if lex.name(text[s:e]) is not None and not is_question_at(text, m.start()):
                found.append(_Found("family", f"{rel}_name", name, base * 0.9, m.start(), e, s, e))
    # where a relative lives or went: a place after "se fue a", "vive en"... in the sentence of a
    # "mi hijo" before it; the most specific place wins ("al norte ... en Chicago" -> Chicago)
    places: dict[str, _Found] = {}
    for m in PLACE_VERB_RX.finditer(f):
        before = [r for r in relations if r[1] <= m.start() and not re.search(r"[.!?]", f[r[1]:m.start()])]
        if not before and carried_relation and not relations and not re.search(r"[.!?]", f[:m.start()]):
            before = [(0, 0, carried_relation)]
        if not before or not ok(m.start()):
            continue
        rel_start, _rel_end, rel = before[-1]
        hit = next(iter(lex.places_in(f, start=m.end(), end=min(len(f), m.end() + 40))), None)
        if hit is None or f[m.end():hit.start].count(" ") > 2:
            continue
        base = 0.8 * hit.score / 100.0
        prev = places.get(rel)
        if prev is None or prev.value == "Estados Unidos":
            places[rel] = _Found("family", f"{rel}_lives_in", hit.value, conf(base, m.start()), rel_start, hit.end,
                                 hit.start, hit.end)
    found.extend(places.values())
    for m in APPT_RX.finditer(f):
        if not ok(m.start()):
            continue
        rest = m.group("v")
        when = APPT_WHEN_RX.search(rest)
        if when is None:
            continue
        end = m.start("v") + when.end()
        value = " ".join(text[m.start("what"):end].split()).rstrip(",")
        found.append(_Found("health", "next_appointment", value, conf(0.75, m.start()), m.start(), end,
                            m.start("what"), end))
    for m in PET_NAMED_RX.finditer(f):
        animal = ANIMALS[m.group("animal")]
        for name, s, e, base in _names_after(text, m.end(), lex):
            if not is_question_at(text, m.start()):
                found.append(_Found("pet", f"{animal}_name", name, base, m.start(), e, s, e))
    for m in PET_HAVE_RX.finditer(f):
        if ok(m.start()):
            found.append(_Found("pet", "pet", m.group("animal"), conf(0.75, m.start()), m.start(), m.end(),
                                m.start("animal"), m.end("animal")))
    for rx, kind in ((WAKE_RX, "wake_up_time"), (BED_RX, "bedtime")):
        for m in rx.finditer(f):
            value = _time_value(m, kind)
            if value and ok(m.start()):
                found.append(_Found("routine", kind, value, conf(0.8, m.start()), m.start(), m.end(),
                                    m.start("h"), m.end()))
    for m in MEAL_RX.finditer(f):
        kind = {"desayuno": "breakfast_time", "almuerzo": "lunch_time", "como": "lunch_time",
                "ceno": "dinner_time"}[m.group("meal")]
        value = _time_value(m, kind)
        if value and ok(m.start()):
            found.append(_Found("routine", kind, value, conf(0.7, m.start()), m.start(), m.end(), m.start("h"), m.end()))
    for m in WALK_RX.finditer(f):
        if ok(m.start()):
            found.append(_Found("routine", "walk", " ".join(text[m.start("v"):m.end("v")].lower().split()),
                                conf(0.75, m.start()), m.start(), m.end(), m.start("v"), m.end("v")))
    for m in MASS_RX.finditer(f):
        if ok(m.start()):
            found.append(_Found("routine", "mass_attendance", " ".join(text[m.start("v"):m.end("v")].lower().split()),
                                conf(0.75, m.start()), m.start(), m.end(), m.start("v"), m.end("v")))
    for m in LIKE_RX.finditer(f):
        if is_question_at(text, m.start()):
            continue
        obj = LIKE_OBJECT_RX.match(f, m.end())
        if obj is None:
            continue
        v_start, v_end = obj.start(), obj.end()
        cut = LIKE_CUT_RX.search(f, v_start, v_end)
        if cut:
            v_end = cut.start()
        words = text[v_start:v_end].split()
        while words and fold(words[0]) in ("el", "la", "los", "las", "un", "una", "mucho", "mucha", "muy"):
            v_start = text.index(words[0], v_start) + len(words[0])
            words.pop(0)
        words = words[:6]
        value = " ".join(words).strip().lower().rstrip(".,;:!?")
        if not value or fold(value) in LIKE_EMPTY:
            continue
        key = "dislikes" if is_negated(f, m.start()) else "likes"
        # an open value (no list to check it against): a doubtful transcription of it falls
        # under the minimum sooner than a listed medication or name
        base = 0.75 if m.group("verb").startswith("encant") else 0.7
        end = v_start + len(text[v_start:v_end].rstrip())
        found.append(_Found("preference", key, value, conf(base, m.start()), m.start(), end, v_start, end))
    return found


# Keys a person can hold several values of at once (two medications, three daughters): the key
# gets a slug of the value ("medication.metformina", "daughter_name.rosa"), so that storing one
# does not expire another (user_facts keeps one active value per (type, key)). Keys not listed
# here are single-valued ("wake_up_time", "next_appointment"): a newer value replaces the older
# one. Every "*_name" and "*_lives_in" key is multi-valued too (two sons in two cities).
MULTI_VALUED = frozenset({"medication", "condition", "likes", "dislikes", "pet", "allergy"})
MULTI_VALUED_SUFFIXES = ("_name", "_lives_in")
# Classes the fact store protects (lupita.facts.is_protected): the analyzer alone never closes
# them, and the local rules state them only from the person's own affirmative words.
PROTECTED = frozenset({"medication", "allergy", "condition", "diagnosis"})
PROTECTED_PREFIXES = ("emergency_contact",)


def slug(value: str, limit: int = 40) -> str:
    """Lower-case ASCII snake_case of a value ("Café de olla" -> "cafe_de_olla")."""
    s = re.sub(r"[^a-z0-9]+", "_", fold(value).replace("ñ", "n")).strip("_")
    return s[:limit].rstrip("_") or "x"


def fact_key(key: str, value: str) -> str:
    """The stored key: multi-valued keys (see :data:`MULTI_VALUED`, every ``*_name`` and
    ``*_lives_in``) carry the value's slug; a key that already has one keeps it."""
    base, dot, _item = key.partition(".")
    if dot:
        return key
    if base in MULTI_VALUED or base.endswith(MULTI_VALUED_SUFFIXES):
        return f"{base}.{slug(value)}"
    return key


def is_protected(key: str) -> bool:
    base = key.partition(".")[0]
    return base in PROTECTED or base.startswith(PROTECTED_PREFIXES)


Words = Sequence[tuple[str, "float | None"]]


def word_spans(text: str, words: Words | None) -> list[tuple[int, int, float]]:
    """Character range in ``text`` of each transcript word that has a probability, in order
    (Whisper's words, joined, are the text: each is looked for after the previous one). A word
    not found in the text, or whose probability is missing or not a number in [0, 1], is left
    out (the utterance's confidence then stands for it)."""
    out: list[tuple[int, int, float]] = []
    if not words:
        return out
    pos = 0
    for word, p in words:
        w = str(word).strip()
        if not w:
            continue
        i = text.find(w, pos)
        if i < 0:
            continue
        pos = i + len(w)
        if isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0:  # NaN fails too
            out.append((i, pos, float(p)))
    return out


def span_probability(spans: list[tuple[int, int, float]], start: int, end: int) -> float | None:
    """Mean probability of the transcript words overlapping ``[start, end)`` (None: no word)."""
    ps = [p for s, e, p in spans if s < end and e > start]
    return sum(ps) / len(ps) if ps else None


def transcription_factor(p: float) -> float:
    """How much a fact's confidence keeps when its words were heard with probability ``p``."""
    return WORD_FLOOR + (1.0 - WORD_FLOOR) * min(1.0, max(0.0, p))


def extract_facts(utterances: Iterable[Utterance], words: Mapping[tuple[str, int], Words] | None = None, *,
                  lexicons: Lexicons | None = None, min_confidence: float = 0.0) -> list[UserFact]:
    """Facts from the person's leg (other legs are skipped), deduplicated on (type, key, value):
    the most confident statement wins, the earliest on a tie. ``words``: each utterance's
    transcript words with their probabilities, by (leg, seq). Facts below ``min_confidence``
    are dropped."""
    lex = lexicons or load_lexicons()
    best: dict[tuple[str, str, str], UserFact] = {}
    order: list[tuple[str, str, str]] = []
    carried: str | None = None  # the relative the person's last utterance ended on
    for u in sorted(utterances, key=lambda u: u.start_s):
        if u.leg != "person":
            if u.text.strip():
                carried = None  # Lupita spoke: the person's next words start anew
            continue
        if not u.text.strip():
            continue
        asr = 1.0 if u.confidence is None else min(1.0, max(0.0, float(u.confidence)))
        spans = word_spans(u.text, (words or {}).get((u.leg, u.seq)))
        scanned = _scan(u.text, lex, carried_relation=carried)
        carried = _last_relation(u.text)
        for x in scanned:
            vs, ve = (x.value_start, x.value_end) if x.value_start >= 0 else (x.start, x.end)
            p = span_probability(spans, vs, ve)
            confidence = round(min(1.0, x.confidence * transcription_factor(asr if p is None else p)), 3)
            if confidence < min_confidence:
                continue
            evidence = EvidenceSpan(leg=u.leg, seq=u.seq, start_s=u.start_s, end_s=u.end_s, text=u.text,
                                    char_start=x.start, char_end=x.end)
            key = fact_key(x.key, x.value)
            fact = UserFact(fact_type=x.fact_type, key=key, value=x.value, confidence=confidence,
                            evidence=evidence)
            k = (x.fact_type, key, fold(x.value))
            if k not in best:
                order.append(k)
                best[k] = fact
            elif confidence > best[k].confidence:
                best[k] = fact
    # "se fue al norte" then "vive en Chicago": the country is implied by the city
    specific = {k[1].split(".")[0] for k in order if "_lives_in." in k[1] and best[k].value != "Estados Unidos"}
    return [best[k] for k in order
            if not ("_lives_in." in k[1] and best[k].value == "Estados Unidos" and k[1].split(".")[0] in specific)]


def _last_relation(text: str) -> str | None:
    """The relation of the last "mi hija"/"mi nieto" of ``text`` when the utterance ends inside
    the sentence about that relative (it ends on a comma, "...", or no punctuation), else None."""
    f = fold(text).rstrip()
    last = None
    for m in RELATION_RX.finditer(f):
        last = m
    if last is None or re.search(r"[.!?]", f[last.end():].rstrip(" .!?…")):
        return None
    if f.endswith((".", "!", "?")) and not f.endswith(("...", "…")):
        return None  # the sentence ended with the segment ("Mi nieta ya está grande.")
    return RELATIONS[last.group("rel")]


def _value_in(text: str, value: str, start: int, end: int) -> tuple[int, int]:
    """The characters of ``value`` inside the quote ``text[start:end]`` (folded, or the value's
    last word: "Miguel" in "Mi hijo Miguel"), else the whole quote: the words a fact rests on."""
    f = fold(text)
    for needle in (fold(value).strip(), (fold(value).split() or [""])[-1]):
        if len(needle) >= 2:
            i = f.find(needle, start, end)
            if i >= 0:
                return i, i + len(needle)
    return start, end


def calibrate_facts(facts: Iterable[UserFact], words: Mapping[tuple[str, int], Words] | None = None, *,
                    min_confidence: float = 0.0) -> tuple[list[UserFact], list[str]]:
    """The rules every backend's facts go through before the fact store (the cloud backend's
    facts; the local rules apply the same ones as they extract):

    - the key is canonical (:func:`fact_key`: ``medication`` + "Metformina" -> ``medication.metformina``);
    - a protected class (medication, allergy, condition, diagnosis, emergency contact) is a fact
      only when it rests on the person's own words (evidence on the person's leg);
    - the confidence is scaled by the transcription probability of the words of the value inside
      the quote (the whole quote when the value is not written in it: a corrected spelling)
      (:func:`transcription_factor`), and a fact below ``min_confidence`` is dropped.

    Returns the facts kept and one note per kind of fact dropped."""
    kept: list[UserFact] = []
    dropped: dict[str, int] = {}
    for f in facts:
        ev = f.evidence
        key = fact_key(f.key, f.value)
        if is_protected(key) and (ev is None or ev.leg != "person"):
            dropped["protected class not said by the person"] = dropped.get("protected class not said by the person", 0) + 1
            continue
        confidence = f.confidence
        if ev is not None:
            spans = word_spans(ev.text, (words or {}).get((ev.leg, ev.seq)))
            vs, ve = _value_in(ev.text, f.value, ev.char_start, ev.char_end)
            p = span_probability(spans, vs, ve)
            if p is not None:
                confidence = round(min(1.0, confidence * transcription_factor(p)), 3)
        if confidence < min_confidence:
            dropped["below the minimum confidence"] = dropped.get("below the minimum confidence", 0) + 1
            continue
        kept.append(UserFact(fact_type=f.fact_type, key=key, value=f.value, confidence=confidence, evidence=ev))
    return kept, [f"facts dropped ({why}): {n}" for why, n in dropped.items()]
