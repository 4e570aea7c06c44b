"""The fault rig for the fault tests: its own stack, topics, bridge and one worker per stage (see
``faultkit``), the no-fault baseline run, and the results table at the end of the session.

``LUPITA_FAULTS_OUTAGE_S`` (default 8) is how long a server stays down in these tests;
``bench/faults.py --full`` runs every scenario with 30 s outages and several calls.
"""

from __future__ import annotations

import os

import pytest

_RESULTS: list = []


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    from faultkit import FaultRig

    r = FaultRig(tmp_path_factory.mktemp("faults"),
                 outage_s=float(os.environ.get("LUPITA_FAULTS_OUTAGE_S", "8")), settle_timeout_s=240)
    try:
        r.start()
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def baseline(rig):
    from faultkit import SCENARIOS

    result = rig.run(SCENARIOS["baseline"], 1)
    _RESULTS.append(result)
    return result


@pytest.fixture(scope="module")
def expected(baseline):
    from faultkit import expectation_from

    return expectation_from(baseline)


@pytest.fixture
def record_result():
    return _RESULTS.append


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RESULTS:
        return
    from faultkit import format_problems, format_table

    terminalreporter.section("fault scenarios (lost / duplicated per scenario)")
    terminalreporter.write_line(format_table(_RESULTS))
    problems = format_problems(_RESULTS)
    if problems:
        terminalreporter.write_line(problems)
