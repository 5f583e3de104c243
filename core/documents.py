"""The JSON documents the API answers with, declared once: the service's routes return them
(so the OpenAPI schema describes every response, and a route that drifts from its declaration
fails loudly in the tests instead of silently in a client), and `thresher.client` parses into
them (so a user's editor knows the fields).

Where a document holds a method's own figures (a job's `best`, its `spec`) the common fields are
declared and the rest is allowed through: methods add their own (`compact`, `blockdiag`, …)
without a schema change here.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Document(BaseModel):
    # documents are read by clients older or newer than the server: unknown fields pass through
    model_config = ConfigDict(extra="allow")


class Page(Document, Generic[T]):
    items: list[T]
    total: int = Field(description="items in all pages")
    offset: int
    limit: int


class Layer(Document):
    name: str
    kind: str
    shape: list[int | None]
    parameters: int = Field(description="trainable values (0 for a buffer)")
    prunable: bool
    buffer: bool
    dtype: str


class ArchitectureDoc(Document):
    name: str
    description: str = ""
    architecture: str
    input_shape: list[int | None]
    num_classes: int
    layers: list[Layer]
    total_parameters: int
    prunable_parameters: int


class GraphSummary(Document):
    nodes: int
    ops: dict[str, int] = Field(description="aten op → nodes calling it")
    dynamic_batch: bool
    input_shape: list[int | None]


class ModelDoc(Document):
    id: str
    name: str | None
    weights_sha256: str
    created_at: str
    architecture: str = Field(description="a registered architecture, or 'graph' for a .pt2 upload")
    input_shape: list[int | None]
    num_classes: int
    layers: list[Layer]
    total_parameters: int
    prunable_parameters: int
    source: str | None = Field(None, description="'torch.export' for an uploaded archive")
    graph: GraphSummary | None = None
    archive_sha256: str | None = None


class Splits(Document):
    train: int
    validation: int
    test: int


class DatasetDoc(Document):
    id: str
    name: str | None
    builtin: str | None
    created_at: str
    source: str
    sample_shape: list[int]
    classes: int
    splits: Splits
    validation: dict[str, Any] = Field(description="how the validation split was drawn")
    dtype: str
    preprocessing: str | None


class Progress(Document):
    trials_done: int
    trials_total: int
    fraction: float
    stage: str | None
    round: int | None = Field(None, description="multi-round methods (olmp): the round the last "
                              "recorded trial belongs to, from 0; retraining attempts count on "
                              "after the last round")
    rounds: int | None = Field(None, description="multi-round methods: rounds planned")


# The reference's figures beyond val/test accuracy that a method may record and that both the job
# document and the download's manifest pass on: olmp's and l0/sgl's hold-out (the reference on the
# images that steer and on those that confirm) and olmp's search split (`train`: its round searches
# score candidates on training images).
REFERENCE_DETAILS = ("steered_on", "confirm_val_accuracy", "confirmed_on", "search_split")


class ReferenceFigures(Document):
    val_accuracy: float | None
    test_accuracy: float | None
    total_parameters: int | None


class Best(Document):
    """The best feasible trial's figures; methods add their downloads' own (`compact`, …)."""

    trial_number: int | None = None
    stage: str | None = None
    compression_ratio: float | None = None
    weights_ratio: float | None = None
    nonzero: int | None = None
    total: int | None = None
    val_accuracy: float | None = None
    accuracy_drop: float | None = None
    scored_on: int | None = None
    keep_ratios: dict[str, Any] | None = None


class ArtifactDoc(Document):
    format: str = Field(description="GET /v1/jobs/{id}/checkpoint?format=<format>")
    architecture: str
    architecture_config: dict[str, Any]
    sha256: str


class JobDoc(Document):
    id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    model_id: str
    dataset_id: str
    method: str
    optimizer: str
    max_accuracy_drop: float
    seed: int
    spec: dict[str, Any] = Field(description="the submitted spec with every default filled in")
    progress: Progress
    reference: ReferenceFigures
    best: Best | None
    test_accuracy: float | None
    artifacts: list[ArtifactDoc]
    error: str | None
    attempt: int
    worker: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str


class TrialMetrics(Document):
    val_accuracy: float | None
    accuracy_drop: float | None
    scored_on: int
    nonzero: int | None
    total: int
    compression_ratio: float | None
    weights_ratio: float | None
    objective: float | None


class TrialDoc(Document):
    number: int
    stage: str
    round: int
    candidate: list[Any]
    keep_ratios: dict[str, Any]
    metrics: TrialMetrics
    feasible: bool
    error: str | None
    duration_ms: float
    worker: str | None
    pruned: bool
    intermediate: list[Any] | None


class ParetoDoc(Document):
    objectives: dict[str, str]
    items: list[TrialDoc]
    total: int


class WorkerDoc(Document):
    name: str
    host: str | None
    pid: int | None
    device: str | None
    current_job_id: str | None
    last_seen: str


class Health(Document):
    status: str
