"""Session-scoped access to the real local stack (Kafka, Postgres, Weaviate, MinIO).

``stack_env`` brings the stack up through the same code as ``lupita stack up`` (idempotent:
instant when already running), exports its settings into ``os.environ`` for this test
session with a unique topic prefix, and stops the stack afterwards only if this session
started it.
"""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    from lupita.stack import manager

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
