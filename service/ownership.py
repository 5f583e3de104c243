"""Every model, dataset and job belongs to its token's principal; others get 404 (not 403, which
would confirm that the id exists). Admins see everything."""

from __future__ import annotations

from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from service.auth import Principal
from service.errors import not_found


class Owned(Protocol):
    owner: str


T = TypeVar("T", bound=Owned)


def get_owned(session: Session, model: type[T], ident: str, principal: Principal, kind: str) -> T:
    row = session.get(model, ident)
    if row is None or (not principal.admin and row.owner != principal.name):
        raise not_found(kind, ident)
    return row
