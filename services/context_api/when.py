"""When to call back: the times the voice agent passes to ``scheduleCallback`` ("el jueves a las
cinco de la tarde", "mañana temprano", "en dos horas", "2026-12-05T10:00:00-06:00") to an aware
datetime in the person's time zone.

``dateparser`` reads ISO times, dates ("5 de diciembre") and relative spans ("en 2 horas",
"dentro de 3 días"), but not the Spanish time of day a person says ("a las cinco de la tarde",
"temprano", "al mediodía") nor "el jueves"; this module reads those itself (number words to
digits, the day, the time of day) and hands the rest of the phrase to ``dateparser`` with the
person's time zone and "now" as its base. A day without a time gets :data:`DEFAULT_HOUR`.

:func:`parse_when` returns ``None`` for what it cannot read; :func:`check_horizon` turns a
datetime in the past or too far ahead into a sentence the agent can say.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import dateparser

DEFAULT_HOUR = 10  # "mañana", "el jueves": mid-morning
MAX_WHEN_CHARS = 100

_NUMBERS = {
    "una": 1, "uno": 1, "un": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7,
    "ocho": 8, "nueve": 9, "diez": 10, "once": 11, "doce": 12, "trece": 13, "catorce": 14,
    "quince": 15, "veinte": 20, "treinta": 30, "cuarenta": 40, "cuarenta y cinco": 45,
}
_WEEKDAYS = {"lunes": 0, "martes": 1, "miercoles": 2, "jueves": 3, "viernes": 4, "sabado": 5, "domingo": 6}
# the part of the day said without a clock time, and what it means
_PARTS = {"temprano": 9, "en la manana": 10, "por la manana": 10, "al mediodia": 12, "mediodia": 12,
          "en la tarde": 16, "por la tarde": 16, "en la noche": 19, "por la noche": 19}

_CLOCK = re.compile(
    r"\b(?:a\s+las?|a\s+eso\s+de\s+las?|como\s+a\s+las?)\s+(\d{1,2})(?::(\d{2}))?"
    r"(\s+y\s+media|\s+y\s+cuarto|\s+menos\s+cuarto)?"
    r"(\s+de\s+la\s+(?:manana|tarde|noche|madrugada)|\s*(?:a\.?\s?m\.?|p\.?\s?m\.?)|\s*h(?:rs|oras)?\b)?"
)
_BARE_CLOCK = re.compile(r"\b(\d{1,2}):(\d{2})\s*(a\.?\s?m\.?|p\.?\s?m\.?)?")
_IN = re.compile(r"\b(?:en|dentro\s+de)\s+(\d+)\s+(minutos?|horas?|dias?|semanas?)\b")


def _fold(text: str) -> str:
    """Lower case, accents off ("mañana" -> "manana"), single spaces."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", text).strip(" .,;")


def _digits(text: str) -> str:
    for word in sorted(_NUMBERS, key=len, reverse=True):
        text = re.sub(rf"\b{word}\b", str(_NUMBERS[word]), text)
    return text


def _hour(h: int, m: int, frac: str | None, part: str | None) -> tuple[int, int] | None:
    if frac:
        frac = frac.strip()
        if frac == "y media":
            m = 30
        elif frac == "y cuarto":
            m = 15
        elif frac == "menos cuarto":
            h, m = h - 1, 45
    part = (part or "").strip().replace(".", "").replace(" ", "")
    if "tarde" in part or "noche" in part or part == "pm":
        if h < 12:
            h += 12
    elif ("manana" in part or "madrugada" in part or part == "am") and h == 12:
        h = 0
    elif not part and 1 <= h <= 7:
        h += 12  # "a las cinco": a person means the afternoon, nobody wants a call at 5 a.m.
    if not (0 <= h <= 23 and 0 <= m <= 59):
        return None
    return h, m


