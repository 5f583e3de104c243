"""Request-scoped dependencies: one transaction per request, the settings."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from store.db import transaction


def db(request: Request) -> Iterator[Session]:
    """A read-only transaction (GET routes)."""
    with transaction(request.app.state.sessions, write=False) as session:
        yield session


def db_write(request: Request) -> Iterator[Session]:
    """A writing transaction: on SQLite it holds the write lock from its first statement.

    Use it as `Depends(db_write, scope="function")`: the commit must happen before the response
    is sent, or a client could read a 201 for a row that is not committed yet (or never will be,
    when the database goes away between the two)."""
    with transaction(request.app.state.sessions, write=True) as session:
        yield session


def settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


def session_factory(request: Request) -> sessionmaker[Session]:
    """For routes that validate large input before they open their own write transaction."""
    factory: sessionmaker[Session] = request.app.state.sessions
    return factory
