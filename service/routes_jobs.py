"""Jobs: submit, list, inspect, trials, checkpoint download, cancel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from core.architectures import get_architecture
from core.errors import InvalidInput
from core.spec import JobSpec
from service.deps import db, db_write
from service.errors import ApiError, not_found
from service.uploads import check_compatible
from service.views import job_doc, trial_doc, worker_doc
from store import blobs, records
from store.db import transaction
from store.models import Blob, Dataset, Job, Model

router = APIRouter(prefix="/v1", tags=["jobs"])
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _job(session: Session, job_id: str) -> Job:
    row = session.get(Job, job_id)
    if row is None:
        raise not_found("job", job_id)
    return row


@router.post("/jobs", status_code=201)
def create_job(spec: JobSpec, session: Session = Depends(db_write)) -> dict[str, Any]:
    model = session.get(Model, spec.model_id)
    if model is None:
        raise not_found("model", spec.model_id)
    dataset = session.get(Dataset, spec.dataset_id)
    if dataset is None:
        raise not_found("dataset", spec.dataset_id)
    check_compatible(get_architecture(model.architecture), dataset.summary)
    subset = spec.search.validation_subset
    n_val = dataset.summary["splits"]["validation"]
    if subset is not None and subset > n_val:
        raise InvalidInput(f"search.validation_subset {subset} exceeds the dataset's {n_val} "
                           "validation samples", field="search.validation_subset")
    row = records.add_job(session, model_id=model.id, dataset_id=dataset.id,
                          spec=spec.model_dump(mode="json"), trials_total=spec.budget.trials)
    return job_doc(row)


@router.get("/jobs")
def list_jobs(
    session: Session = Depends(db),
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=500),
    status: str | None = Query(None, description=f"one of {JOB_STATUSES}"),
) -> dict[str, Any]:
    if status is not None and status not in JOB_STATUSES:
        raise ApiError(422, "invalid_input", f"status: unknown status {status!r}; choose one of "
                                             f"{list(JOB_STATUSES)}")
    rows, total = records.list_jobs(session, offset=offset, limit=limit, status=status)
    return {"items": [job_doc(j) for j in rows], "total": total, "offset": offset, "limit": limit}


@router.get("/jobs/{job_id}")
def get_job(job_id: str, session: Session = Depends(db)) -> dict[str, Any]:
    return job_doc(_job(session, job_id))


@router.get("/jobs/{job_id}/trials")
def get_trials(
    job_id: str,
    session: Session = Depends(db),
    offset: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    _job(session, job_id)
    rows, total = records.list_trials(session, job_id, offset=offset, limit=limit)
    return {"items": [trial_doc(t) for t in rows], "total": total, "offset": offset, "limit": limit}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, session: Session = Depends(db_write)) -> dict[str, Any]:
    job = _job(session, job_id)
    cancelled = records.cancel_job(session, job_id)
    if cancelled is None:
        raise ApiError(409, "conflict", f"job {job_id} is already {job.status}")
    return job_doc(cancelled)


@router.get("/jobs/{job_id}/checkpoint", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "safetensors with a JSON manifest in its metadata"}})
def download_checkpoint(job_id: str, request: Request, session: Session = Depends(db)) -> StreamingResponse:
    job = _job(session, job_id)
    if job.status != "succeeded" or job.checkpoint_sha256 is None:
        raise ApiError(409, "conflict", f"job {job_id} is {job.status}; the checkpoint is available "
                                        "once it has succeeded")
    sha = job.checkpoint_sha256
    size = session.get(Blob, sha).size  # type: ignore[union-attr]
    factory = request.app.state.sessions

    def stream() -> Iterator[bytes]:
        # Its own transaction: the request's session is closed once the handler returns.
        with transaction(factory, write=False) as s:
            yield from blobs.iter_chunks(s, sha)

    return StreamingResponse(
        stream(), media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="thresher-{job_id}.safetensors"',
                 "Content-Length": str(size), "X-Checkpoint-SHA256": sha},
    )


@router.get("/workers", tags=["workers"])
def list_workers(session: Session = Depends(db)) -> list[dict[str, Any]]:
    return [worker_doc(w) for w in records.list_workers(session)]
