"""POST/GET /v1/datasets: a multipart upload (.safetensors / .npz) or a built-in by name."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import UploadFile

from core.documents import DatasetDoc, Page
from core.settings import Settings
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION
from service.auth import Principal, current_principal
from service.deps import db, session_factory, settings
from service.errors import ERROR_RESPONSES, ApiError
from service.ownership import get_owned
from service.routes_models import read_upload
from service.uploads import BUILTIN_DATASETS, builtin_summary, parse_dataset
from service.views import dataset_doc
from store import blobs, records
from store.db import transaction
from store.models import Dataset

router = APIRouter(prefix="/v1", tags=["datasets"], responses=ERROR_RESPONSES)


class DatasetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    builtin: str | None = None
    name: str | None = Field(None, max_length=200)
    validation_fraction: float = Field(DEFAULT_VALIDATION_FRACTION, gt=0, lt=1)
    split_seed: int = Field(DEFAULT_SPLIT_SEED, ge=0, le=2**31 - 1)


def _options(raw: dict[str, Any]) -> DatasetOptions:
    try:
        return DatasetOptions.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ApiError(422, "invalid_input", f"{loc}: {err['msg']}") from None


_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": ".safetensors or .npz with x_train, y_train, x_test, "
                                            "y_test and optional x_val, y_val"},
                    "name": {"type": "string"},
                    "validation_fraction": {"type": "number"},
                    "split_seed": {"type": "integer"},
                }}},
            "application/json": {"schema": {
                "type": "object", "required": ["builtin"],
                "properties": {"builtin": {"type": "string", "enum": list(BUILTIN_DATASETS)},
                               "name": {"type": "string"},
                               "validation_fraction": {"type": "number"},
                               "split_seed": {"type": "integer"}}}},
        },
    }
}


@router.post("/datasets", status_code=201, openapi_extra=_OPENAPI, response_model=DatasetDoc)
async def create_dataset(request: Request, cfg: Settings = Depends(settings),
                         sessions: sessionmaker[Session] = Depends(session_factory),
                         principal: Principal = Depends(current_principal)) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_input", "file: a multipart file field named 'file' is required")
        opts = _options({k: v for k, v in form.items() if k != "file"})
        data = await read_upload(upload, "file", cfg.max_upload_bytes)
        parsed = parse_dataset(data, cfg, validation_fraction=opts.validation_fraction,
                               split_seed=opts.split_seed)
        with transaction(sessions) as session:  # the write lock only after validation
            sha = blobs.put(session, parsed.canonical)
            row = records.add_dataset(session, summary=parsed.summary, builtin=None,
                                      blob_sha256=sha, name=opts.name, owner=principal.name)
            return dataset_doc(row)
    if ctype.startswith("application/json"):
        try:
            raw = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError(422, "invalid_input", f"body is not valid JSON ({type(exc).__name__})") from None
        if not isinstance(raw, dict):
            raise ApiError(422, "invalid_input", "body must be a JSON object")
        opts = _options(raw)
        if opts.builtin is None:
            raise ApiError(422, "invalid_input", "builtin: name a built-in dataset (e.g. 'mnist') "
                                                 "or upload a file as multipart/form-data")
        summary = builtin_summary(opts.builtin, cfg.datasets_dir, opts.validation_fraction,
                                  opts.split_seed)
        with transaction(sessions) as session:
            row = records.add_dataset(session, summary=summary, builtin=opts.builtin,
                                      blob_sha256=None, name=opts.name or opts.builtin,
                                      owner=principal.name)
            return dataset_doc(row)
    raise ApiError(415, "unsupported_media_type",
                   "send multipart/form-data with a 'file', or JSON {\"builtin\": \"mnist\"}")


@router.get("/datasets", response_model=Page[DatasetDoc])
def list_datasets(
    session: Session = Depends(db),
    principal: Principal = Depends(current_principal),
    offset: int = Query(0, ge=0, le=10_000_000),
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    """The principal's datasets, newest first: {"items", "total", "offset", "limit"}."""
    rows, total = records.page_of(session, Dataset, offset=offset, limit=limit,
                                  owner=principal.owner_filter())
    return {"items": [dataset_doc(d) for d in rows], "total": total, "offset": offset, "limit": limit}


@router.get("/datasets/{dataset_id}", response_model=DatasetDoc)
def get_dataset(dataset_id: str, session: Session = Depends(db),
                principal: Principal = Depends(current_principal)) -> dict[str, Any]:
    return dataset_doc(get_owned(session, Dataset, dataset_id, principal, "dataset"))
