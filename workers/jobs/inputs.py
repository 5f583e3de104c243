"""What every job starts from: its spec, the uploaded weights and the data, read from the database
(blobs through the worker's cache) and turned into tensors on the worker's device. Shared by the
job runner and the workers that train a job's trials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors  # parses tensors only, never pickle
from sqlalchemy.orm import Session

from core.architectures import Architecture, model_architecture
from core.settings import Settings
from core.spec import JobSpec
from store import blobs
from store.models import Dataset, Job, Model
from workers.runtime.data import Splits, load_splits


@dataclass
class JobInputs:
    spec: JobSpec
    architecture: str
    model_id: str
    weights_sha256: str
    weights: bytes
    dataset_id: str
    builtin: str | None
    data_blob: bytes | None
    dataset_summary: dict[str, Any]
    model_summary: dict[str, Any]

    def arch(self) -> Architecture:
        return model_architecture(self.architecture, self.model_summary)

    def params(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in load_safetensors(self.weights).items()}

    def splits(self, settings: Settings, device: torch.device) -> Splits:
        return load_splits(builtin=self.builtin, blob=self.data_blob, summary=self.dataset_summary,
                           datasets_dir=settings.datasets_dir).to(device)


def read_job_inputs(s: Session, job_id: str, settings: Settings) -> JobInputs:
    job = s.get(Job, job_id)
    assert job is not None
    model_row = s.get(Model, job.model_id)
    dataset_row = s.get(Dataset, job.dataset_id)
    assert model_row is not None and dataset_row is not None
    return JobInputs(
        spec=JobSpec.model_validate(job.spec), architecture=model_row.architecture,
        model_id=model_row.id, weights_sha256=model_row.weights_sha256,
        weights=blobs.read_cached(s, model_row.weights_sha256, settings.cache_dir),
        dataset_id=dataset_row.id, builtin=dataset_row.builtin,
        data_blob=(blobs.read_cached(s, dataset_row.blob_sha256, settings.cache_dir)
                   if dataset_row.blob_sha256 else None),
        dataset_summary=dict(dataset_row.summary), model_summary=dict(model_row.summary),
    )
