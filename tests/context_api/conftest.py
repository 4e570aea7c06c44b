"""Fixtures of the context API tests: the migrated Postgres of the stack, and a ``lupita
context-api`` child (bearer auth) shared by a module's tests."""

from __future__ import annotations

import pytest
from ctxkit import ContextApi


@pytest.fixture(scope="session")
def migrated(stack_env) -> dict[str, str]:
    from lupita.db import migrate

    from lupita.config import CommonSettings

    migrate(CommonSettings().postgres_dsn.get_secret_value())
    return stack_env


@pytest.fixture(scope="module")
def api(migrated):
    with ContextApi("context-api") as server:
        yield server
