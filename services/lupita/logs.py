"""Structured JSON logs to stdout with fixed keys (ts, level, service, msg, plus call_id/stage/...).

Every service sets up its logs with :func:`setup_logging`, whose handler carries a
:class:`RedactPhones` filter: phone-number-like digits in the message, in every ``extra`` value
(recursively) and in exception / stack text are replaced with :data:`PHONE_PLACEHOLDER` before
the line is written. What counts as a phone is :func:`phone_spans` (documented there).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

PHONE_PLACEHOLDER = "[phone]"

# A run of digits with the separators people write phone numbers with (space, no-break space,
# dash, dot, parentheses), optionally after a "+"; it never starts or ends inside a word or an
# identifier ("test-0123456789abcdef", "a456-426614174000", "x5219515550100"), base64, a decimal
# number or a clock time ("10:00:00"). Which runs are phones is decided by _phone_spans_in.
_CANDIDATE = re.compile(
    r"(?<![\w+])(?<!\w[-.])(?<!\d:)"       # not inside a word, an identifier, base64 or a time
    r"(?:\+[ \u00a0]?|\()?\d"               # "+52", "+ 52", "(951" or a digit
    r"(?:[\d \u00a0().-]*\d)?"              # digits and phone separators, ending on a digit
    r"(?!\w)(?![-.]\w)(?!:\d)"             # not followed by more of a word/identifier/decimal/time
)
_GROUP = re.compile(r"\d+")


def _is_phone(text: str, groups: list[str], plus: bool) -> bool:
    digits = "".join(groups)
    n = len(digits)
    if plus:  # E.164: country code + number, 8 to 15 digits in all
        return 8 <= n <= 15
    if len(groups) == 1:  # a bare run: Mexican shapes only (epoch seconds/ms start with 1)
        return (n == 10 and digits[0] in "23456789") or (n == 12 and digits.startswith("52")) or (
            n == 13 and digits.startswith("521"))
    # written in groups: national (10), with 52 (12), 044/045 + 10, 52 1 + 10
    if not 10 <= n <= 13 or any(len(g) > 4 for g in groups):
        return False
    if len(groups) == 4 and all(len(g) <= 3 for g in groups) and text.count(".") == 3:
        return False  # an IPv4 address
    return len(groups[-1]) >= 2


def _phone_spans_in(text: str, start: int) -> Iterator[tuple[int, int]]:
    """Phone spans inside one candidate run: the whole run, or else its longest sub-runs of
    whole groups (a count or a year written just before a number is left as it is); a group
    next to a dot (a decimal number's part, a version) never starts, ends or joins a sub-run."""
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(text)]
    if _is_phone(text, [text[a:b] for a, b in groups], text.startswith("+")):
        # "(9515550142)": the parenthesis opened before the number is not part of it
        yield start + (text.startswith("(") and ")" not in text), start + len(text)
        return

    def dotted(k: int) -> bool:
        a, b = groups[k]
        return (a > 0 and text[a - 1] == ".") or (b < len(text) and text[b] == ".")

    i = 0
    while i < len(groups):
        for j in range(len(groups), i, -1):  # longest first
            if any(dotted(k) for k in range(i, j)):
                continue
            a, b = groups[i][0], groups[j - 1][1]
            if _is_phone(text[a:b], [text[x:y] for x, y in groups[i:j]], plus=False):
                yield start + a, start + b
                i = j
                break
        else:
            i += 1


def phone_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text`` holds something that looks like a phone number.

    A phone is a run of digits (with spaces, dashes, dots or parentheses between groups) that is:
    ``+`` followed by 8-15 digits (E.164: "+52 951 555 0142", "+5219515550100"); or written in
    groups of at most 4 digits with 10-13 digits in all ("(951) 555-0142", "951 555 01 42",
    "52 951 555 0142", "044 951 555 0142"); or a bare Mexican number: 10 digits not starting with 0
    or 1, 12 starting with 52, 13 starting with 521 ("9515550142", "529515550142").

    Not phones: runs inside words or identifiers (call ids like ``test-<hex>``, UUIDs, hashes,
    base64, file names), decimal numbers, dates and times ("2026-11-24T10:00:00.123Z"), IPv4
    addresses, epoch seconds / milliseconds / microseconds (bare runs starting with 1, or longer
    than 13 digits), and short numbers (offsets, counts, ports, durations).
    """
    spans: list[tuple[int, int]] = []
    for m in _CANDIDATE.finditer(text):
        spans.extend(_phone_spans_in(m.group(), m.start()))
    return spans


def redact(text: str) -> str:
    """``text`` with every :func:`phone_spans` span replaced by :data:`PHONE_PLACEHOLDER`."""
    if not any(c.isdigit() for c in text):
        return text
    spans = phone_spans(text)
    if not spans:
        return text
    out, pos = [], 0
    for a, b in spans:
        out += [text[pos:a], PHONE_PLACEHOLDER]
        pos = b
    out.append(text[pos:])
    return "".join(out)


def redact_value(value: Any) -> Any:
    """A log field with phones redacted: strings, and recursively dict keys and values, lists,
    tuples and sets; an int shaped like a bare phone number becomes the placeholder; other
    objects are redacted as the text they are written as (``str``), or kept as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return PHONE_PLACEHOLDER if phone_spans(str(value)) else value
    if isinstance(value, dict):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [redact_value(v) for v in value]
        return items if isinstance(value, (list, set, frozenset)) else tuple(items)
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class RedactPhones(logging.Filter):
    """Replaces phone-number-like digits in a record (message, extra fields, exception and stack
    text) before any formatter sees it. Attached to the handler by :func:`setup_logging`."""

    _exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: log what there is, as logging would
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = redact(message), None
        for key, value in list(record.__dict__.items()):
            if key not in _RESERVED and not key.startswith("_"):
                record.__dict__[key] = redact_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RepeatLimiter(logging.Filter):
    """Holds back repeats of the same warning from the libraries (the Kafka clients, Faust, mode):
    while a broker is away they say the same thing many times a second (tens of thousands of lines
    in a 30 s outage). The first of each kind goes through at once, then at most one every
    ``every_s`` seconds, carrying ``repeats_held_back``: how many were held back since the last.
    A kind is the logger, the level and the start of the message template. The platform's own
    logs are never held back (they rate-limit themselves where they repeat)."""

    LIBRARIES = ("kafka", "aiokafka", "faust", "mode")
    KEY_CHARS = 80
    MAX_KINDS = 1000

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._kinds: dict[tuple[str, int, str], list[float]] = {}  # kind -> [last emitted, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.LIBRARIES):
            return True
        key = (record.name, record.levelno, str(record.msg)[: self.KEY_CHARS])
        seen = self._kinds.get(key)
        if seen is None:
            if len(self._kinds) >= self.MAX_KINDS:
                self._kinds.clear()
            self._kinds[key] = [record.created, 0]
            return True
        if record.created - seen[0] < self.every_s:
            seen[1] += 1
            return False
        if seen[1]:
            record.repeats_held_back = int(seen[1])
        seen[0], seen[1] = record.created, 0
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info or record.exc_text:
            # the filter leaves the (redacted) text in exc_text, as logging.Formatter caches it
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger to stdout as JSON lines, phone numbers redacted. Idempotent."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(RepeatLimiter())
    handler.addFilter(RedactPhones())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "aiokafka", "botocore", "urllib3", "httpx", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
