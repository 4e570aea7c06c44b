"""User facts from the person's own words, by Spanish patterns (the local analyzer's rules).

What it finds (first person, affirmative statements only):

=========== ======================= ==============================================================
type        key                     from, e.g.
=========== ======================= ==============================================================
health      medication.<slug>       "tomo metformina", "me tomo mi pastilla de la presión"
health      condition.<slug>        "tengo diabetes", "tengo azúcar", "soy hipertensa",
                                    "me diagnosticaron artritis" (value normalised: "diabetes")
family      <relation>_name.<slug>  "mi hija Rosa", "mi nieto, que se llama Juan", "mis hijos Luis
                                    y Pedro" (daughter_name, grandson_name, son_name, ...)
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
Confidence = the rule's base confidence x (0.5 + 0.5 x the utterance's ASR confidence).
The evidence span is the utterance with the character range of the words that gave the fact.

Limits: names are recognised only when the transcript capitalises them (or after "se llama");
the statement must be in the first person (what the person says about a relative's health is
not a fact about the person); one clause at a time, no coreference ("ella se llama Rosa"
after "mi hija" is missed); a fixed list of conditions and medications.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from stream_processor.models.analyzer.text import fold, is_hedged, is_negated, is_question_at
from stream_processor.contracts import EvidenceSpan, UserFact, Utterance

HEDGE_FACTOR = 0.6

MEDICATIONS = (
    "metformina", "insulina", "losartan", "enalapril", "captopril", "omeprazol", "paracetamol", "aspirina",
    "glibenclamida", "atorvastatina", "simvastatina", "pravastatina", "levotiroxina", "naproxeno", "diclofenaco",
    "ibuprofeno", "amlodipino", "nifedipino", "clonazepam", "sertralina", "fluoxetina", "furosemida",
    "hidroclorotiazida", "metoprolol", "propranolol", "alopurinol", "ranitidina", "complejo b", "sitagliptina",
    "glimepirida", "warfarina", "clopidogrel", "tramadol", "ketorolaco", "pioglitazona", "telmisartan",
)
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


MED_NAME_RX = _rx(r"\b(?:tomo|me\s+tomo|estoy\s+tomando|me\s+estoy\s+tomando|me\s+pongo|me\s+inyecto|uso|"
                  r"me\s+recetaron|me\s+dieron)\s+(?:(?:la|el|mi|mis|unas?|su|sus|diario|todos\s+los\s+dias)\s+)*"
                  rf"(?:{MED_FORMS}\s+(?:de\s+)?)?(?P<v>{_alt(MEDICATIONS)})\b")
MED_FORM_RX = _rx(r"\b(?:(?P<verb>tomo|me\s+tomo|estoy\s+tomando|me\s+estoy\s+tomando|me\s+recetaron)\s+)?"
                  rf"(?:mi|mis|la|las|una|unas|su|sus)\s+(?P<v>{MED_FORMS}\s+(?:de|para)\s+{MED_PURPOSES})\b")
COND_RX = _rx(r"\b(?:tengo|padezco(?:\s+de)?|sufro(?:\s+de)?|me\s+diagnosticaron|me\s+detectaron|me\s+salio|"
              r"me\s+encontraron|ando\s+con|estoy\s+enferm[ao]\s+de|soy\s+enferm[ao]\s+de)\s+"
              r"(?:(?:un|una|de|del)\s+)?"
              rf"(?P<v>{_alt(CONDITIONS)})\b")
COND_ADJ_RX = _rx(r"\bsoy\s+(?P<v>diabetic[oa]|hipertens[oa]|asmatic[oa])\b")
RELATION_RX = _rx(rf"\b(?:mi|mis)\s+(?P<rel>{_alt(RELATIONS)})s?\b")
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
FUNCTION_WORDS = frozenset({"el", "la", "los", "las", "un", "una", "que", "y", "pero", "asi", "como", "igual",
                            "muy", "bien", "mi", "su", "este", "esta", "ya", "no", "si", "se", "me", "le", "pues"})


def _names_after(text: str, pos: int) -> list[tuple[str, int, int, float]]:
    """Names written right after ``pos`` ("Rosa", ", Rosa y Carmen", " que se llama rosa") as
    (name, start, end, confidence). Without "se llama" a name must be capitalised in the
    transcript, and one after a comma is less sure ("ay mi hija, Rosa vino" may be a vocative)."""
    m = NAMED_RX.match(text, pos)
    if m is not None:
        at, word, confidence, stop = m.end(), NAME_ANY, 0.9, FUNCTION_WORDS
    else:
        gap = GAP_RX.match(text, pos)
        at, word, stop = gap.end(), NAME, NOT_NAMES
        confidence = 0.7 if gap.group("comma") else 0.85
    first = re.compile(word).match(text, at)
    out: list[tuple[str, int, int, float]] = []
    while first is not None:
        name = first.group(0)
        if fold(name) in stop or len(name) < 2:
            break
        out.append((name[0].upper() + name[1:], first.start(), first.end(), confidence))
        # more names: "Luis y Pedro", "Rosa, Carmen y Luis" (capitalised, whatever introduced the first)
        more = re.compile(rf"\s*(?:,|\by\b|\be\b)\s*(?={NAME})").match(text, first.end())
        if more is None:
            break
        first = re.compile(NAME).match(text, more.end())
        stop = NOT_NAMES
    return out


def _scan(text: str) -> list[_Found]:
    f = fold(text)
    found: list[_Found] = []

    def ok(pos: int) -> bool:
        return not is_negated(f, pos) and not is_question_at(text, pos)

    def conf(base: float, pos: int) -> float:
        return base * (HEDGE_FACTOR if is_hedged(f, pos) else 1.0)

    for m in MED_NAME_RX.finditer(f):
        if ok(m.start()):
            found.append(_Found("health", "medication", text[m.start("v"):m.end("v")].lower(),
                                conf(0.9, m.start()), m.start(), m.end()))
    for m in MED_FORM_RX.finditer(f):
        if ok(m.start()):
            base = 0.8 if m.group("verb") else 0.7
            found.append(_Found("health", "medication", " ".join(text[m.start("v"):m.end("v")].lower().split()),
                                conf(base, m.start()), m.start(), m.end()))
    for m in COND_RX.finditer(f):
        if ok(m.start()):
            value = CONDITIONS[" ".join(m.group("v").split())]
            found.append(_Found("health", "condition", value, conf(0.85, m.start()), m.start(), m.end()))
    for m in COND_ADJ_RX.finditer(f):
        if ok(m.start()):
            value = ADJ_CONDITIONS[m.group("v")[:-1]]  # "diabetica" -> "diabetic"
            found.append(_Found("health", "condition", value, conf(0.85, m.start()), m.start(), m.end()))
    for m in RELATION_RX.finditer(f):
        rel = RELATIONS[m.group("rel")]
        for name, _s, e, base in _names_after(text, m.end()):
            if not is_question_at(text, m.start()):
                found.append(_Found("family", f"{rel}_name", name, base, m.start(), e))
    for m in PET_NAMED_RX.finditer(f):
        animal = ANIMALS[m.group("animal")]
        for name, _s, e, base in _names_after(text, m.end()):
            if not is_question_at(text, m.start()):
                found.append(_Found("pet", f"{animal}_name", name, base, m.start(), e))
    for m in PET_HAVE_RX.finditer(f):
        if ok(m.start()):
            found.append(_Found("pet", "pet", m.group("animal"), conf(0.75, m.start()), m.start(), m.end()))
    for rx, kind in ((WAKE_RX, "wake_up_time"), (BED_RX, "bedtime")):
        for m in rx.finditer(f):
            value = _time_value(m, kind)
            if value and ok(m.start()):
                found.append(_Found("routine", kind, value, conf(0.8, m.start()), m.start(), m.end()))
    for m in MEAL_RX.finditer(f):
        kind = {"desayuno": "breakfast_time", "almuerzo": "lunch_time", "como": "lunch_time",
                "ceno": "dinner_time"}[m.group("meal")]
        value = _time_value(m, kind)
        if value and ok(m.start()):
            found.append(_Found("routine", kind, value, conf(0.7, m.start()), m.start(), m.end()))
    for m in WALK_RX.finditer(f):
        if ok(m.start()):
            found.append(_Found("routine", "walk", " ".join(text[m.start("v"):m.end("v")].lower().split()),
                                conf(0.75, m.start()), m.start(), m.end()))
    for m in MASS_RX.finditer(f):
        if ok(m.start()):
            found.append(_Found("routine", "mass_attendance", " ".join(text[m.start("v"):m.end("v")].lower().split()),
                                conf(0.75, m.start()), m.start(), m.end()))
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
            words.pop(0)
        words = words[:6]
        value = " ".join(words).strip().lower()
        if not value or fold(value) in LIKE_EMPTY:
            continue
        key = "dislikes" if is_negated(f, m.start()) else "likes"
        base = 0.8 if m.group("verb").startswith("encant") else 0.75
        end = v_start + len(text[v_start:v_end].rstrip())
        found.append(_Found("preference", key, value, conf(base, m.start()), m.start(), end))
    return found


# Keys a person can hold several values of at once (two medications, three daughters): the key
# gets a slug of the value ("medication.metformina", "daughter_name.rosa"), so that storing one
# does not expire another (user_facts keeps one active value per (type, key)). Keys not listed
# here are single-valued ("wake_up_time"): a newer value replaces the older one.
MULTI_VALUED = frozenset({"medication", "condition", "likes", "dislikes", "pet"})


def slug(value: str, limit: int = 40) -> str:
    """Lower-case ASCII snake_case of a value ("Café de olla" -> "cafe_de_olla")."""
    s = re.sub(r"[^a-z0-9]+", "_", fold(value).replace("ñ", "n")).strip("_")
    return s[:limit].rstrip("_") or "x"


def fact_key(key: str, value: str) -> str:
    """The stored key: multi-valued keys (see :data:`MULTI_VALUED`, and every ``*_name``) carry
    the value's slug."""
    if key in MULTI_VALUED or key.endswith("_name"):
        return f"{key}.{slug(value)}"
    return key


def extract_facts(utterances: Iterable[Utterance]) -> list[UserFact]:
    """Facts from the person's leg (other legs are skipped), deduplicated on (type, key, value):
    the most confident statement wins, the earliest on a tie."""
    best: dict[tuple[str, str, str], UserFact] = {}
    order: list[tuple[str, str, str]] = []
    for u in utterances:
        if u.leg != "person" or not u.text.strip():
            continue
        asr = 1.0 if u.confidence is None else min(1.0, max(0.0, float(u.confidence)))
        for x in _scan(u.text):
            confidence = round(min(1.0, x.confidence * (0.5 + 0.5 * asr)), 3)
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
    return [best[k] for k in order]
