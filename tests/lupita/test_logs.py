"""The JSON log lines of every service: fixed keys, and phone numbers redacted (lupita.logs).

Both sides are tested: the ways a phone number gets written (E.164, national with spaces,
dashes, dots or parentheses, bare digits, inside ``key=value``, lists, dicts, exceptions) come
out as the placeholder, and what only looks numeric (timestamps, call ids, UUIDs, hashes,
offsets, durations, ports, epoch times, IP addresses) comes out exactly as it went in.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from lupita.logs import PHONE_PLACEHOLDER as P, JsonFormatter, RedactPhones, redact, redact_value, setup_logging

SERVICES = Path(__file__).resolve().parents[2] / "services"

PHONES = [
    "+52 951 555 0142", "+52 (951) 555-0142", "+529515550142", "+5219515550100", "+52 1 951 555 0100",
    "+52-951-555-0142", "+52.951.555.0142", "+1 415 555 2671", "529515550142", "5219515550100",
    "9515550142", "(951) 555-0142", "951 555 0142", "951-555-0142", "951.555.0142", "55 1234 5678",
    "951 555 01 42", "55 12 34 56 78", "044 951 555 0142", "52 951 555 0142", "52 1 951 555 0142",
    "+52\u00a0951\u00a0555\u00a00142",
]

NOT_PHONES = [
    "2026-11-24T10:00:00.123Z", "2026-11-24 10:00:00,123", "10:00:00.123456", "2026-11-24",
    "test-1234567890123456", "test-0123456789abcdef", "e2e-5219515550100aa", "rec-9515550142",
    "123e4567-e89b-12d3-a456-426614174000", "a456-426614174000",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "sha 9515550142abc",
    "1764000000", "1764000000123", "1764000000000000", "1764000000.123456", "0.9515550142",
    "offset 12345678", "offsets [0, 15, 1024]", "partition 3 offset 4821", "took 12.5 s", "2.345 ms",
    "127.0.0.1:50061", "192.168.100.200", "localhost:9092", "version 1.2.3", "8000 Hz, 20 ms, 160 samples",
    "/tmp/pytest-of-root/pytest-12/test_x0/worker-ab12cd.log", "calls/2026/11/24/test-ab12/audio-full.wav",
    "aGVsbG8rNTIxOTUxNTU1MDEwMA==", "chunk_seq=41 frames=500", "-1", "+0", "+00:00",
]


@pytest.mark.parametrize("phone", PHONES)
def test_a_phone_number_is_replaced_wherever_it_stands(phone):
    assert redact(phone) == P
    for template, expected in (
        ("{}", P), ("call from {} ended", f"call from {P} ended"), ("phone={}", f"phone={P}"),
        ("tel:{}", f"tel:{P}"), ('"phone_number": "{}"', f'"phone_number": "{P}"'), ("[{}, 1]", f"[{P}, 1]"),
        ("({})", f"({P})"), ("{}.", f"{P}."), ("segments 2 {}", None),
    ):
        out = redact(template.format(phone))
        digits = re.sub(r"\D", "", phone)
        assert digits not in re.sub(r"\D", "", out.replace("segments 2", "")), (template, out)
        if expected is not None:
            assert out == expected, template


@pytest.mark.parametrize("text", NOT_PHONES)
def test_what_only_looks_numeric_is_left_exactly_as_it_is(text):
    assert redact(text) == text
    assert redact(f"call test-ab12 at {text} ok") == f"call test-ab12 at {text} ok"


def test_two_phones_and_a_timestamp_in_one_line():
    line = "2026-11-24 10:00:00,123 from +52 951 555 0142 to 951-555-0100 offset 1764000000123"
    assert redact(line) == f"2026-11-24 10:00:00,123 from {P} to {P} offset 1764000000123"


def test_extra_values_are_redacted_recursively_and_keep_their_shape():
    value = {
        "phone": "+52 951 555 0142", "n": 5219515550100, "calls": [{"to": "9515550142", "offset": 42}],
        "pair": ("951 555 0142", 1.5), "ok": True, "none": None, "started_at_us": 1_764_000_000_000_000,
        "call_id": "test-0123456789abcdef", "raw": b"+529515550142", "path": Path("/tmp/9515550142/x.wav"),
    }
    out = redact_value(value)
    assert out == {
        "phone": P, "n": P, "calls": [{"to": P, "offset": 42}], "pair": (P, 1.5), "ok": True, "none": None,
        "started_at_us": 1_764_000_000_000_000, "call_id": "test-0123456789abcdef", "raw": f"b'{P}'",
        "path": f"/tmp/{P}/x.wav",
    }
    assert redact_value(["a", 3, 2.5]) == ["a", 3, 2.5]
    assert redact_value(Path("/tmp/x.wav")) == Path("/tmp/x.wav")  # kept as the object it is


def _logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    """A logger of its own, not propagating (nothing reaches pytest's capture), that writes what
    a service's handler writes: the JSON formatter behind the redaction filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test-service"))
    handler.addFilter(RedactPhones())
    logger = logging.getLogger(f"lupita.test.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_message_arguments_extra_fields_exception_and_stack_are_redacted():
    log, stream = _logger("all")
    try:
        raise ValueError("bad caller +52 (951) 555-0142 for call test-0123456789abcdef")
    except ValueError:
        log.exception("call %s from %s failed", "test-0123456789abcdef", "951 555 0142",
                      extra={"call_id": "test-0123456789abcdef", "caller": {"numbers": ["+529515550142"]},
                             "offset": 1234, "started_at_us": 1_764_000_000_000_000})
    log.warning("where", extra={"phone": "9515550142"}, stack_info=True)
    first, second = _lines(stream)
    assert first["msg"] == f"call test-0123456789abcdef from {P} failed"
    assert first["caller"] == {"numbers": [P]} and first["call_id"] == "test-0123456789abcdef"
    assert first["offset"] == 1234 and first["started_at_us"] == 1_764_000_000_000_000
    assert "Traceback" in first["exc"] and f"bad caller {P} for call test-0123456789abcdef" in first["exc"]
    assert first["level"] == "error" and first["service"] == "test-service" and first["ts"].endswith("Z")
    assert second["phone"] == P and "stack" in second
    text = stream.getvalue()
    for digits in ("9515550142", "529515550142"):
        assert digits not in re.sub(r"\D", "", text.replace("1764000000000000", "")), text


def test_a_message_that_is_not_a_string_and_a_broken_format_still_log():
    log, stream = _logger("odd")
    log.info(ValueError("+52 951 555 0142"))
    log.info("%d calls", "not a number +529515550142")
    first, second = _lines(stream)
    assert first["msg"] == P
    assert P in second["msg"] and "529515550142" not in second["msg"]


def test_setup_logging_puts_the_filter_on_the_handler_every_service_writes_through(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("media-bridge", "INFO")
        assert any(isinstance(f, RedactPhones) for f in root.handlers[0].filters)
        logging.getLogger("media_bridge.test").info("start", extra={"caller": "+52 951 555 0142"})
        root.handlers[0].flush()
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["caller"] == P and line["service"] == "media-bridge"


# The services' entry points (each configures logging for its process) and the code that may
# configure logging handlers at all.
ENTRY_POINTS = {
    "media_bridge/cli.py": "media-bridge", "stream_processor/worker.py": "stream-processor",
    "stream_processor/replay.py": "replay", "loadgen/cli.py": "loadgen", "lupita/db.py": "migrate",
}


def test_every_service_sets_up_its_logs_through_setup_logging_only():
    for rel, service in ENTRY_POINTS.items():
        assert f'setup_logging("{service}"' in (SERVICES / rel).read_text(), rel
    for path in SERVICES.rglob("*.py"):
        if path == SERVICES / "lupita" / "logs.py" or "/v1/" in path.as_posix():
            continue
        text = path.read_text()
        for call in ("logging.basicConfig(", "dictConfig(", "fileConfig(", "logging.StreamHandler(",
                     "logging.FileHandler(", ".addHandler("):
            assert call not in text, f"{path.relative_to(SERVICES)} configures logging itself ({call})"


def test_a_librarys_repeated_warning_is_held_back_and_counted_the_platforms_own_never():
    from lupita.logs import RepeatLimiter

    limiter = RepeatLimiter(every_s=30.0)

    def rec(name, msg, t, level=logging.WARNING):
        r = logging.LogRecord(name, level, __file__, 1, msg, ("node-1",), None)
        r.created = t
        return r

    lib = "aiokafka.conn"
    template = "Unable to connect to %s"
    assert limiter.filter(rec(lib, template, 0.0))  # the first of its kind goes through
    assert not any(limiter.filter(rec(lib, template, t / 10)) for t in range(1, 100))  # 99 repeats
    assert limiter.filter(rec(lib, "another warning %s", 1.0))  # another kind is not held back
    assert limiter.filter(rec(lib, template, 5.0, logging.ERROR))  # nor another level
    later = rec(lib, template, 31.0)
    assert limiter.filter(later) and later.repeats_held_back == 99
    again = rec(lib, template, 62.0)
    assert limiter.filter(again) and not hasattr(again, "repeats_held_back")
    # the platform's own warnings and every info line always go through
    assert all(limiter.filter(rec("stream_processor.faust_kit", template, 31.0 + t / 100)) for t in range(50))
    assert all(limiter.filter(rec(lib, template, 31.0 + t / 100, logging.INFO)) for t in range(50))
