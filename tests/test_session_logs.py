"""The scan of the test session's logs for phone numbers (tests/kit/logscan.py, the hooks in
tests/conftest.py) finds what it must, passes what it must, and fails a session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import logscan
import pytest

TESTS = Path(__file__).resolve().parent

CLEAN = """\
{"ts": "2026-11-24T10:00:00.123Z", "level": "info", "service": "media-bridge", "msg": "call accepted", "call_id": "test-0123456789abcdef", "caller": "[phone]"}
2026-11-24 10:00:01,456 [faust] partition 3 offset 1764000000123 committed after 12.5 ms (pid 4242)
{"msg": "upload", "key": "calls/2026/11/24/test-1234567890abcdef/audio-full.wav", "bytes": 5242880, "uuid": "123e4567-e89b-12d3-a456-426614174000"}
Traceback (most recent call last):
  File "/work/main/services/media_bridge/server.py", line 412, in stream_call
"""


@pytest.mark.parametrize("line, what", [
    ('{"msg": "start", "caller": "+52 951 555 0142"}', "synthetic phone #0"),
    ("ValueError: bad number 9515550142 in the request", "synthetic phone #0"),
    ("tel=+52.951.555.01.42", "synthetic phone #0"),
    ("caller 52 951 555 0100", "synthetic phone #2"),
    ("number +5295100012345 refused", "phone-like digits"),
    ("from (55) 1234-5678", "phone-like digits"),
])
def test_a_log_file_with_a_phone_number_is_reported_with_the_line_redacted(tmp_path, line, what):
    (tmp_path / "worker-abc.log").write_text(CLEAN + line + "\n")
    (tmp_path / "clean.log").write_text(CLEAN)
    findings = logscan.scan_dir(tmp_path)
    assert [(f.where, f.what) for f in findings] == [(f"worker-abc.log:{CLEAN.count(chr(10)) + 1}", what)]
    assert "[phone]" in findings[0].line
    assert not any(d in str(findings[0]) for d in ("5550142", "5550100", "5295100012345", "12345678"))


def test_logs_without_a_phone_number_have_no_findings(tmp_path):
    (tmp_path / "a.log").write_text(CLEAN * 3)
    assert logscan.scan_dir(tmp_path) == []
    assert logscan.scan_text(CLEAN, "captured") == []


def test_every_synthetic_phone_of_the_tests_is_known_to_the_scan():
    """The made-up numbers written in the tests (``"+52..."`` literals of 8-15 digits: longer
    ones are the validation tests' not-a-number inputs) are in SYNTHETIC_PHONES or caught by the
    pattern."""
    import re

    literals = set()
    for path in TESTS.rglob("*.py"):
        literals |= {p for p in re.findall(r'"(\+52[\d ()-]{8,})"', path.read_text())
                     if 8 <= len(re.sub(r"\D", "", p)) <= 15}
    assert len(literals) >= 5
    for phone in literals:
        assert logscan.scan_text(f"x {phone} y", "literal"), phone


def _run_session(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess:
    """A pytest session of its own (this suite's conftest and kit) running ``test_source``."""
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "pytest.ini").write_text(f"[pytest]\npythonpath = {TESTS / 'kit'}\n")
    (tmp_path / "test_it.py").write_text(test_source)
    env = {k: v for k, v in os.environ.items() if k != logscan.LOG_DIR_ENV}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'bt'}",
         "test_it.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


CHILD_LOGS = """
import subprocess, sys
import logscan

def test_a_child_process_prints_{what}():
    path = logscan.log_path("child")
    with open(path, "wb") as out:
        subprocess.run([sys.executable, "-c", "print({text!r})"], stdout=out, stderr=subprocess.STDOUT, check=True)
"""

CAPTURED_LOG = """
import logging

def test_in_process_code_logs_a_phone():
    logging.getLogger("lupita.somewhere").warning("caller %s", "+52 (951) 555-0142")
"""


def test_a_session_whose_child_wrote_a_phone_fails_and_does_not_print_it(tmp_path):
    out = _run_session(tmp_path, CHILD_LOGS.format(what="a_phone", text="caller 951 555 0142"))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 passed" in out.stdout and "1 failed" in out.stdout
    assert "the_session_logs_hold_no_phone_number" in out.stdout and "child-" in out.stdout
    assert "555 0142" not in out.stdout + out.stderr


def test_a_session_whose_test_logged_a_phone_fails(tmp_path):
    out = _run_session(tmp_path, CAPTURED_LOG)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "test_in_process_code_logs_a_phone [Captured log call]" in out.stdout
    assert "555-0142" not in out.stdout + out.stderr


def test_a_clean_session_passes(tmp_path):
    out = _run_session(tmp_path, CHILD_LOGS.format(what="no_phone", text="call test-0123456789abcdef at 2026-11-24"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout and "session logs (scanned for phone numbers)" in out.stdout
    logs = list((tmp_path / "bt" / "session-logs").glob("child-*.log"))
    assert len(logs) == 1 and "test-0123456789abcdef" in logs[0].read_text()
