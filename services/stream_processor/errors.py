"""Errors as the logs may show them."""

from __future__ import annotations


def safe_error(exc: BaseException) -> str:
    """An error for the logs. Postgres errors are reduced to their code and primary message:
    their DETAIL may quote the failing row (encrypted phone, phone hash)."""
    import psycopg

    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        return f"{type(exc).__name__}: {diag.sqlstate or ''} {diag.message_primary or 'database error'}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]
