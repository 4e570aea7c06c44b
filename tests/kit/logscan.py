"""The test session's logs, and the check that none of them holds a phone number.

Every child process the tests start (``lupita worker``, ``lupita bridge``, other ``lupita``
commands) writes its stdout and stderr into one folder per test session: ``LUPITA_TEST_LOG_DIR``,
exported by the session fixture in ``tests/conftest.py`` (under pytest's temporary directory, or
where the variable already points). At the end of the session ``tests/conftest.py`` scans every
file there, and what pytest captured of each test (log records, stdout, stderr), with
:func:`scan_text`: a line fails the run when it holds one of :data:`SYNTHETIC_PHONES` (the made-up
numbers the tests use) in any written form, or any digit run that :func:`lupita.logs.phone_spans`
takes for a phone number. The findings name the file and line and show the line redacted, so the
report does not print the number either.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from lupita.logs import phone_spans, redact

LOG_DIR_ENV = "LUPITA_TEST_LOG_DIR"

# The made-up numbers the tests put in calls (grep the tests for "+52"); loadgen's own synthetic
# numbers ("+5295100" + 5 digits) and random ones are caught by the pattern.
SYNTHETIC_PHONES = (
    "+52 951 555 0142", "+52 (951) 555-0142", "+52 951 555 0100", "+5219515550100", "+529517654321",
    "+52 (951) 123-4567", "+5219511234567", "+529510000001",
)


def _digit_forms(phone: str) -> tuple[str, ...]:
    """The digits of a number as a log could hold them: with the country code (and the old
    mobile 1), without it, the 10-digit national number."""
    digits = re.sub(r"\D", "", phone)
    national = digits[-10:]
    return tuple(dict.fromkeys((digits, "52" + national, "521" + national, national)))


_KNOWN = [(i, re.compile(r"(?<!\d)(?:" + "|".join(map(re.escape, _digit_forms(p))) + r")(?!\d)"))
          for i, p in enumerate(SYNTHETIC_PHONES)]


@dataclass(frozen=True)
class Finding:
    where: str  # file (or test and section) and line number
    what: str   # "synthetic phone #i" or "phone-like digits"
    line: str   # the line with the phones redacted

    def __str__(self) -> str:
        return f"{self.where}: {self.what}: {self.line[:300]}"


def scan_text(text: str, where: str) -> list[Finding]:
    """Findings in ``text``, line by line (``where`` names the source)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not any(c.isdigit() for c in line):
            continue
        joined = re.sub(r"(?<=\d)[ ().-]{1,3}(?=\d)", "", line)  # "+52 (951) 555-0142" -> "+529515550142"
        known = [i for i, rx in _KNOWN if rx.search(line) or rx.search(joined)]
        if known:
            out.append(Finding(f"{where}:{n}", f"synthetic phone #{known[0]}", _redacted(line)))
        elif phone_spans(line):
            out.append(Finding(f"{where}:{n}", "phone-like digits", _redacted(line)))
    return out


def _redacted(line: str) -> str:
    line = redact(line)
    for _, rx in _KNOWN:
        line = rx.sub("[phone]", line)
    return line


def scan_file(path: Path, root: Path | None = None) -> list[Finding]:
    where = str(path.relative_to(root)) if root is not None else str(path)
    return scan_text(path.read_text(errors="replace"), where)


def scan_dir(root: Path) -> list[Finding]:
    """Findings in every file under ``root``."""
    out: list[Finding] = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        out += scan_file(path, root)
    return out


# --- where the children write -------------------------------------------------------------------


def log_dir() -> Path | None:
    """The session's log folder (None outside a test session that set one)."""
    value = os.environ.get(LOG_DIR_ENV)
    return Path(value) if value else None


def log_path(name: str, fallback_dir: Path | None = None) -> Path:
    """A new file for one child's output: ``<session log dir>/<name>-<6 hex>.log`` (or in
    ``fallback_dir`` outside a session)."""
    folder = log_dir() or fallback_dir
    if folder is None:
        raise RuntimeError(f"no {LOG_DIR_ENV} and no fallback folder for {name}'s log")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{uuid.uuid4().hex[:6]}.log"


def run_logged(name: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, ...)`` whose stdout and stderr are also written
    to the session's log folder (so the scan sees them); the result is returned as usual."""
    kwargs.setdefault("capture_output", True)
    result = subprocess.run(args, **kwargs)
    folder = log_dir()
    if folder is not None:
        def text(x) -> str:
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
        log_path(name).write_text(f"$ {' '.join(map(str, args))}\n--- stdout\n{text(result.stdout)}"
                                  f"--- stderr\n{text(result.stderr)}")
    return result
