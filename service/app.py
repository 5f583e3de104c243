"""The FastAPI app factory."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from core.documents import Health
from core.settings import Settings
from service import (
    dashboard,
    errors,
    job_form,
    metrics,
    routes_datasets,
    routes_jobs,
    routes_models,
)
from service.auth import (
    SESSION_COOKIE,
    Principal,
    SignInRequired,
    check_address,
    current_principal,
    resolve,
)
from service.limits import BodyLimit, RateLimiter
from service.templating import TEMPLATES
from store.db import check_schema, make_engine, make_sessionmaker
from store.reconnect import wait_for_database

SESSION_SECONDS = 7 * 24 * 3600


def _local_path(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (never //host or a URL)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


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
    metrics.install(app, app.state.sessions)
    app.include_router(metrics.router)
    app.include_router(routes_models.router)
    app.include_router(routes_datasets.router)
    app.include_router(routes_jobs.router)
    app.include_router(job_form.router)  # before the dashboard's /jobs/{job_id}
    app.include_router(dashboard.router)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET" or target == "/":
            return RedirectResponse("/login", status_code=303)
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: Principal = Depends(current_principal)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> Response:
        if resolve(request, request.cookies.get(SESSION_COOKIE)) is None:
            return RedirectResponse("/login", status_code=303)
        # Swagger UI's script and style are served here (service.dashboard), not from a CDN
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Thresher API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/healthz", tags=["health"], response_model=Health)
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request, "login.html", {"error": None, "next": _local_path(request.query_params.get("next"))})

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: Annotated[str, Form(max_length=200)],
              next: Annotated[str, Form(max_length=2000)] = "/") -> Response:
        check_address(request)
        target = _local_path(next)
        if resolve(request, token.strip()) is None:
            return TEMPLATES.TemplateResponse(request, "login.html",
                                              {"error": "That token is unknown or revoked.",
                                               "next": target},
                                              status_code=401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, token.strip(), max_age=SESSION_SECONDS, httponly=True,
                            secure=cfg.cookie_secure, samesite="strict")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, secure=cfg.cookie_secure, samesite="strict")
        return response

    return app
