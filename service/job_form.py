"""The dashboard's new-job form: upload a model and data (or pick a built-in or an earlier upload),
choose method, optimizer, δ, budget and seed.

A submission goes through the API's own validation (core.spec.JobSpec, service.uploads,
service.admission) and gets the API's messages, each shown next to the field it names. Nothing is
written unless everything passes; then the model, the dataset and the job go in one transaction.
The lists offered come from the code (core.methods, core.optimizers, the architecture registry), never copies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import FormData, UploadFile

from core import methods, optimizers
from core.architectures import Architecture, get_architecture, model_architecture, registry
from core.errors import DatasetUnavailable, InvalidInput
from core.settings import Settings
from core.spec import JobSpec
from service.admission import check_admission, queue_job
from service.auth import Principal, page_principal
from service.deps import session_factory, settings
from service.errors import ApiError, validation_messages
from service.ownership import get_owned
from service.routes_models import read_upload
from service.templating import TEMPLATES
from service.uploads import BUILTIN_DATASETS, builtin_summary, parse_dataset, validate_weights
from store import blobs, records
from store.db import transaction
from store.models import Dataset, Model

router = APIRouter(include_in_schema=False)

DEFAULTS = {"model_source": "upload", "dataset_source": "builtin", "builtin": BUILTIN_DATASETS[0],
            "method": "magnitude", "optimizer": "nevergrad:NGOpt", "max_accuracy_drop": "0.005",
            "budget.trials": "300", "budget.parallel": "1", "seed": "0", "options": ""}
# Spec fields with a control of their own; everything else in the spec goes in "options" (JSON).
SPEC_FIELDS = {"method", "optimizer", "max_accuracy_drop", "budget", "seed"}


@dataclass
class Submission:
    values: dict[str, str]
    errors: dict[str, list[str]] = field(default_factory=dict)

    def fail(self, key: str, message: str) -> None:
        self.errors.setdefault(key, []).append(message)


def _spec_field(loc: str, text: str) -> str:
    """The form control an error of JobSpec belongs to."""
    head = loc.split(".")[0]
    if head == "budget":
        return "budget.parallel" if loc.startswith("budget.parallel") else "budget.trials"
    if head in SPEC_FIELDS:
        return head
    if loc:
        return "options"
    # model-level checks name their field first ("budget.trials (…) must be …")
    for key in ("budget.trials", "budget.parallel", "max_accuracy_drop", "method", "optimizer",
                "seed"):
        if text.startswith(key):
            return key
    return "form"


def _admission_field(exc: InvalidInput) -> str:
    return {"budget.trials": "budget.trials", "dataset_id": "dataset"}.get(exc.field or "", "options")


def _choices(session: Session, principal: Principal) -> dict[str, Any]:
    owner = principal.owner_filter()
    return {
        "architectures": sorted(registry().values(), key=lambda a: a.name),
        "methods": methods.names(),  # read at each render: methods are added as the code grows
        "optimizers": optimizers.OPTIMIZERS,
        "builtins": BUILTIN_DATASETS,
        "models": records.list_models(session, owner),
        "datasets": records.list_datasets(session, owner),
    }


def _render(request: Request, principal: Principal, sessions: sessionmaker[Session],
            sub: Submission, status: int = 200) -> HTMLResponse:
    with transaction(sessions, write=False) as session:
        choices = _choices(session, principal)
        return TEMPLATES.TemplateResponse(
            request, "new_job.html",
            {"principal": principal.name, "admin": principal.admin, "nav": "new", "v": sub.values,
             "errors": sub.errors, **choices},
            status_code=status)


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_form(request: Request, principal: Principal = Depends(page_principal),
                 sessions: sessionmaker[Session] = Depends(session_factory)) -> Response:
    return _render(request, principal, sessions, Submission(dict(DEFAULTS)))


def _text(form: FormData, key: str) -> str:
    value = form.get(key)
    return value.strip() if isinstance(value, str) else ""


def _file(form: FormData, key: str) -> UploadFile | None:
    value = form.get(key)
    # a file input left empty arrives as a part with no file name
    return value if isinstance(value, UploadFile) and value.filename else None


def _spec(sub: Submission) -> JobSpec | None:
    v = sub.values
    raw: dict[str, Any] = {}
    if v["options"]:
        try:
            options = json.loads(v["options"])
        except json.JSONDecodeError as exc:
            sub.fail("options", f"options: not valid JSON ({exc.msg} at line {exc.lineno} column "
                                f"{exc.colno})")
            return None
        if not isinstance(options, dict):
            sub.fail("options", "options: a JSON object is expected, e.g. {\"search\": {\"population\": 16}}")
            return None
        taken = sorted(set(options) & (SPEC_FIELDS | {"model_id", "dataset_id"}))
        if taken:
            sub.fail("options", f"options: set {taken[0]} with its own field, not in options")
            return None
        raw.update(options)
    for key in ("method", "optimizer", "max_accuracy_drop", "seed"):
        if v[key] != "":  # an empty field is a missing one, as in a JSON body without it
            raw[key] = v[key]
    raw["budget"] = {k: v[f"budget.{k}"] for k in ("trials", "parallel") if v[f"budget.{k}"] != ""}
    # the ids are filled in once the model and dataset exist
    raw.update(model_id="-", dataset_id="-")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        for loc, text in validation_messages(exc.errors()):
            sub.fail(_spec_field(loc, text), text)
        return None


async def _model(sub: Submission, form: FormData, session: Session, principal: Principal,
                 cfg: Settings) -> tuple[Architecture, bytes | str] | None:
    """The architecture and either the validated weights to store or the earlier model's id."""
    if sub.values["model_source"] == "existing":
        try:
            model = get_owned(session, Model, sub.values["model_id"], principal, "model")
            return model_architecture(model.architecture, model.summary), model.id
        except (ApiError, InvalidInput) as exc:
            sub.fail("model_id", exc.detail)
            return None
    try:
        arch = get_architecture(sub.values["architecture"])
    except InvalidInput as exc:
        sub.fail("architecture", exc.detail)
        return None
    upload = _file(form, "weights")
    if upload is None:
        sub.fail("weights", "weights: choose the model's .safetensors file")
        return None
    try:
        data = await read_upload(upload, "weights", cfg.max_upload_bytes)
        validate_weights(data, arch, cfg)
    except (ApiError, InvalidInput) as exc:
        sub.fail("weights", exc.detail)
        return None
    return arch, data


