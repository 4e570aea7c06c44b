"""Session-scoped access to the real local stack (Kafka, Postgres, Weaviate, MinIO), and the
session's logs.

``stack_env`` brings the stack up through the same code as ``lupita stack up`` (idempotent:
instant when already running), exports its settings into ``os.environ`` for this test
session with a unique topic prefix, and stops the stack afterwards only if this session
started it.

``session_logs`` (autouse) makes one folder for the logs of every child process the tests start
(``LUPITA_TEST_LOG_DIR``, see ``tests/kit/logscan.py``). When the session finishes, every file
there and everything pytest captured of each test (log records, stdout, stderr) is scanned for
phone numbers; any found fails the run with a report named
``tests/conftest.py::the_session_logs_hold_no_phone_number`` (file, line, the line redacted).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import logscan
import pytest

_SESSION: dict = {"log_dir": None, "captured": {}}


@pytest.fixture(scope="session", autouse=True)
def session_logs(tmp_path_factory) -> Path:
    """The folder every child process of this session logs into (``LUPITA_TEST_LOG_DIR``: under
    pytest's temporary directory, or a new subfolder of where the variable already points)."""
    preset = os.environ.get(logscan.LOG_DIR_ENV)
    if preset:
        folder = Path(preset) / f"session-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    else:
        folder = tmp_path_factory.getbasetemp() / "session-logs"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[logscan.LOG_DIR_ENV] = str(folder)
    _SESSION["log_dir"] = folder
    yield folder
    if preset:
        os.environ[logscan.LOG_DIR_ENV] = preset


def pytest_runtest_logreport(report) -> None:
    """Scan what pytest captured of the test (log records, stdout, stderr) for phone numbers."""
    for title, content in getattr(report, "sections", ()):
        if not title.startswith("Captured"):
            continue
        where = f"{report.nodeid} [{title}]"
        if where not in _SESSION["captured"]:
            _SESSION["captured"][where] = logscan.scan_text(content, where)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the run if any log of the session holds a phone number."""
    findings = [f for found in _SESSION["captured"].values() for f in found]
    folder = _SESSION["log_dir"]
    if folder is not None and folder.exists():
        findings += logscan.scan_dir(folder)
    if not findings:
        return
    text = "\n".join([f"{len(findings)} log line(s) hold a phone number (shown redacted); logs: {folder}",
                      *map(str, findings[:50])])
    name = "the_session_logs_hold_no_phone_number"
    report = pytest.TestReport(nodeid=f"tests/conftest.py::{name}", location=("tests/conftest.py", None, name),
                        keywords={}, outcome="failed", longrepr=text, when="call")
    session.config.hook.pytest_runtest_logreport(report=report)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if _SESSION["log_dir"] is not None:
        terminalreporter.write_line(f"session logs (scanned for phone numbers): {_SESSION['log_dir']}")


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    from lupita_dev.stack import manager

    was_running = manager.is_running()
    env = dict(manager.up())
    env["LUPITA_TOPIC_PREFIX"] = f"test-{uuid.uuid4().hex[:8]}."
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from lupita.config import CommonSettings
    from lupita.topics import ensure_topics

    ensure_topics(CommonSettings())
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if not was_running and os.environ.get("LUPITA_KEEP_STACK") != "1":
        manager.down()


@pytest.fixture
def call_id() -> str:
    """A fresh, valid call id per test."""
    return f"test-{uuid.uuid4().hex[:16]}"
