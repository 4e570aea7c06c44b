"""Versioned Postgres migrations (``lupita migrate``).

Migrations are the files ``services/lupita/migrations/NNNN_<name>.sql``, applied in version
order, each exactly once and inside its own transaction, and recorded in
``schema_migrations`` (version, name, sha256 of the file, time). A session-level advisory lock
serialises concurrent runners (several workers starting at once, parallel test sessions).
An applied file must never change: a checksum mismatch stops the run with an error.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# pg_advisory_lock key: any fixed 64-bit number private to this runner ("lupita-m" in ASCII).
LOCK_KEY = 0x6C7570697461_2D6D

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration file is malformed, changed after it was applied, or failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """All migration files in version order; refuses stray names and duplicate versions."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = FILE_RE.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files must be named NNNN_lower_snake.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version:04d} is used twice")
        found[version] = Migration(version, m.group(2), path)
    return [found[v] for v in sorted(found)]


def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the pending migrations; returns the file names applied by this call."""
    migrations = discover(directory)
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(_CREATE_TABLE)
            done = {
                row[0]: row[1]
                for row in conn.execute("SELECT version, sha256 FROM schema_migrations").fetchall()
            }
            for mig in migrations:
                if mig.version in done:
                    if done[mig.version] != mig.sha256:
                        raise MigrationError(
                            f"{mig.path.name} changed after it was applied (sha256 differs); "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                try:
                    with conn.transaction():
                        conn.execute(mig.sql)
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                            (mig.version, mig.name, mig.sha256),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"{mig.path.name} failed and was rolled back: {exc}") from exc
                log.info("migration applied", extra={"stage": "migrate", "migration": mig.path.name})
                applied_now.append(mig.path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now


def status(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[tuple[str, bool]]:
    """(file name, applied?) for every migration file."""
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute(_CREATE_TABLE)
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    return [(m.path.name, m.version in done) for m in discover(directory)]


# -- `lupita migrate` ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Apply the pending Postgres migrations (LUPITA_POSTGRES_DSN)."
    parser.add_argument("--status", action="store_true", help="list the migrations and whether each is applied")


def run(args: argparse.Namespace) -> int:
    from .config import CommonSettings
    from .logs import setup_logging

    settings = CommonSettings()
    setup_logging("migrate", settings.log_level)
    dsn = settings.postgres_dsn.get_secret_value()
    try:
        if args.status:
            for name, applied in status(dsn):
                print(f"{'applied' if applied else 'pending'}  {name}")
            return 0
        applied = migrate(dsn)
    except (MigrationError, psycopg.Error) as exc:
        log.error("migration failed", extra={"stage": "migrate", "error": str(exc)})
        return 1
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else " (up to date)"))
    return 0
