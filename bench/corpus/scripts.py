"""The evaluation corpus's scripts, as data: the building blocks of the dialogues and their truth.

A call is put together (``bench/corpus/__init__.py``) from a greeting, two *blocks* and a
farewell. A block is one exchange: Lupita asks (``ask``), the person answers (``say``), sometimes
Lupita reacts (``react``). Every block carries its truth: the facts a person listening would note
(type, key, value: keys without the per-value slug), the topics of the exchange, the behavioral
codes of each leg, the alert cue ids a human would raise, and the names and medication words the
person says. Slots ``{name}`` / ``{rel}`` / ``{med}`` ... are filled from the pools below.

These scripts are the yardstick, not a target: the platform's catalogues must not be edited to
fit these sentences (the issue says it will be tried on calls nobody has seen).
"""

from __future__ import annotations

# --- pools ---------------------------------------------------------------------------------------

PERSONS = (  # how Lupita addresses the person
    "doña Carmen", "doña Rosa", "don José", "doña Juana", "don Pedro", "doña Elena", "doña Lucía", "don Manuel",
    "doña Marta", "don Ernesto", "doña Refugio", "doña Esperanza",
)
# (spoken relation, fact key)
RELATIONS = (
    ("hija", "daughter_name"), ("hijo", "son_name"), ("nieta", "granddaughter_name"),
    ("nieto", "grandson_name"), ("hermana", "sister_name"), ("hermano", "brother_name"),
)
FEMALE_NAMES = ("Teresa", "Sofía", "Patricia", "Ana", "Verónica", "Guadalupe", "Lucía", "Adriana", "Mónica",
                "Claudia", "Gabriela", "Isabel")
MALE_NAMES = ("Rodrigo", "Miguel", "Jorge", "Luis", "Fernando", "Alejandro", "Ricardo", "Javier", "Arturo",
              "Roberto", "Héctor", "Raúl")
CITIES = ("Chicago", "Los Ángeles", "Houston", "Dallas", "Nueva York", "Phoenix")
MEDICATIONS = ("metformina", "losartán", "enalapril", "omeprazol", "atorvastatina", "levotiroxina",
               "amlodipino", "glibenclamida", "naproxeno", "paracetamol", "insulina", "captopril")
DISHES = ("el mole negro", "los tamales de rajas", "el pozole", "las enchiladas verdes", "el caldo de pollo",
          "los chiles rellenos", "el arroz con leche", "las tlayudas")
PETS = (("perrito", "dog_name", "Canelo"), ("gatita", "cat_name", "Michi"), ("perro", "dog_name", "Firulais"),
        ("perrita", "dog_name", "Nena"))
HOURS = (("cinco", "05:00"), ("seis", "06:00"), ("siete", "07:00"), ("cinco y media", "05:30"),
         ("seis y media", "06:30"))

# Fillers and hesitations put in front of some of the person's sentences.
FILLERS = ("Eh... ", "Pues, este... ", "Ay, mire... ", "Mmm, pues ", "Este... ")

# --- greetings and farewells ---------------------------------------------------------------------

GREETINGS = (
    "Buenos días, {person}. Habla Lupita, de Salud Compartida. ¿Cómo amaneció hoy?",
    "Buenas tardes, {person}, soy Lupita. ¿Cómo le ha ido esta semana?",
    "Hola, {person}, le habla Lupita. ¿Cómo se siente hoy?",
)
# (text, lupita codes)
FAREWELLS = (
    ("Muy bien, {person}. La llamo el jueves. Cuídese mucho.", ("compromiso_seguimiento",)),
    ("Gracias por platicar conmigo, {person}. Le marco mañana, ¿sí?", ("compromiso_seguimiento",)),
    ("Que tenga muy buen día, {person}. Hasta luego.", ()),
    ("Cuídese mucho y tome agüita, {person}. Hasta pronto.", ()),
)
PERSON_FAREWELLS = ("Gracias, Lupita. Que Dios te bendiga.", "Sí, mija, hasta luego.", "Ándale pues, gracias.",
                    "Bueno, Lupita, hasta luego.")

# --- blocks with facts (calm) --------------------------------------------------------------------
# Each: ask (Lupita), say (person; several phrasings), react (optional, Lupita), and the truth.
# ``facts`` entries are (type, key, value) with value templated like the text.

