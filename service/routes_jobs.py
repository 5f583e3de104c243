"""Jobs: submit, list, inspect, trials, checkpoint download, cancel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from core.architectures import model_architecture
from core.documents import JobDoc, Page, ParetoDoc, TrialDoc, WorkerDoc
from core.settings import Settings
from core.spec import JobSpec
from service.admission import check_admission, queue_job
from service.auth import Principal, current_principal, require_admin
from service.deps import WriteSession, db, settings
from service.errors import ERROR_RESPONSES, ApiError
from service.job_figures import pareto_front
from service.ownership import get_owned
from service.views import job_doc, trial_doc, worker_doc
from store import blobs, records
from store.db import transaction
from store.models import Blob, Dataset, Job, Model

router = APIRouter(prefix="/v1", tags=["jobs"], responses=ERROR_RESPONSES)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


@router.post("/jobs", status_code=201, response_model=JobDoc)
def create_job(spec: JobSpec, session: WriteSession,
               principal: Principal = Depends(current_principal),
               cfg: Settings = Depends(settings)) -> dict[str, Any]:
    model = get_owned(session, Model, spec.model_id, principal, "model")
    dataset = get_owned(session, Dataset, spec.dataset_id, principal, "dataset")
    check_admission(session, spec, model_architecture(model.architecture, model.summary), dataset.summary, principal, cfg)
    return job_doc(queue_job(session, spec, model.id, dataset.id, principal))


@router.get("/jobs", response_model=Page[JobDoc])
def list_jobs(
    session: Session = Depends(db),
    principal: Principal = Depends(current_principal),
    offset: int = Query(0, ge=0, le=10_000_000),
    limit: int = Query(50, ge=1, le=500),
    status: str | None = Query(None, description=f"one of {JOB_STATUSES}"),
) -> dict[str, Any]:
    if status is not None and status not in JOB_STATUSES:
        raise ApiError(422, "invalid_input", f"status: unknown status {status!r}; choose one of "
                                             f"{list(JOB_STATUSES)}")
    rows, total = records.list_jobs(session, offset=offset, limit=limit, status=status,
                                    owner=principal.owner_filter())
    return {"items": [job_doc(j) for j in rows], "total": total, "offset": offset, "limit": limit}


@router.get("/jobs/{job_id}", response_model=JobDoc)
def get_job(job_id: str, session: Session = Depends(db),
            principal: Principal = Depends(current_principal)) -> dict[str, Any]:
    return job_doc(get_owned(session, Job, job_id, principal, "job"))


@router.get("/jobs/{job_id}/trials", response_model=Page[TrialDoc])
def get_trials(
    job_id: str,
    session: Session = Depends(db),
    principal: Principal = Depends(current_principal),
    offset: int = Query(0, ge=0, le=10_000_000),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    get_owned(session, Job, job_id, principal, "job")
    rows, total = records.list_trials(session, job_id, offset=offset, limit=limit)
    return {"items": [trial_doc(t) for t in rows], "total": total, "offset": offset, "limit": limit}


@router.get("/jobs/{job_id}/pareto", response_model=ParetoDoc)
def get_pareto(job_id: str, session: Session = Depends(db),
               principal: Principal = Depends(current_principal)) -> dict[str, Any]:
    """The non-dominated trials: none other has both a higher compression ratio and a higher
    validation accuracy. Failed trials and trials a pruner stopped are left out."""
    get_owned(session, Job, job_id, principal, "job")
    numbers = [p.number for p in pareto_front(records.trial_points(session, job_id))]
    rows = records.trials_numbered(session, job_id, numbers)
    return {"objectives": {"compression_ratio": "maximize", "val_accuracy": "maximize"},
            "items": [trial_doc(t) for t in rows], "total": len(rows)}


@router.post("/jobs/{job_id}/cancel", response_model=JobDoc)
def cancel_job(job_id: str, session: WriteSession,
               principal: Principal = Depends(current_principal)) -> dict[str, Any]:
    job = get_owned(session, Job, job_id, principal, "job")
    cancelled = records.cancel_job(session, job_id)
    if cancelled is None:
        raise ApiError(409, "conflict", f"job {job_id} is already {job.status}")
    return job_doc(cancelled)


@router.get("/jobs/{job_id}/checkpoint", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "safetensors with a JSON manifest in its metadata"}})
def download_checkpoint(
    job_id: str, request: Request, session: Session = Depends(db),
    principal: Principal = Depends(current_principal),
    format: str = Query(
        "pruned", max_length=40,
        description="which of the job's downloads (its document's `artifacts`): pruned, the "
        "model's own shapes with zeros; compact, where whole neurons or filters were pruned "
        "(methods l0, sgl), smaller dense shapes and their architecture config in the manifest; "
        "blockdiag (method mpd), the blocks and permutation indices; decomposed (method tucker), "
        "the Tucker-2 / SVD factors; pt2 (a model uploaded as a torch.export archive), that archive "
        "with the pruned weights, for torch.export.load. `thresher.load` runs each safetensors "
        "format"),
) -> StreamingResponse:
    job = get_owned(session, Job, job_id, principal, "job")
    if job.status != "succeeded" or not job.artifacts:
        raise ApiError(409, "conflict", f"job {job_id} is {job.status}; the checkpoint is available "
                                        "once it has succeeded")
    offered = {a.format: a for a in job.artifacts}
    if format not in offered:
        extra = (" (no whole neuron or filter was pruned: methods l0 and sgl prune them; l0 with "
                 "regularization.granularity 'neuron')" if format == "compact" else "")
        raise ApiError(409, "conflict", f"job {job_id} has no {format!r} checkpoint{extra}; it "
                                        f"offers {sorted(offered)}")
    sha = offered[format].blob_sha256
    blob = session.get(Blob, sha)
    assert blob is not None
    factory = request.app.state.sessions

    def stream() -> Iterator[bytes]:
        # Its own transaction: the request's session is closed once the handler returns.
        with transaction(factory, write=False) as s:
            yield from blobs.iter_chunks(s, sha)

    return StreamingResponse(
        stream(), media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="thresher-{job_id}'
                                        f'{"" if format == "pruned" else "-" + format}'
                                        f'{".pt2" if format == "pt2" else ".safetensors"}"',
                 "Content-Length": str(blob.size), "X-Checkpoint-SHA256": sha},
    )


@router.get("/workers", tags=["workers"], response_model=list[WorkerDoc])
def list_workers(session: Session = Depends(db),
                 principal: Principal = Depends(current_principal)) -> list[dict[str, Any]]:
    require_admin(principal)  # worker rows name other principals' jobs
    return [worker_doc(w) for w in records.list_workers(session)]
