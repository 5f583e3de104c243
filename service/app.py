"""The FastAPI app factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from core.settings import Settings
from service import errors, routes_datasets, routes_jobs, routes_models
from service.deps import db
from service.views import job_doc
from store import records
from store.db import check_schema, make_engine, make_sessionmaker

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def create_app(settings: Settings | None = None) -> FastAPI:
    cfg = settings or Settings()
    engine = make_engine(cfg.database_url)
    check_schema(engine)  # refuse to serve on a schema that is behind

    app = FastAPI(
        title="Thresher",
        version="0.1.0",
        description="Compression search for trained PyTorch models: upload a model and its data, "
        "ask for the smallest model within an accuracy drop, download the pruned checkpoint.",
    )
    app.state.settings = cfg
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    errors.install(app)
    app.include_router(routes_models.router)
    app.include_router(routes_datasets.router)
    app.include_router(routes_jobs.router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, session: Session = Depends(db)) -> HTMLResponse:
        rows, total = records.list_jobs(session, offset=0, limit=200)
        return TEMPLATES.TemplateResponse(
            request, "jobs.html", {"jobs": [job_doc(j) for j in rows], "total": total}
        )

    return app
