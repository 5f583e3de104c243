"""POST/GET /v1/models: upload weights for a registered architecture."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import UploadFile as StarletteUpload

from core.architectures import get_architecture, registry
from core.settings import Settings
from service.auth import Principal, current_principal
from service.deps import db, session_factory, settings
from service.errors import ERROR_RESPONSES, ApiError
from service.ownership import get_owned
from service.uploads import validate_weights
from service.views import model_doc
from store import blobs, records
from store.db import transaction
from store.models import Model

router = APIRouter(prefix="/v1", tags=["models"], responses=ERROR_RESPONSES)


async def read_upload(upload: StarletteUpload, field: str, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"{field} is larger than the limit of {limit} bytes")
    if not data:
        raise ApiError(422, "invalid_input", f"{field} is empty")
    return data


@router.get("/architectures")
def list_architectures(_: Principal = Depends(current_principal)) -> list[dict[str, Any]]:
    return [{"name": a.name, "description": a.description, **a.summary()} for a in registry().values()]


@router.post("/models", status_code=201)
async def create_model(
    weights: Annotated[UploadFile, File(description="safetensors file with float32 tensors")],
    architecture: Annotated[str, Form(description="a registered architecture name")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    principal: Principal = Depends(current_principal),
    cfg: Settings = Depends(settings),
    sessions: sessionmaker[Session] = Depends(session_factory),
) -> dict[str, Any]:
    arch = get_architecture(architecture)
    data = await read_upload(weights, "weights", cfg.max_upload_bytes)
    validate_weights(data, arch, cfg)
    # The write lock is taken only now, after the (possibly slow) validation.
    with transaction(sessions) as session:
        sha = blobs.put(session, data)
        row = records.add_model(session, architecture=arch.name, weights_sha256=sha,
                                summary=arch.summary(), name=name, owner=principal.name)
        return model_doc(row)


@router.get("/models/{model_id}")
def get_model(model_id: str, session: Session = Depends(db),
              principal: Principal = Depends(current_principal)) -> dict[str, Any]:
    return model_doc(get_owned(session, Model, model_id, principal, "model"))
