"""Shared fixtures for the load generator tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory):
    """One utterance cache for the whole test session (synthesis runs once per sentence)."""
    return tmp_path_factory.mktemp("loadgen-cache")
