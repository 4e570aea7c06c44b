"""Pure logic of the context API: phone numbers, spoken times, the brief, the HMAC check."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from context_api import auth
from context_api.context import MINIMAL_BRIEF, UNKNOWN_BRIEF, brief, build, empty
from context_api.phones import InvalidPhone, to_e164
from context_api.store import Snapshot
from context_api.when import check_horizon, parse_when, say_ago

TZ = ZoneInfo("America/Mexico_City")
# Wednesday 2 December 2026, 09:00 in Mexico City
NOW = datetime(2026, 12, 2, 9, 0, tzinfo=TZ)


@pytest.mark.parametrize("typed", [
    "+52 951 555 0142", "+529515550142", "951 555 0142", "(951) 555-0142", "951.555.0142", "9515550142",
    "52 951 555 0142", "0052 951 555 0142", "+52 1 951 555 0142", "521 951 555 0142",
    "044 951 555 0142", "045 951 555 0142", "01 951 555 0142",
])
def test_mexican_numbers_in_every_typed_form_are_one_e164(typed):
    assert to_e164(typed) == "+529515550142"


@pytest.mark.parametrize("typed", ["+1 (202) 555-0142", "1-202-555-0142", "001 202 555 0142", "+12025550142"])
def test_us_numbers_need_their_country_code(typed):
    assert to_e164(typed) == "+12025550142"


@pytest.mark.parametrize("typed", ["", "   ", "12", "abc", "+44 20 7946 0958", "+52 000", "9" * 30, None, 5215512345678,
                                   "+52 951 555 0142" + " " * 40])
def test_invalid_or_foreign_numbers_are_refused_without_echoing_them(typed):
    with pytest.raises(InvalidPhone) as info:
        to_e164(typed)
    assert "951" not in str(info.value) and "7946" not in str(info.value)


@pytest.mark.parametrize("said, expected", [
    ("el jueves a las cinco de la tarde", datetime(2026, 12, 3, 17, 0, tzinfo=TZ)),
    ("mañana temprano", datetime(2026, 12, 3, 9, 0, tzinfo=TZ)),
    ("en dos horas", datetime(2026, 12, 2, 11, 0, tzinfo=TZ)),
    ("mañana a las 9", datetime(2026, 12, 3, 9, 0, tzinfo=TZ)),
    ("pasado mañana a las 10", datetime(2026, 12, 4, 10, 0, tzinfo=TZ)),
    ("el viernes a las diez y media de la mañana", datetime(2026, 12, 4, 10, 30, tzinfo=TZ)),
    ("hoy a las 8 de la noche", datetime(2026, 12, 2, 20, 0, tzinfo=TZ)),
    ("el lunes", datetime(2026, 12, 7, 10, 0, tzinfo=TZ)),
    ("el 5 de diciembre a las 4 de la tarde", datetime(2026, 12, 5, 16, 0, tzinfo=TZ)),
    ("2026-12-05T10:00:00-06:00", datetime(2026, 12, 5, 10, 0, tzinfo=TZ)),
    ("2026-12-05T16:00:00Z", datetime(2026, 12, 5, 10, 0, tzinfo=TZ)),
])
def test_spanish_and_iso_times_in_the_persons_zone(said, expected):
    assert parse_when(said, TZ, NOW) == expected


@pytest.mark.parametrize("said", ["blabla", "", "a las 25", "x" * 200])
def test_unreadable_times_are_none(said):
    assert parse_when(said, TZ, NOW) is None


def test_horizon_refuses_the_past_and_far_future_with_a_sentence():
    kw = {"min_lead": timedelta(minutes=5), "max_ahead": timedelta(days=60)}
    assert check_horizon(NOW + timedelta(hours=1), NOW, **kw) is None
    assert "pasó" in check_horizon(NOW - timedelta(days=1), NOW, **kw)
    assert "60 días" in check_horizon(NOW + timedelta(days=90), NOW, **kw)


def test_dates_in_the_persons_words():
    assert say_ago(NOW - timedelta(hours=2), NOW, TZ) == "hoy"
    assert say_ago(NOW - timedelta(days=1), NOW, TZ) == "ayer"
    assert say_ago(NOW - timedelta(days=3), NOW, TZ).startswith("hace 3 días")
    assert say_ago(NOW - timedelta(days=15), NOW, TZ) == "hace 2 semanas"


def _snapshot(n_facts: int) -> Snapshot:
    at = datetime(2026, 11, 29, 10, 0, tzinfo=timezone.utc)
    facts = [{"fact_type": "health", "fact_key": f"medication.m{i}", "fact_value": f"medicina número {i}",
              "confidence": 0.9, "source": "analysis", "observed_at": at} for i in range(n_facts)]
    calls = [{"call_id": "c1", "started_at": at, "ended_at": at, "summary": "Habló de su nieta.\nEstaba contenta.",
              "emotion_primary": "positive", "topics": ["family"]}]
    alerts = [{"call_id": "c1", "cue_id": "fall", "severity": "high", "text": "me caí en el baño", "raised_at": at}]
    return Snapshot(facts, calls, alerts, [])


@pytest.mark.parametrize("budget", [200, 400, 1200])
def test_the_brief_is_one_line_within_its_budget(budget):
    ctx, text = build(_snapshot(50), NOW, TZ, budget)
    assert ctx["known"] and len(ctx["facts"]) == 50
    assert len(text) <= budget and "\n" not in text
    assert text.startswith("Pendiente de seguimiento: hace 3 días")  # alerts first, in the person's words
    assert "me caí en el baño" in text


def test_an_unknown_person_gets_a_well_formed_empty_context():
    ctx, text = build(Snapshot([], [], [], []), NOW, TZ, 1200)
    assert ctx == empty() and text == UNKNOWN_BRIEF
    assert brief(empty(), 1200) == UNKNOWN_BRIEF and MINIMAL_BRIEF


class _S:
    """The HMAC settings of the check (only what auth reads)."""

    def __init__(self, **kw):
        self.context_api_auth_mode = "hmac"
        self.context_api_hmac_signature_header = "x-signature"
        self.context_api_hmac_timestamp_header = "x-timestamp"
        self.context_api_hmac_algorithm = kw.get("algorithm", "sha256")
        self.context_api_hmac_encoding = kw.get("encoding", "hex")
        self.context_api_hmac_prefix = kw.get("prefix", "")
        self.context_api_hmac_max_age_seconds = 300
        from pydantic import SecretStr

        self.context_api_hmac_secret = SecretStr("s3cret-s3cret-s3cret")


@pytest.mark.parametrize("algorithm, encoding, prefix", [("sha256", "hex", ""), ("sha512", "base64", "sha512="),
                                                         ("sha256", "base64", "v1=")])
def test_hmac_good_bad_and_stale(algorithm, encoding, prefix):
    s = _S(algorithm=algorithm, encoding=encoding, prefix=prefix)
    body, now = b'{"message":{"type":"x"}}', 1_800_000_000.0
    for stamp in (str(int(now)), str(int(now * 1000))):  # seconds or milliseconds
        sig = auth.sign("s3cret-s3cret-s3cret", algorithm, stamp, body, encoding, prefix)
        auth.check(s, {"x-signature": sig, "x-timestamp": stamp}, body, now=now)
        with pytest.raises(auth.AuthError) as e:
            auth.check(s, {"x-signature": sig, "x-timestamp": stamp}, body + b" ", now=now)
        assert e.value.reason == "auth_bad"
        with pytest.raises(auth.AuthError) as e:
            auth.check(s, {"x-signature": sig, "x-timestamp": stamp}, body, now=now + 301)
        assert e.value.reason == "auth_stale"
    with pytest.raises(auth.AuthError) as e:
        auth.check(s, {"x-timestamp": "1"}, body, now=now)
    assert e.value.reason == "auth_missing"


def test_calls_not_analysed_yet_only_say_when():
    at = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
    calls = [{"call_id": f"c{i}", "started_at": at, "ended_at": at, "summary": None, "emotion_primary": None,
              "topics": None} for i in range(2)]
    _, text = build(Snapshot([], calls, [], []), NOW, TZ, 1200)
    assert text == "Últimas llamadas: la más reciente ayer, aún sin resumen."


def test_facts_go_through_the_one_fact_store_without_the_stream_processors_stores():
    import subprocess
    import sys

    import context_api.tools as tools
    from lupita import facts
    from stream_processor.stores import postgres

    assert tools.facts is facts and postgres.facts is facts  # one implementation for both services
    assert tools.FACT_TYPES is facts.FACT_TYPES and tools.KEY_PATTERN is facts.KEY_PATTERN
    # the context API's import no longer drags in the stream processor's stores (Weaviate client)
    out = subprocess.run([sys.executable, "-c", "import sys, context_api.app; print(sorted({m.split('.')[0] for m in "
                          "sys.modules if m.startswith(('weaviate', 'stream_processor', 'faust', 'boto3'))}))"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"

def _full_snapshot() -> Snapshot:
    at = datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc)
    fact = {"id": 1, "fact_type": "health", "fact_key": "medication.metformina", "fact_value": "metformina 850",
            "confidence": 0.9, "source": "agent", "observed_at": at, "protected": True, "observation_count": 2,
            "status": "current"}
    call = {"call_id": "c1", "started_at": at, "ended_at": at, "summary": "Habló de su hijo en el norte.",
            "emotion_primary": "tristeza", "topics": ["migracion"]}
    live = {"call_id": "vapi-x", "cue_id": "fall", "severity": "high", "text": "me caí", "raised_at": at,
            "to_verify": True, "verification": "negador dudoso"}
    past = {"call_id": "c0", "started_at": at - timedelta(days=30), "summary": "Extraña a su hijo.",
            "topics": ["migracion"], "emotion": "tristeza", "similarity": 0.93, "score": 0.6}
    return Snapshot([fact], [call], [dict(live, call_id="c1", cue_id="dizziness")], [],
                    recurring_topics=[{"topic": "migracion", "calls": 3, "last_at": at}],
                    hints={"worked": [{"code": "reminiscencia", "calls": 2, "good": 2}, {"code": "nuevo_codigo",
                                                                                          "calls": 1, "good": 1}],
                           "sensitive_topics": [{"topic": "migracion", "calls": 3, "bad": 2}]},
                    live_alerts=[live], past=[past], degraded={})


def test_the_brief_says_this_calls_alerts_first_then_hints_topics_and_similar_conversations():
    ctx, text = build(_full_snapshot(), NOW, TZ, 1200)
    assert [a["cue"] for a in ctx["this_call_alerts"]] == ["fall"] and ctx["this_call_alerts"][0]["to_verify"]
    assert [h["label"] for h in ctx["behavioral_hints"]["worked"]] == ["invitarle a recordar su pasado", "nuevo codigo"]
    assert ctx["recurring_topics"] == [{"topic": "migracion", "label": "migración", "calls": 3, "last_when": "hace 4 días (sábado)"}]
    assert text.startswith("En esta llamada ya dijo: fall (gravedad alta, por verificar): «me caí»; atiéndelo ahora.")
    order = ["En esta llamada", "Pendiente de seguimiento", "Lo que sabemos", "Le ha funcionado",
             "Temas con tacto (le afectaron): migración (2 de 3 llamadas)", "Temas frecuentes: migración (3 llamadas)",
             "Últimas llamadas", "Conversaciones parecidas: hace un mes: Extraña a su hijo"]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions), text


@pytest.mark.parametrize("budget", [200, 260, 400, 700])
def test_every_section_respects_the_budget(budget):
    _, text = build(_full_snapshot(), NOW, TZ, budget)
    assert len(text) <= budget and "\n" not in text
    assert text.startswith("En esta llamada ya dijo")  # the most urgent part survives the cut


def test_an_empty_context_has_every_key_of_a_full_one():
    ctx, _ = build(_full_snapshot(), NOW, TZ, 1200)
    assert set(empty()) == set(ctx)


def test_consent_for_the_gateway_comes_from_the_calls_metadata_when_it_says_so():
    from context_api.gateway import consent_of_call

    assert consent_of_call({"metadata": {"recordingConsent": True, "consentSource": "ivr_v2"}}) == (True, "ivr_v2")
    assert consent_of_call({"metadata": {"recordingConsent": False}}) == (False, "vapi_call_metadata")
    assert consent_of_call({"metadata": {"recordingConsent": "yes"}}) is None  # only a boolean counts
    assert consent_of_call({}) is None


def test_the_weaviate_query_takes_only_a_hash_and_a_uuid():
    from context_api.past import PastConversations
    from context_api.settings import ContextApiSettings

    past = PastConversations(ContextApiSettings(context_api_assistant_id="t", context_api_bearer_tokens="t"))
    q = past.query("ab" * 32, "6f1c1b8e-3a52-5d6e-9a43-1f0e4a0b7c11", 10)
    assert '{path: ["phone_number_hash"], operator: Equal, valueText: "' + "ab" * 32 + '"}' in q
    for person, anchor in (('x" } } { Get', "6f1c1b8e-3a52-5d6e-9a43-1f0e4a0b7c11"),
                           ("ab" * 32, '6f1c1b8e") { x } #')):
        with pytest.raises(ValueError):
            past.query(person, anchor, 10)


def test_a_gateway_url_needs_its_token():
    from pydantic import ValidationError

    from context_api.settings import ContextApiSettings

    with pytest.raises(ValidationError, match="GATEWAY_TOKEN"):
        ContextApiSettings(context_api_assistant_id="t", context_api_bearer_tokens="t",
                           context_api_gateway_url="http://127.0.0.1:8766")
    with pytest.raises(ValidationError):
        ContextApiSettings(context_api_assistant_id="t", context_api_bearer_tokens="t",
                           context_api_gateway_url="http://127.0.0.1:8766/x?phone=1", context_api_gateway_token="k")


# --- spoken labels of fact keys ---------------------------------------------------------------------


def _fact(i: int, key: str, value: str, fact_type: str = "family", status: str = "current", **kw) -> dict:
    at = datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc)
    return {"id": i, "fact_type": fact_type, "fact_key": key, "fact_value": value, "confidence": 0.9,
            "source": "analyzer", "observed_at": at, "protected": False, "observation_count": 1,
            "status": status, **kw}


def test_the_brief_says_fact_keys_as_spoken_spanish_labels():
    from context_api.labels import fact_label

    assert fact_label("medication.metformina") == "medicamento"
    assert fact_label("daughter_name.rosa") == "hija"
    assert fact_label("pet_name.firulais") == "mascota"
    assert fact_label("dog_name.canelo") == "perro"
    assert fact_label("son_lives_in.chicago") == "hijo vive en"
    assert fact_label("wake_up_time") == "hora de levantarse"
    assert fact_label("blood_type") is None and fact_label("martian_name.x") is None  # no label: fallback
    snap = Snapshot([_fact(1, "medication.metformina", "metformina 850", "health", protected=True),
                     _fact(2, "daughter_name.rosa", "Rosa"), _fact(3, "dog_name.canelo", "Canelo", "pet"),
                     _fact(4, "blood_type", "O+", "health")], [], [], [])
    ctx, text = build(snap, NOW, TZ, 1200)
    assert text == "Lo que sabemos: medicamento: metformina 850; hija: Rosa; perro: Canelo; salud, blood type: O+."
    assert [f["label"] for f in ctx["facts"]] == ["medicamento", "hija", "perro", "blood type"]
    assert "medication" not in text and "daughter" not in text


def test_a_question_to_confirm_says_the_keys_label():
    snap = Snapshot([_fact(1, "wake_up_time", "07:00", "routine", status="to_confirm", current_value="06:00",
                           proposal="value")], [], [], [])
    ctx, _ = build(snap, NOW, TZ, 1200)
    assert ctx["to_confirm"][0]["question"] == "¿Hora de levantarse: sigue siendo 06:00 o ahora es 07:00?"


def test_every_key_base_the_fact_store_and_the_analyzer_make_has_a_label():
    from context_api.labels import fact_label
    from lupita import facts
    from stream_processor.models.analyzer import facts as analyzer

    bases = set(facts.MULTI_VALUED_BASES) | set(facts.PROTECTED_BASES)
    bases |= {f"{rel}_name" for rel in analyzer.RELATIONS.values()} | {f"{rel}_lives_in" for rel in analyzer.RELATIONS.values()}
    bases |= {f"{animal}_name" for animal in analyzer.ANIMALS.values()}
    bases |= {"wake_up_time", "bedtime", "breakfast_time", "lunch_time", "dinner_time", "walk", "mass_attendance",
              "next_appointment"}
    missing = sorted(b for b in bases if fact_label(b) is None)
    assert missing == []


@pytest.mark.parametrize("budget", [200, 260, 400, 700, 1200])
def test_labelled_facts_respect_the_budget(budget):
    keys = ["medication.metformina", "allergy.penicilina", "daughter_name.rosa", "son_lives_in.chicago",
            "dog_name.canelo", "likes.cafe_de_olla", "wake_up_time", "blood_type"]
    snap = Snapshot([_fact(i, keys[i % len(keys)], f"valor número {i} " + "x" * (i % 40)) for i in range(40)], [], [], [])
    _, text = build(snap, NOW, TZ, budget)
    assert len(text) <= budget and "\n" not in text
    assert text.startswith("Lo que sabemos: medicamento: valor número 0")
