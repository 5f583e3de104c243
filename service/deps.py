"""Request-scoped dependencies: one transaction per request, the settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from store.db import transaction


def db(request: Request) -> Iterator[Session]:
    """A read-only transaction (GET routes)."""
    with transaction(request.app.state.sessions, write=False) as session:
        yield session


def db_write(request: Request) -> Iterator[Session]:
    """A writing transaction: on SQLite it holds the write lock from its first statement.
    Routes take it only through `WriteSession`, which carries its scope."""
    with transaction(request.app.state.sessions, write=True) as session:
        yield session


# scope="function": the commit happens before the response is sent. With the default scope it
# happens after, so a client could read a 201 (or follow a 303) to a row that is not committed
# yet, or never will be when the database goes away between the two. One alias, so that no
# route can take the writing transaction with the wrong scope.
WriteSession = Annotated[Session, Depends(db_write, scope="function")]


def settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


def session_factory(request: Request) -> sessionmaker[Session]:
    """For routes that validate large input before they open their own write transaction."""
    factory: sessionmaker[Session] = request.app.state.sessions
    return factory
