"""Every error leaves the API as JSON {"error", "detail"} with a 4xx that names the problem."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import DatasetUnavailable, InvalidInput
from store.reconnect import describe, is_unavailable

DATABASE_RETRY_AFTER_SECONDS = 5


class ErrorBody(BaseModel):
    error: str
    detail: str


def _described(text: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": text}


# Documented on every route so that clients (and schema-driven fuzzers) know every error's shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _described("the body could not be parsed"),
    401: _described("missing, unknown or revoked token"),
    403: _described("an admin token is needed"),
    404: _described("no such resource for this principal"),
    409: _described("the resource is not in a state that allows this"),
    413: _described("the body is over the configured limit"),
    415: _described("unsupported content type"),
    422: _described("invalid input; the detail names the field, tensor or array"),
    429: _described("rate or job limit reached; see Retry-After"),
    503: _described("the database is unreachable for now (retry after Retry-After seconds), or a "
                    "built-in dataset is unavailable on this server"),
}


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers or {}


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"{kind} {ident!r} not found")


def _body(error: str, detail: str) -> dict[str, str]:
    return {"error": error, "detail": detail}


def validation_messages(errors: Sequence[Any]) -> list[tuple[str, str]]:
    """(field path, message) for each pydantic error, the message as the API reports it. The
    dashboard's form shows the same messages next to its fields."""
    out = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.append((loc, f"{loc}: {msg}" if loc else msg))
    return out


def _validation_detail(exc: RequestValidationError) -> str:
    return "; ".join(text for _, text in validation_messages(exc.errors())) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        headers = dict(exc.headers)
        if exc.status == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        return JSONResponse(_body(exc.error, exc.detail), status_code=exc.status, headers=headers)

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(_body("invalid_input", exc.detail), status_code=422)

    @app.exception_handler(DatasetUnavailable)
    async def _dataset(_: Request, exc: DatasetUnavailable) -> JSONResponse:
        return JSONResponse(_body("dataset_unavailable", str(exc)), status_code=503)

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        # The pool reconnects by itself (pre-ping) once the database is back: no restart needed.
        if not is_unavailable(exc):
            raise exc
        return JSONResponse(
            _body("database_unavailable", f"the database is unreachable for now: {describe(exc)}"),
            status_code=503, headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_body("invalid_input", _validation_detail(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                 413: "too_large"}.get(exc.status_code, "http_error")
        detail = str(exc.detail)
        if exc.status_code in (404, 405) and detail in ("Not Found", "Method Not Allowed"):
            verb = "no such route" if exc.status_code == 404 else "method not allowed"
            detail = f"{verb}: {request.method} {request.url.path}"
        return JSONResponse(_body(error, detail), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