FACT_BLOCKS = (
    {"id": "family_call", "ask": "¿Y cómo está su familia? ¿Ha sabido de ellos?",
     "say": ("Sí, mi {rel} {name} me llamó ayer en la tarde. Está muy bien, gracias a Dios.",
             "Pues mi {rel} {name} vino a verme el domingo y me trajo pan.",
             "Mi {rel} {name} me habla todos los días, es muy buena conmigo."),
     "facts": (("family", "{relkey}", "{name}"),), "topics": ("familia",), "names": ("{name}",)},
    {"id": "migration", "ask": "¿Y sus hijos, dónde viven ahora?",
     "say": ("Mi {rel} {name} se fue al norte hace cinco años, vive en {city}. Lo extraño mucho.",
             "Mi {rel} {name} está en Estados Unidos, trabaja allá en {city}. Ya casi no viene.",
             "Pues mi {rel} {name} se fue a {city} a trabajar, y nomás me llama los domingos."),
     "facts": (("family", "{relkey}", "{name}"),), "topics": ("familia", "migracion"),
     # truth added after the audio of corpus version 1 (not part of its rendering key): where the
     # relative lives
     "facts_extra": (("family", "{rel_lives_in}", "{city}"),),
     "codes_person": ("duelo_migratorio",), "names": ("{name}",)},
    {"id": "medication", "ask": "¿Ya se tomó su medicina hoy?",
     "say": ("Sí, tomo {med} dos veces al día, en la mañana y en la noche.",
             "Ya me tomé la {med} con el desayuno, como me dijo el doctor.",
             "Sí, mija. Tomo {med} todos los días, nomás me falta la de la noche."),
     "facts": (("health", "medication", "{med}"),), "topics": ("salud",),
     "codes_lupita": ("recordatorio_medicamento",), "meds": ("{med}",)},
    {"id": "condition", "ask": "¿Y cómo va su salud? ¿Fue al doctor?",
     "say": ("Sí fui. Tengo diabetes y el doctor dice que voy bien, que siga con la dieta.",
             "Pues ahí voy. Tengo la presión alta, pero ya me la controlo.",
             "El doctor me dijo que tengo artritis en las manos, por eso me duelen."),
     "facts_by_say": ((("health", "condition", "diabetes"),), (("health", "condition", "hipertensión"),),
                      (("health", "condition", "artritis"),)),
     "topics": ("salud",)},
    {"id": "food", "ask": "¿Y qué va a comer hoy?",
     "say": ("Me gusta mucho {dish}, hoy voy a hacer para toda la familia.",
             "Hoy hice {dish}. Me encanta {dish}, desde chiquita.",
             "Fui al mercado por las cosas. Me gusta {dish} y eso voy a cocinar."),
     "facts": (("preference", "likes", "{dish_bare}"),), "topics": ("comida",)},
    {"id": "wake_up", "ask": "¿A qué hora se levanta usted?",
     "say": ("Me levanto a las {hour} de la mañana, ya no puedo dormir más.",
             "Yo me levanto a las {hour}, le doy de comer a las gallinas y hago mi café."),
     "facts": (("routine", "wake_up_time", "{hour_value}"),), "topics": ("sueno",)},
    {"id": "mass", "ask": "¿Y sale usted a algún lado en la semana?",
     "say": ("Voy a misa los domingos con mi comadre, y luego desayunamos en el mercado.",
             "Sí, voy a misa todos los domingos, allá en la iglesia del pueblo."),
     "facts_by_say": ((("routine", "mass_attendance", "los domingos"),),
                      (("routine", "mass_attendance", "todos los domingos"),)),
     "topics": ("religion",)},
    {"id": "pet", "ask": "¿Y quién la acompaña en la casa?",
     "say": ("Nomás mi {pet} {pet_name}, que no se me despega.",
             "Tengo a mi {pet} {pet_name}, él me cuida la casa."),
     "facts": (("pet", "{pet_key}", "{pet_name}"),), "topics": (), "names": ("{pet_name}",)},
    {"id": "loneliness", "ask": "¿Y cómo se ha sentido de ánimo?",
     "say": ("Me siento muy sola, Lupita. Nadie me visita desde que se murió mi esposo.",
             "Pues triste. Me siento sola todo el día, no tengo con quién platicar.",
             "Ay, me siento solita. Mis hijos ya no vienen y la casa está muy callada."),
     "react": "Entiendo que se sienta así, debe ser muy difícil. Aquí estoy para escucharla.",
     "facts": (), "topics": ("soledad",), "codes_person": ("expresion_soledad",),
     "codes_lupita": ("validacion_emocional",)},
    {"id": "memories", "ask": "Cuénteme, ¿cómo era su pueblo cuando usted era joven?",
     "say": ("Ay, era muy bonito. Había fiestas, bailábamos en la plaza y todos nos conocíamos.",
             "Era muy tranquilo. Yo iba al río con mis hermanas a lavar la ropa."),
     "facts": (), "topics": ("recuerdos",), "codes_lupita": ("reminiscencia",)},
)

