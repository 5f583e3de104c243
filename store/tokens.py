"""API tokens: printed once at creation, stored only as sha256 (they are 256 random bits, so a
fast hash is enough and lookups stay one indexed query)."""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Token, utcnow
from store.records import new_id

PREFIX = "thr_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(session: Session, name: str, *, admin: bool = False) -> tuple[Token, str]:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"token name {name!r} must be 1-100 characters of letters, digits and _.@- "
                         "starting with a letter or digit")
    plaintext = PREFIX + secrets.token_urlsafe(32)
    row = Token(id=new_id(), name=name, token_hash=digest(plaintext), admin=admin, created_at=utcnow())
    session.add(row)
    session.flush()
    return row, plaintext


def lookup(session: Session, plaintext: str) -> Token | None:
    """The active token with this value, or None (unknown or revoked)."""
    if not plaintext.startswith(PREFIX) or len(plaintext) > 200:
        return None
    return session.scalar(
        select(Token).where(Token.token_hash == digest(plaintext), Token.revoked_at.is_(None)))


def revoke(session: Session, token_id: str) -> Token | None:
    row = session.get(Token, token_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def all_tokens(session: Session) -> list[Token]:
    return list(session.scalars(select(Token).order_by(Token.created_at)))


def has_active_admin(session: Session) -> bool:
    return session.scalar(
        select(Token.id).where(Token.admin.is_(True), Token.revoked_at.is_(None)).limit(1)) is not None
