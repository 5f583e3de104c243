"""POST/GET /v1/models: upload weights for a registered architecture."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import UploadFile as StarletteUpload

from core.architectures import get_architecture, registry
from core.documents import ArchitectureDoc, ModelDoc, Page
from core.graph_program import graph_summary
from core.settings import Settings
from service.auth import Principal, current_principal
from service.deps import db, session_factory, settings
from service.errors import ERROR_RESPONSES, ApiError
from service.ownership import get_owned
from service.pt2_upload import parse_pt2
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


@router.get("/architectures", response_model=list[ArchitectureDoc])
def list_architectures(_: Principal = Depends(current_principal)) -> list[dict[str, Any]]:
    return [{"name": a.name, "description": a.description, **a.summary()} for a in registry().values()]


@router.post("/models", status_code=201, response_model=ModelDoc)
async def create_model(
    weights: Annotated[UploadFile | None, File(
        description="safetensors file with the architecture's tensors")] = None,
    architecture: Annotated[str | None, Form(description="a registered architecture name")] = None,
    file: Annotated[UploadFile | None, File(
        description="a torch.export archive (.pt2), instead of weights and architecture")] = None,
    name: Annotated[str | None, Form(max_length=200)] = None,
    principal: Principal = Depends(current_principal),
    cfg: Settings = Depends(settings),
    sessions: sessionmaker[Session] = Depends(session_factory),
) -> dict[str, Any]:
    if file is not None:
        if weights is not None or architecture is not None:
            raise ApiError(422, "invalid_input", "send either file (a .pt2 archive) or weights with "
                           "architecture, not both")
        archive = await read_upload(file, "file", cfg.max_upload_bytes)
        parsed = parse_pt2(archive, cfg)
        arch, data = parsed.architecture, parsed.weights
        summary = {**arch.summary(), "source": "torch.export", "graph": graph_summary(
            arch.config["program"]), "architecture_config": dict(arch.config)}  # type: ignore[arg-type]
    else:
        if weights is None or architecture is None:
            raise ApiError(422, "invalid_input", "send weights and architecture (a registered "
                           "architecture's tensors), or file (a torch.export archive, .pt2)")
        arch = get_architecture(architecture)
        data = await read_upload(weights, "weights", cfg.max_upload_bytes)
        validate_weights(data, arch, cfg)
        summary = arch.summary()
    # The write lock is taken only now, after the (possibly slow) validation.
    with transaction(sessions) as session:
        sha = blobs.put(session, data)
        if file is not None:
            # the archive itself, so a download can hand back the user's own program
            summary["archive_sha256"] = blobs.put(session, archive)
        row = records.add_model(session, architecture=arch.name, weights_sha256=sha,
                                summary=summary, name=name, owner=principal.name)
        return model_doc(row)


@router.get("/models", response_model=Page[ModelDoc])
def list_models(
    session: Session = Depends(db),
    principal: Principal = Depends(current_principal),
    offset: int = Query(0, ge=0, le=10_000_000),
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    """The principal's models, newest first: {"items", "total", "offset", "limit"}."""
    rows, total = records.page_of(session, Model, offset=offset, limit=limit,
                                  owner=principal.owner_filter())
    return {"items": [model_doc(m) for m in rows], "total": total, "offset": offset, "limit": limit}


@router.get("/models/{model_id}", response_model=ModelDoc)
def get_model(model_id: str, session: Session = Depends(db),
              principal: Principal = Depends(current_principal)) -> dict[str, Any]:
    return model_doc(get_owned(session, Model, model_id, principal, "model"))