# --- the person's leg: real alert cues, phrased many ways ---------------------------------------
# (text, expected cue ids). Lupita's question before it is neutral; her reaction follows.

ALERT_LINES = (
    ("Anoche me caí en el baño y me pegué en la cadera. Todavía me duele.", ("fall",)),
    ("Ay, Lupita, me resbalé en la cocina ayer en la tarde y me dolió mucho.", ("fall",)),
    ("Se me doblaron las rodillas y quedé en el piso un buen rato.", ("fall",)),
    ("Me fui al suelo cuando salía al patio... y no me podía levantar.", ("fall",)),
    ("Me caí otra vez, me caí en la noche cuando fui al baño.", ("fall",)),
    ("Tengo un dolor en el pecho desde la mañana y no se me quita.", ("chest_pain",)),
    ("Me duele mucho el pecho, como que me aprieta.", ("chest_pain",)),
    ("Siento una presión en el pecho y me duele el brazo izquierdo.", ("chest_pain",)),
    ("Me falta el aire cuando camino, aunque sea poquito.", ("cant_breathe",)),
    ("No puedo respirar bien, siento que me ahogo.", ("cant_breathe",)),
    ("Me cuesta mucho trabajo respirar desde ayer.", ("cant_breathe",)),
    ("No sé dónde estoy, esta no es mi casa.", ("confusion",)),
    ("No reconozco esta casa. No sé cómo llegué aquí.", ("confusion",)),
    ("Estoy muy desorientada, no sé qué día es hoy.", ("confusion",)),
    ("No puedo mover el brazo derecho y se me durmió la cara.", ("stroke_signs",)),
    ("Se me traba la lengua y no me salen las palabras.", ("stroke_signs",)),
    ("Auxilio, necesito una ambulancia, por favor.", ("help_request",)),
    ("Ya no quiero vivir, Lupita. ¿Para qué sigo aquí?", ("suicidal_ideation",)),
    ("Estoy sangrando mucho de la pierna y no para.", ("severe_bleeding",)),
    ("Nadie me da de comer desde ayer, mi nuera no vino.", ("neglect",)),
    ("Ayer me di un golpe muy fuerte, me caí de la escalera.", ("fall",)),
    ("Eh... me duele el pecho, me duele mucho, desde hace un rato.", ("chest_pain",)),
)
ALERT_ASKS = ("¿Y cómo se ha sentido estos días?", "¿Pasó algo desde la última vez que hablamos?",
              "¿Cómo se siente ahorita?")
ALERT_REACTS = ("Ay, lo siento mucho. Voy a avisar a su familia ahorita mismo.",
                "Entiendo. Quédese tranquila, voy a pedir ayuda ahorita.")

# --- the person's leg: false friends (calm calls; no alert expected) -----------------------------
# (text, topics, person codes)

FALSE_FRIENDS = (
    ("Me caí muy bien con la vecina nueva, es muy platicadora.", (), ()),
    ("Me duele que mi hijo no venga a verme, pero ni modo.", ("familia",), ()),
    ("En la noche me caigo de sueño bien temprano.", ("sueno",), ()),
    ("Me muero de risa con las cosas que dice mi nieta.", ("familia",), ()),
    ("Hace muchos años me caí de un caballo, de niña, pero ya ni me acuerdo.", ("recuerdos",), ()),
    ("No me he caído, gracias a Dios, ando con mi bastón.", (), ()),
    ("Me pegó la gripa la semana pasada, pero ya estoy mejor.", ("salud",), ()),
    ("Mi vecina se cayó ayer, pobrecita, yo la fui a ver.", (), ()),
    ("No me falta nada, gracias a Dios, aquí tengo todo.", (), ()),
    ("El doctor me dijo que tengo el corazón muy fuerte.", ("salud",), ()),
    ("No me duele nada, nomás las rodillas cuando hace frío.", ("salud",), ()),
    ("Con este calor me ahogo de calor en la tarde, mejor no salgo.", ("clima",), ()),
)
FALSE_FRIEND_ASKS = ("¿Y qué más me cuenta?", "¿Cómo ha estado?", "¿Qué ha hecho estos días?")