async def _dataset(sub: Submission, form: FormData, session: Session, principal: Principal,
                   cfg: Settings) -> tuple[dict[str, Any], bytes | str | None] | None:
    """The dataset's summary and its canonical bytes to store, the earlier dataset's id, or None
    for a built-in."""
    source = sub.values["dataset_source"]
    try:
        if source == "existing":
            ds = get_owned(session, Dataset, sub.values["dataset_id"], principal, "dataset")
            return ds.summary, ds.id
        if source == "upload":
            upload = _file(form, "dataset_file")
            if upload is None:
                sub.fail("dataset_file", "file: choose a .npz or .safetensors file")
                return None
            parsed = parse_dataset(await read_upload(upload, "file", cfg.max_upload_bytes), cfg)
            return parsed.summary, parsed.canonical
        return builtin_summary(sub.values["builtin"], cfg.datasets_dir), None
    except (ApiError, InvalidInput) as exc:
        key = {"existing": "dataset_id", "upload": "dataset_file"}.get(source, "builtin")
        sub.fail(key, exc.detail)
    except DatasetUnavailable as exc:
        sub.fail("builtin", str(exc))
    return None


@router.post("/jobs/new", response_class=HTMLResponse)
async def submit_job(request: Request, principal: Principal = Depends(page_principal),
                     cfg: Settings = Depends(settings),
                     sessions: sessionmaker[Session] = Depends(session_factory)) -> Response:
    form = await request.form(max_files=2, max_fields=30)
    keys = (*DEFAULTS, "architecture", "model_id", "dataset_id")
    sub = Submission({k: _text(form, k) for k in keys})
    spec = _spec(sub)
    with transaction(sessions, write=False) as session:
        model = await _model(sub, form, session, principal, cfg)
        dataset = await _dataset(sub, form, session, principal, cfg)
    if spec is None or model is None or dataset is None:
        return _render(request, principal, sessions, sub, status=422)
    (arch, weights), (summary, data) = model, dataset
    try:
        # the write lock only now, after the uploads were read and checked
        with transaction(sessions) as session:
            check_admission(session, spec, arch, summary, principal, cfg)
            if isinstance(weights, str):
                model_id = weights
            else:
                sha = blobs.put(session, weights)
                model_id = records.add_model(session, architecture=arch.name, weights_sha256=sha,
                                             summary=arch.summary(), name=_name(form, "weights"),
                                             owner=principal.name).id
            if isinstance(data, str):
                dataset_id = data
            elif data is None:
                builtin = sub.values["builtin"]
                dataset_id = records.add_dataset(session, summary=summary, builtin=builtin,
                                                 blob_sha256=None, name=builtin,
                                                 owner=principal.name).id
            else:
                sha = blobs.put(session, data)
                dataset_id = records.add_dataset(session, summary=summary, builtin=None,
                                                 blob_sha256=sha, name=_name(form, "dataset_file"),
                                                 owner=principal.name).id
            job = queue_job(session, spec, model_id, dataset_id, principal)
    except InvalidInput as exc:
        sub.fail(_admission_field(exc), exc.detail)
        return _render(request, principal, sessions, sub, status=422)
    except ApiError as exc:  # the active-job limit
        sub.fail("form", exc.detail)
        return _render(request, principal, sessions, sub, status=exc.status)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


def _name(form: FormData, key: str) -> str | None:
    upload = _file(form, key)
    return upload.filename[:200] if upload is not None and upload.filename else None
