"""The FastAPI app factory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from core.settings import Settings
from service import errors, routes_datasets, routes_jobs, routes_models
from service.auth import SESSION_COOKIE, Principal, check_address, current_principal, resolve
from service.deps import db
from service.limits import BodyLimit, RateLimiter
from service.views import job_doc
from store import records
from store.db import check_schema, make_engine, make_sessionmaker
from store.reconnect import wait_for_database

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
SESSION_SECONDS = 7 * 24 * 3600


def create_app(settings: Settings | None = None) -> FastAPI:
    cfg = settings or Settings()
    engine = make_engine(cfg.database_url, sqlite_busy_timeout=cfg.sqlite_busy_timeout_seconds)
    wait_for_database(engine, "API")
    check_schema(engine)  # refuse to serve on a schema that is behind

    app = FastAPI(
        # the schema and its docs need a token too (bearer, or the dashboard's cookie): see below
        docs_url=None,
        openapi_url=None,
        title="Thresher",
        version="0.1.0",
        description="Compression search for trained PyTorch models: upload a model and its data, "
        "ask for the smallest model within an accuracy drop, download the pruned checkpoint. "
        "Every route but /healthz needs `Authorization: Bearer <token>`.",
    )
    app.state.settings = cfg
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.rate_limiter = RateLimiter(cfg.requests_per_minute)
    errors.install(app)
    app.add_middleware(BodyLimit, multipart_limit=cfg.max_upload_bytes, other_limit=cfg.max_json_bytes)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    app.include_router(routes_models.router)
    app.include_router(routes_datasets.router)
    app.include_router(routes_jobs.router)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Principal = Depends(current_principal)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> Response:
        if resolve(request, request.cookies.get(SESSION_COOKIE)) is None:
            return RedirectResponse("/login", status_code=303)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Thresher API")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, session: Session = Depends(db)) -> Response:
        principal = resolve(request, request.cookies.get(SESSION_COOKIE))
        if principal is None:
            return RedirectResponse("/login", status_code=303)
        rows, total = records.list_jobs(session, offset=0, limit=200, owner=principal.owner_filter())
        return TEMPLATES.TemplateResponse(
            request, "jobs.html",
            {"jobs": [job_doc(j) for j in rows], "total": total, "principal": principal.name},
        )

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, "login.html", {"error": None})

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: Annotated[str, Form(max_length=200)]) -> Response:
        check_address(request)
        if resolve(request, token.strip()) is None:
            return TEMPLATES.TemplateResponse(request, "login.html",
                                              {"error": "That token is unknown or revoked."},
                                              status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, token.strip(), max_age=SESSION_SECONDS, httponly=True,
                            secure=cfg.cookie_secure, samesite="strict")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, secure=cfg.cookie_secure, samesite="strict")
        return response

    return app