def parse_when(text: str, tz: ZoneInfo, now: datetime) -> datetime | None:
    """``text`` as an aware datetime in ``tz`` (``now`` is aware), or None."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_WHEN_CHARS:
        return None
    local_now = now.astimezone(tz)
    raw = text.strip()
    # ISO 8601 and other machine forms first, as they are
    if re.match(r"^\d{4}-\d{2}-\d{2}", raw):
        return _dateparser(raw, tz, local_now)
    s = _digits(_fold(raw))
    m = _IN.search(s)
    if m:  # "en dos horas": relative to now, no time of day
        n, unit = int(m.group(1)), m.group(2)
        delta = {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n),
                 "s": timedelta(weeks=n)}[unit[0]]
        return local_now + delta

    clock: tuple[int, int] | None = None
    m = _CLOCK.search(s)
    if m:
        clock = _hour(int(m.group(1)), int(m.group(2) or 0), m.group(3), m.group(4))
        if clock is None:
            return None
        s = (s[: m.start()] + " " + s[m.end():]).strip()
    else:
        m = _BARE_CLOCK.search(s)
        if m:
            clock = _hour(int(m.group(1)), int(m.group(2)), None, m.group(3) or "h")
            if clock is None:
                return None
            s = (s[: m.start()] + " " + s[m.end():]).strip()
    for part, hour in sorted(_PARTS.items(), key=lambda kv: -len(kv[0])):
        if re.search(rf"\b{part}\b", s):
            if clock is None:
                clock = (hour, 0)
            s = re.sub(rf"\b{part}\b", " ", s)
    s = re.sub(r"\b(?:el|este|esta|proximo|proxima|que viene|por favor|llamame|llamar)\b", " ", s)
    s = re.sub(r"\s+", " ", s).strip(" ,.")

    day = _day(s, tz, local_now)
    if day is None:
        return None
    hh, mm = clock if clock is not None else (DEFAULT_HOUR, 0)
    if isinstance(day, datetime):  # dateparser gave a full time: keep it unless a clock was said
        if clock is None and (day.hour, day.minute) != (local_now.hour, local_now.minute):
            return day
        day = day.date()
    when = datetime.combine(day, time(hh, mm), tz)
    if not s and when <= local_now:
        when += timedelta(days=1)  # "a las cinco" said at six: tomorrow
    return when


def _day(s: str, tz: ZoneInfo, local_now: datetime):
    today = local_now.date()
    if s in ("", "hoy", "hoy mismo"):
        return today
    if s == "manana":
        return today + timedelta(days=1)
    if s == "pasado manana":
        return today + timedelta(days=2)
    if s in _WEEKDAYS:
        ahead = (_WEEKDAYS[s] - today.weekday()) % 7 or 7
        return today + timedelta(days=ahead)
    return _dateparser(s, tz, local_now)


def _dateparser(s: str, tz: ZoneInfo, local_now: datetime) -> datetime | None:
    parsed = dateparser.parse(
        s, languages=["es", "en"],
        settings={"TIMEZONE": str(tz), "RETURN_AS_TIMEZONE_AWARE": True, "PREFER_DATES_FROM": "future",
                  "RELATIVE_BASE": local_now.replace(tzinfo=None)},
    )
    return parsed.astimezone(tz) if parsed is not None else None


def check_horizon(when: datetime, now: datetime, *, min_lead: timedelta, max_ahead: timedelta) -> str | None:
    """None when ``when`` can be scheduled, else the sentence the agent says instead."""
    if when < now + min_lead:
        return "Esa hora ya pasó o es demasiado pronto; ¿a qué otra hora le puedo llamar?"
    if when > now + max_ahead:
        return f"Solo puedo agendar llamadas dentro de los próximos {max_ahead.days} días; ¿qué otro día le parece?"
    return None


_DIAS = ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo")
_MESES = ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
          "octubre", "noviembre", "diciembre")


def say_datetime(when: datetime, tz: ZoneInfo) -> str:
    """"el jueves 3 de diciembre a las 17:00" (in the person's time zone)."""
    w = when.astimezone(tz)
    return f"el {_DIAS[w.weekday()]} {w.day} de {_MESES[w.month - 1]} a las {w:%H:%M}"


def say_ago(then: datetime, now: datetime, tz: ZoneInfo) -> str:
    """When something happened, as a person says it: "hoy", "ayer", "hace 3 días", "hace 2 semanas"."""
    days = (now.astimezone(tz).date() - then.astimezone(tz).date()).days
    if days <= 0:
        return "hoy"
    if days == 1:
        return "ayer"
    if days < 7:
        return f"hace {days} días ({_DIAS[then.astimezone(tz).weekday()]})"
    if days < 14:
        return "hace una semana"
    if days < 31:
        return f"hace {days // 7} semanas"
    if days < 60:
        return "hace un mes"
    if days < 365:
        return f"hace {days // 30} meses"
    return "hace más de un año"
