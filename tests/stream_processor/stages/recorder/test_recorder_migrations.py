"""``lupita.db.migrate`` against the real Postgres, each test in a throw-away schema."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from lupita import db

pytestmark = pytest.mark.stack


@pytest.fixture
def schema_dsn(stack_env, recorder_settings):
    """A DSN whose search_path is a fresh schema (dropped afterwards)."""
    base = recorder_settings.postgres_dsn.get_secret_value()
    name = f"mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{name}", name
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


def write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


def tables(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    return {r[0] for r in rows}


def test_each_migration_is_applied_once_in_order(schema_dsn, tmp_path):
    dsn, schema = schema_dsn
    write(tmp_path, "0001_first.sql", "CREATE TABLE a (id int PRIMARY KEY);")
    write(tmp_path, "0002_second.sql", "CREATE TABLE b (a_id int REFERENCES a (id));")
    assert db.migrate(dsn, tmp_path) == ["0001_first.sql", "0002_second.sql"]
    assert db.migrate(dsn, tmp_path) == []
    write(tmp_path, "0003_third.sql", "ALTER TABLE b ADD COLUMN note text; CREATE TABLE c (x int);")
    assert db.migrate(dsn, tmp_path) == ["0003_third.sql"]
    assert tables(dsn, schema) == {"a", "b", "c", "schema_migrations"}
    assert db.status(dsn, tmp_path) == [("0001_first.sql", True), ("0002_second.sql", True), ("0003_third.sql", True)]


def test_a_failing_migration_is_rolled_back_entirely_and_stops_the_run(schema_dsn, tmp_path):
    dsn, schema = schema_dsn
    write(tmp_path, "0001_ok.sql", "CREATE TABLE a (id int);")
    write(tmp_path, "0002_broken.sql", "CREATE TABLE half (id int); SELECT no_such_function();")
    write(tmp_path, "0003_later.sql", "CREATE TABLE later (id int);")
    with pytest.raises(db.MigrationError, match="0002_broken.sql failed and was rolled back"):
        db.migrate(dsn, tmp_path)
    assert tables(dsn, schema) == {"a", "schema_migrations"}
    assert [n for n, applied in db.status(dsn, tmp_path) if applied] == ["0001_ok.sql"]


def test_an_applied_migration_that_changed_is_refused(schema_dsn, tmp_path):
    dsn, _ = schema_dsn
    write(tmp_path, "0001_first.sql", "CREATE TABLE a (id int);")
    db.migrate(dsn, tmp_path)
    write(tmp_path, "0001_first.sql", "CREATE TABLE a (id bigint);")
    with pytest.raises(db.MigrationError, match="changed after it was applied"):
        db.migrate(dsn, tmp_path)


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_UPPER.sql"])
def test_badly_named_files_are_refused(tmp_path, name):
    write(tmp_path, name, "SELECT 1;")
    with pytest.raises(db.MigrationError, match="NNNN_lower_snake.sql"):
        db.discover(tmp_path)


def test_duplicate_versions_are_refused(tmp_path):
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "0001_b.sql", "SELECT 1;")
    with pytest.raises(db.MigrationError, match="used twice"):
        db.discover(tmp_path)


def test_concurrent_runners_apply_each_migration_exactly_once(schema_dsn, tmp_path):
    dsn, _ = schema_dsn
    # not idempotent on purpose: a second application would fail
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int); SELECT pg_sleep(0.3);")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (id int);")
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(db.migrate(dsn, tmp_path))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(results, key=len) == [[], [], ["0001_a.sql", "0002_b.sql"]]


def test_the_project_migrations_are_well_formed_and_applied_by_the_fixture(pg):
    names = [m.path.name for m in db.discover()]
    assert names and names[0] == "0001_companion_calls.sql"
    cols = {r[0] for r in pg.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'companion_calls'"
    ).fetchall()}
    assert {"call_id", "phone_encrypted", "phone_number_hash", "s3_legal_key", "duration_seconds"} <= cols


def test_lupita_migrate_command_reports_status(stack_env, pg):
    from procs import run_lupita

    out = run_lupita("migrate-status", ["migrate", "--status"], timeout=60)
    assert out.returncode == 0, out.stderr
    assert "applied  0001_companion_calls.sql" in out.stdout
    again = run_lupita("migrate", ["migrate"], timeout=60)
    assert again.returncode == 0 and "up to date" in again.stdout
