"""bench/context.py's pure helpers: the --driver list (refused with its reason before any seeding),
vegeta's RFC 3339 nanosecond send times, and the shared latency summary."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import context as bench_context  # noqa: E402  (bench/context.py)


def test_drivers_are_parsed_in_order_without_repeats():
    assert bench_context.parse_drivers("aiohttp") == ["aiohttp"]
    assert bench_context.parse_drivers(" vegeta , aiohttp,vegeta") == ["vegeta", "aiohttp"]


@pytest.mark.parametrize("text, reason", [
    ("", "name at least one of aiohttp, vegeta"),
    (" , ", "name at least one of aiohttp, vegeta"),
    ("wrk", "unknown wrk (one of aiohttp, vegeta)"),
    ("aiohttp,Vegeta", "unknown Vegeta"),
])
def test_a_bad_driver_list_exits_with_its_reason(text, reason):
    with pytest.raises(SystemExit, match=re.escape(reason)) as info:
        bench_context.parse_drivers(text)
    assert repr(text) in str(info.value)


def test_vegeta_send_times_keep_their_nanoseconds_and_zone():
    whole = datetime(2026, 12, 3, 17, 57, 51, tzinfo=timezone.utc).timestamp()
    assert bench_context._stamp("2026-12-03T17:57:51.123456789Z") == pytest.approx(whole + 0.123456789, abs=1e-6)
    assert bench_context._stamp("2026-12-03T11:57:51-06:00") == whole
    assert bench_context._stamp("2026-12-03T17:57:51.5+00:00") == whole + 0.5


def test_latency_summary_in_milliseconds():
    summary = bench_context.latency_summary([0.004, 0.001, 0.003, 0.002] * 25)
    assert summary == {"ok": 100, "p50_ms": 3.0, "p95_ms": 4.0, "p99_ms": 4.0, "max_ms": 4.0}
    assert bench_context.latency_summary([]) == {"ok": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None,
                                                 "max_ms": None}
