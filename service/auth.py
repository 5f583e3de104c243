"""Who is calling: a bearer token, or the dashboard's session cookie holding one."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from service.errors import ApiError
from store import tokens
from store.db import transaction

SESSION_COOKIE = "thresher_session"


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool

    def owner_filter(self) -> str | None:
        """None for admins (they see everything), else the principal's own name."""
        return None if self.admin else self.name


def presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'")
        return value.strip()
    return request.cookies.get(SESSION_COOKIE)


def resolve(request: Request, token: str | None) -> Principal | None:
    if not token:
        return None
    with transaction(request.app.state.sessions, write=False) as session:
        row = tokens.lookup(session, token)
        return Principal(name=row.name, admin=row.admin) if row else None


def check_address(request: Request) -> None:
    """Unauthenticated calls share a request budget per client address: guessing tokens stays slow."""
    client = request.client.host if request.client else "unknown"
    request.app.state.rate_limiter.check(f"addr:{client}")


def current_principal(request: Request) -> Principal:
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    token = presented_token(request)
    principal = resolve(request, token)
    if principal is None:
        check_address(request)
        if token is None:
            raise ApiError(401, "unauthorized",
                           "missing token: send 'Authorization: Bearer <token>' (create one with "
                           "`thresher token create --name NAME`)")
        raise ApiError(401, "unauthorized", "the token is unknown or has been revoked")
    request.app.state.rate_limiter.check(f"principal:{principal.name}")
    request.state.principal = principal
    return principal


def require_admin(principal: Principal) -> None:
    if not principal.admin:
        raise ApiError(403, "forbidden", "this needs an admin token")


class SignInRequired(Exception):
    """A dashboard page was asked for without a valid session: the app redirects to /login."""


def page_principal(request: Request) -> Principal:
    """The principal of a dashboard page (cookie, or a bearer header): as current_principal, but a
    missing or unknown token sends the browser to the sign-in page instead of a JSON 401."""
    try:
        return current_principal(request)
    except ApiError as exc:
        if exc.status == 401:
            raise SignInRequired() from None
        raise
