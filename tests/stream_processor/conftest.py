"""Fixtures of the stream-processor tests: one real ``lupita worker`` child process per test
session (its own Faust app id / consumer group, short group and recorder timeouts), and
clients of the real stack to look at what it wrote."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from procs import Worker, start_worker, stop_worker


@dataclass
class Topics:
    chunks: str
    lifecycle: str
    dead_letters: str


@pytest.fixture(scope="session")
def recorder_settings(stack_env):
    from stream_processor.stages.recorder.settings import RecorderSettings

    return RecorderSettings()


@pytest.fixture(scope="session")
def topics(recorder_settings) -> Topics:
    from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE
    from stream_processor.stages.recorder.agent import DEAD_LETTERS

    s = recorder_settings
    return Topics(s.topic(AUDIO_CHUNKS), s.topic(CALL_LIFECYCLE), s.topic(DEAD_LETTERS))


@pytest.fixture(scope="session")
def recorder_worker(stack_env, tmp_path_factory) -> Worker:
    """One worker shared by the integration tests (its own app id / consumer group)."""
    worker = start_worker(tmp_path_factory.mktemp("recorder-worker"), f"recorder-test-{uuid.uuid4().hex[:8]}")
    try:
        yield worker
    finally:
        stop_worker(worker)


@pytest.fixture(scope="session")
def s3(stack_env, recorder_settings):
    from stream_processor.stores.archive import s3_client

    return s3_client(recorder_settings)


@pytest.fixture(scope="session")
def pg(stack_env, recorder_settings):
    import psycopg

    from lupita.db import migrate

    dsn = recorder_settings.postgres_dsn.get_secret_value()
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn
