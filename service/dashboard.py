"""The dashboard's pages (server-rendered) and the JSON their polling reads.

Pages sign in with the session cookie (page_principal redirects to /login without one). Every
lookup goes through the same ownership rule as the API: another principal's job is a 404, here
and in the polling JSON. Polling answers {"version", "final", "parts": {element id: html}}, or
204 when the version the browser holds is still current, so an idle page costs one small query.
"""

from __future__ import annotations

import hashlib
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from service import job_page
from service.auth import Principal, current_principal, page_principal
from service.deps import WriteSession, db
from service.errors import ApiError, not_found
from service.ownership import get_owned
from service.routes_jobs import JOB_STATUSES
from service.templating import STATIC_DIR, TEMPLATES
from service.views import job_doc, worker_doc
from store import records
from store.models import Job, utcnow

router = APIRouter(include_in_schema=False)
JOBS_PAGE_SIZE = 50
STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
# Swagger UI's files come from the fastapi-offline package, so /docs works without a CDN.
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "favicon.png": "image/png"}


def _page(request: Request, template: str, principal: Principal, http_status: int = 200,
          **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, template, {"principal": principal.name, "admin": principal.admin, **context},
        status_code=http_status)


def _not_found_page(request: Request, principal: Principal, what: str) -> HTMLResponse:
    return _page(request, "not_found.html", principal, http_status=404, what=what, nav=None)


def _parts(version: str, final: bool, parts: dict[str, str]) -> JSONResponse:
    return JSONResponse({"version": version, "final": final, "now": utcnow().isoformat(),
                         "parts": parts}, headers={"Cache-Control": "no-store"})


# -- jobs ------------------------------------------------------------------------------------

def _jobs_context(session: Session, principal: Principal, status: str | None, page: int) -> dict[str, Any]:
    rows, total = records.list_jobs(session, offset=(page - 1) * JOBS_PAGE_SIZE, limit=JOBS_PAGE_SIZE,
                                    status=status, owner=principal.owner_filter())
    return {"jobs": [job_doc(j) for j in rows], "total": total, "status": status, "page": page,
            "pages": max(-(-total // JOBS_PAGE_SIZE), 1), "statuses": JOB_STATUSES,
            "now": utcnow(), "show_owner": principal.admin}


def _list_args(request: Request) -> tuple[str | None, int]:
    status = request.query_params.get("status") or None
    page = request.query_params.get("page", "1")
    return (status if status in JOB_STATUSES else None,
            max(int(page), 1) if page.isdigit() and len(page) < 9 else 1)


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, session: Session = Depends(db),
              principal: Principal = Depends(page_principal)) -> Response:
    status, page = _list_args(request)
    return _page(request, "jobs.html", principal, nav="jobs",
                 **_jobs_context(session, principal, status, page))


@router.get("/ui/jobs")
def jobs_parts(request: Request, session: Session = Depends(db),
               principal: Principal = Depends(current_principal)) -> Response:
    status, page = _list_args(request)
    html = TEMPLATES.get_template("_jobs_table.html").render(
        _jobs_context(session, principal, status, page))
    return _versioned(request, html, "jobs-table")


def _versioned(request: Request, html: str, part: str) -> Response:
    """For lists: the version is the rendered HTML's hash (rendering a page of rows is cheap)."""
    version = hashlib.sha256(html.encode()).hexdigest()[:16]
    if request.query_params.get("v") == version:
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    return _parts(version, False, {part: html})


# -- one job ---------------------------------------------------------------------------------

@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_view(job_id: str, request: Request, session: Session = Depends(db),
             principal: Principal = Depends(page_principal)) -> Response:
    try:
        job = get_owned(session, Job, job_id, principal, "job")
    except ApiError:
        return _not_found_page(request, principal, f"job {job_id}")
    state = job_page.TableState.parse(request.query_params)
    ctx = job_page.context(session, job, state, utcnow())
    return _page(request, "job.html", principal, nav=None, **ctx)


@router.get("/ui/jobs/{job_id}")
def job_parts(job_id: str, request: Request, session: Session = Depends(db),
              principal: Principal = Depends(current_principal)) -> Response:
    job = get_owned(session, Job, job_id, principal, "job")
    if request.query_params.get("v") == job_page.version(job):
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    ctx = job_page.context(session, job, job_page.TableState.parse(request.query_params), utcnow())
    return _parts(ctx["version"], ctx["final"], job_page.render_parts(ctx))


@router.get("/ui/jobs/{job_id}/trials")
def trials_part(job_id: str, request: Request, session: Session = Depends(db),
                principal: Principal = Depends(current_principal)) -> Response:
    """The trial table alone, as the user sorts, pages or filters it."""
    job = get_owned(session, Job, job_id, principal, "job")
    ctx = job_page.context(session, job, job_page.TableState.parse(request.query_params), utcnow())
    return _parts(ctx["version"], ctx["final"], job_page.render_parts(ctx, ("job-trials",)))


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: str, session: WriteSession,
           principal: Principal = Depends(page_principal)) -> Response:
    """The dashboard's cancel button (the API's POST /v1/jobs/{id}/cancel answers JSON instead).
    A job that is already final stays as it is; the page shows its status either way."""
    get_owned(session, Job, job_id, principal, "job")
    records.cancel_job(session, job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


# -- workers ---------------------------------------------------------------------------------

def _workers_context(session: Session, lease_seconds: float) -> dict[str, Any]:
    now = utcnow()
    # a worker heartbeats well within its lease; one silent for longer has stopped or was lost
    workers = [{**worker_doc(w), "silent": (now - w.last_seen).total_seconds() > lease_seconds}
               for w in records.list_workers(session)]
    return {"workers": workers, "now": now}


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, session: Session = Depends(db),
                 principal: Principal = Depends(page_principal)) -> Response:
    if not principal.admin:  # as GET /v1/workers: worker rows name other principals' jobs
        return _page(request, "forbidden.html", principal, http_status=403, nav="workers")
    return _page(request, "workers.html", principal, nav="workers",
                 **_workers_context(session, request.app.state.settings.lease_seconds))


@router.get("/ui/workers")
def workers_parts(request: Request, session: Session = Depends(db),
                  principal: Principal = Depends(current_principal)) -> Response:
    if not principal.admin:
        raise ApiError(403, "forbidden", "this needs an admin token")
    html = TEMPLATES.get_template("_workers_table.html").render(
        _workers_context(session, request.app.state.settings.lease_seconds))
    return _versioned(request, html, "workers-table")


# -- files -----------------------------------------------------------------------------------

def _file(path: Path, media_type: str) -> FileResponse:
    # the URLs carry a version (?v=…), so a long cache is safe
    return FileResponse(path, media_type=media_type,
                        headers={"Cache-Control": "private, max-age=86400"})


@router.get("/static/{name}")
def static(name: str, _: Principal = Depends(current_principal)) -> Response:
    if name not in STATIC_FILES:
        raise not_found("file", name)
    return _file(STATIC_DIR / name, STATIC_FILES[name])


def _docs_assets_dir() -> Path | None:
    spec = find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@router.get("/docs/assets/{name}")
def docs_asset(name: str, _: Principal = Depends(current_principal)) -> Response:
    folder = _docs_assets_dir()
    if name not in DOCS_ASSETS or folder is None or not (folder / name).is_file():
        raise not_found("file", name)
    return _file(folder / name, DOCS_ASSETS[name])
