"""Report aggregation, synthetic phones, and the client's behaviour when no bridge listens."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from lupita import cli
from lupita.v1 import audio_pb2
from loadgen.client import CallResult, stream_call
from loadgen.runner import build_report, format_report, run_calls, synthetic_phone


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def result(call_id, *, status="OK", sent=10, acked=10, lat=(0.01,) * 10, errors=(), closed=True):
    return CallResult(
        call_id=call_id, frames_total=10, frames_sent=sent, frames_acked=acked, acks=2,
        status=status, errors=list(errors), latencies_s=list(lat),
        closed={"frames_lupita": 5, "frames_person": 5, "chunks_lupita": 1, "chunks_person": 1} if closed else None,
    )


def test_synthetic_phones_are_oaxaca_numbers_and_distinct():
    phones = [synthetic_phone(i) for i in range(1000)]
    assert all(p.startswith("+5295100") and len(p) == 13 and p[1:].isdigit() for p in phones)
    assert len(set(phones)) == 1000


def test_report_counts_ok_failed_errors_by_code_and_percentiles():
    results = [
        result("a", lat=[0.001 * i for i in range(1, 11)]),
        result("b", status="INVALID_ARGUMENT", sent=3, acked=0, lat=(),
               errors=[("INVALID_ARGUMENT", "seq 3 not > 4")], closed=False),
        result("c", status="UNAVAILABLE", sent=0, acked=0, lat=(), closed=False),
        result("d", sent=10, acked=8, lat=[0.001] * 8),  # closed OK but two frames never acked
    ]
    report = build_report(results, wall_s=2.0, audio_s_per_call=0.1)
    assert (report.calls, report.ok, report.failed) == (4, 1, 3)
    assert report.errors_by_code == {"INCOMPLETE": 1, "INVALID_ARGUMENT": 1, "UNAVAILABLE": 1}
    assert report.frames_sent == 23 and report.frames_acked == 18
    assert report.frames_per_s == pytest.approx(9.0)
    assert report.latency_ms["p50"] == pytest.approx(np.percentile([0.001 * i for i in range(1, 11)] + [0.001] * 8, 50) * 1000)
    assert report.latency_ms["max"] == pytest.approx(10.0)
    text = format_report(report)
    assert "4 (1 ok, 3 failed)" in text and "INVALID_ARGUMENT=1" in text and "b: INVALID_ARGUMENT seq 3 not > 4" in text
    json.dumps(report.to_dict())  # serialisable


def test_report_without_acks_has_no_percentiles():
    report = build_report([result("x", status="UNAVAILABLE", sent=0, acked=0, lat=(), closed=False)], 1.0, 1.0)
    assert report.latency_ms == {"p50": None, "p95": None, "p99": None, "max": None}
    assert "p50 -" in format_report(report)


async def test_client_reports_unavailable_when_no_bridge_listens():
    stereo = np.zeros((1600, 2), dtype=np.int16)
    res = await stream_call(f"127.0.0.1:{closed_port()}", "token", "test-nobridge", stereo, 8000,
                            audio_pb2.CODEC_PCM16, speed=0, timeout_s=10)
    assert res.status == "UNAVAILABLE" and not res.ok
    assert res.frames_sent == 0 and not res.accepted and res.frames_total == 20


async def test_runner_reports_every_failed_call_without_phone_numbers():
    stereo = np.zeros((800, 2), dtype=np.int16)
    report = await run_calls(f"127.0.0.1:{closed_port()}", "token", stereo, 8000, audio_pb2.CODEC_PCM16,
                             calls=3, speed=0, ramp_per_s=1000, timeout_s=10)
    assert report.failed == 3 and report.errors_by_code == {"UNAVAILABLE": 3}
    dumped = json.dumps(report.to_dict()) + format_report(report)
    assert "+52951" not in dumped and "5295100" not in dumped


def test_lupita_call_without_a_token_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("LUPITA_BRIDGE_TOKENS", "")
    assert cli.main(["call", "--target", "127.0.0.1:9", "--duration", "0.1"]) == 2
    assert "no bearer token" in capsys.readouterr().err


def test_lupita_call_json_reports_failure_and_exits_1(capsys):
    code = cli.main(["call", "--token", "t", "--target", f"127.0.0.1:{closed_port()}", "--duration", "0.2",
                     "--speed", "0", "--calls", "2", "--call-id", "test-cli", "--json", "--timeout", "10"])
    assert code == 1
    out = json.loads(capsys.readouterr().out)
    assert out["calls"] == 2 and out["failed"] == 2 and out["errors_by_code"] == {"UNAVAILABLE": 2}
    assert [c["call_id"] for c in out["per_call"]] == ["test-cli-0", "test-cli-1"]
