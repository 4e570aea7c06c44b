"""Spoken Spanish labels of fact keys for the agent's brief ("medicamento: metformina 850", not
"salud, medication.metformina: metformina 850").

A key's label comes from its base (the part before the ``.<slug>`` of multi-valued keys: the value
already says the item), looked up in these tables, which are data:

1. :data:`KEY_ES`, whole bases (``medication`` → "medicamento", ``wake_up_time`` → "hora de levantarse");
2. a ``<who>_<suffix>`` base, ``who`` in :data:`WHO_ES` (the analyzer's relations and animals) and the
   suffix in :data:`SUFFIX_ES` (``daughter_name`` → "hija", ``son_lives_in`` → "hijo vive en",
   ``dog_name`` → "perro");
3. otherwise no label (:func:`fact_label` gives ``None``): the brief then says the fact's type and the
   base with spaces ("salud, blood type"), as before — a key the tables do not know is still said.
"""

from __future__ import annotations

# whole key bases: lupita.facts (MULTI_VALUED_BASES, PROTECTED_*) and the analyzer's rules
KEY_ES: dict[str, str] = {
    "medication": "medicamento",
    "allergy": "alergia",
    "condition": "padecimiento",
    "diagnosis": "diagnóstico",
    "emergency_contact": "contacto de emergencia",
    "emergency_contact_name": "contacto de emergencia",
    "emergency_contact_relation": "parentesco del contacto de emergencia",
    "next_appointment": "próxima cita",
    "doctor": "su médico",
    "doctor_name": "su médico",
    "wake_up_time": "hora de levantarse",
    "bedtime": "hora de dormir",
    "breakfast_time": "hora del desayuno",
    "lunch_time": "hora de la comida",
    "dinner_time": "hora de la cena",
    "walk": "sale a caminar",
    "mass_attendance": "misa",
    "likes": "le gusta",
    "dislikes": "no le gusta",
    "hobby": "pasatiempo",
    "visitor": "le visita",
    "pet": "mascota",
    "pet_name": "mascota",
    "child": "hijo o hija",
    "grandchild": "nieto o nieta",
    "name": "nombre",
    "preferred_name": "cómo le gusta que le digan",
    "nickname": "apodo",
    "birthday": "cumpleaños",
    "age": "edad",
    "city": "ciudad",
    "hometown": "tierra natal",
    "lives_with": "vive con",
    "occupation": "oficio",
    "former_occupation": "trabajó de",
    "religion": "religión",
    "favorite_music": "música favorita",
    "favorite_food": "comida favorita",
    "language": "idioma",
}

# <who> of "<who>_name", "<who>_lives_in": the analyzer's relations and animals
# (stream_processor/models/analyzer/facts.py RELATIONS, ANIMALS) and a few more
WHO_ES: dict[str, str] = {
    "daughter": "hija", "son": "hijo", "granddaughter": "nieta", "grandson": "nieto",
    "great_granddaughter": "bisnieta", "great_grandson": "bisnieto", "husband": "esposo", "wife": "esposa",
    "sister": "hermana", "brother": "hermano", "niece": "sobrina", "nephew": "sobrino",
    "daughter_in_law": "nuera", "son_in_law": "yerno", "comadre": "comadre", "compadre": "compadre",
    "neighbor": "vecino o vecina", "friend": "amistad", "cousin": "primo o prima",
    "sister_in_law": "cuñada", "brother_in_law": "cuñado", "mother": "mamá", "father": "papá",
    "child": "hijo o hija", "grandchild": "nieto o nieta", "partner": "pareja", "caregiver": "quien le cuida",
    "dog": "perro", "cat": "gato", "bird": "pájaro", "donkey": "burro", "horse": "caballo", "goat": "chivo",
    "pet": "mascota",
}

# "<who><suffix>": how the label is said, {} = the who
SUFFIX_ES: dict[str, str] = {
    "_name": "{}",
    "_lives_in": "{} vive en",
    "_birthday": "cumpleaños de {}",
    "_phone": "teléfono de {}",
}


def fact_label(key: str) -> str | None:
    """The spoken label of a fact key (its base), or ``None`` when the tables do not know it."""
    base = key.partition(".")[0]
    label = KEY_ES.get(base)
    if label is not None:
        return label
    for suffix, say in SUFFIX_ES.items():
        if base.endswith(suffix):
            who = WHO_ES.get(base[: -len(suffix)])
            if who is not None:
                return say.format(who)
    return None
