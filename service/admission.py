"""Whether a job may be queued: the checks the REST API and the dashboard's form share, so that
both refuse the same spec with the same message."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core import methods
from core.architectures import Architecture
from core.errors import InvalidInput
from core.settings import Settings
from core.spec import JobSpec, planned_trials
from service.auth import Principal
from service.errors import ApiError
from service.uploads import check_compatible
from store import records
from store.models import Job


def check_admission(session: Session, spec: JobSpec, arch: Architecture,
                    dataset_summary: dict[str, Any], principal: Principal, cfg: Settings) -> None:
    if spec.budget.trials > cfg.max_trials:
        raise InvalidInput(f"budget.trials {spec.budget.trials} exceeds this server's limit of "
                           f"{cfg.max_trials} trials per job", field="budget.trials")
    check_compatible(arch, dataset_summary)
    subset = spec.search.validation_subset
    n_val = dataset_summary["splits"]["validation"]
    if subset is not None and subset > n_val:
        raise InvalidInput(f"search.validation_subset {subset} exceeds the dataset's {n_val} "
                           "validation samples", field="search.validation_subset")
    info = methods.get(spec.method)
    admit = info.admit
    if admit is not None:
        try:
            admit(spec, arch, dataset_summary)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    active = records.count_active_jobs(session, principal.name)
    if active >= cfg.max_active_jobs:
        raise ApiError(429, "too_many_jobs",
                       f"{principal.name} already has {active} queued or running jobs (the limit is "
                       f"{cfg.max_active_jobs}); wait for one to finish or cancel one",
                       headers={"Retry-After": "30"})


def queue_job(session: Session, spec: JobSpec, model_id: str, dataset_id: str,
              principal: Principal) -> Job:
    """Add the job (after check_admission, in the same transaction)."""
    body = spec.model_copy(update={"model_id": model_id, "dataset_id": dataset_id})
    return records.add_job(session, model_id=model_id, dataset_id=dataset_id,
                           spec=body.model_dump(mode="json"), trials_total=planned_trials(body),
                           owner=principal.name)
