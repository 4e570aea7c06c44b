"""The chart tests need helm, promtool and Prometheus, built once from the Go module proxy into the
cache. On a cold machine the first test that needs one builds it, or waits (file lock) for the
background prebuild that scripts/setup.sh starts in CI: past the suite's 300 s per-test timeout,
so every test here gets the same allowance as tests/cluster (an explicit timeout mark wins).
tests/cluster/conftest.py runs these tests after all others when both are collected."""

from __future__ import annotations

from pathlib import Path

import pytest

COLD_BUILD_TIMEOUT_S = 1800


def pytest_collection_modifyitems(config, items) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(COLD_BUILD_TIMEOUT_S))
