"""The `Method` protocol every compression method implements, and the loader the runner and the
trial items reach methods through (core.methods names the module of each). Nothing outside a
method's own modules imports it."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from core import methods
from core.architectures import Architecture
from core.settings import Settings
from core.spec import JobSpec
from store.queue import Lease
from workers.runtime.data import Splits
from workers.search.trials import SearchResult

if TYPE_CHECKING:
    from workers.jobs.trial_items import TrialContexts


@dataclass(frozen=True)
class MethodJob:
    """Everything a method's run gets: the claimed job's model, data and spec, where its trials go
    (`recorder`: replay, write, check, flush; with `save_state` for methods that keep training
    state), and what distributed methods need to queue trial items."""

    arch: Architecture
    model: nn.Module
    params: dict[str, torch.Tensor]
    splits: Splits
    spec: JobSpec
    recorder: Any
    state: bytes | None
    settings: Settings
    sessions: sessionmaker[Session]
    lease: Lease
    device: torch.device
    should_stop: Callable[[], None]
    # the worker's loaded trial contexts: a distributed method's coordinator shares its own
    contexts: TrialContexts


@dataclass
class TrialOutcome:
    """What one distributed trial hands back to the job (workers.jobs.trial_items stores it)."""

    params: dict[str, torch.Tensor]  # full-shape state dict, pruned entries exactly 0 (on CPU)
    val_accuracy: float  # on the FULL validation split, after fine-tuning (stopped: last epoch's)
    nonzero: int  # over ALL tensors of the model (biases included), like core.metrics
    total: int
    kept: dict[str, int]  # non-zeros per prunable tensor
    intermediate: list[float]  # val accuracy after each epoch (what trial pruners see)
    pruned_at: int | None  # epoch index at which `report` asked to stop, else None
    groups_kept: dict[str, int]  # neurons/filters left per prunable tensor (structure)
    # multiply-accumulates of one sample through the trial's model and through the reference,
    # for methods whose objective may be FLOPs (mpd, tucker); None elsewhere
    macs: int | None = None
    total_macs: int | None = None


class Method(Protocol):
    def run(self, job: MethodJob) -> SearchResult: ...


class DistributedMethod(Method, Protocol):
    def trial_pruner(self, spec: JobSpec) -> tuple[str, int]:
        """The trial pruner a job's trials use (none | median | hyperband) and over how many
        epochs they report."""
        ...

    def hold_out(self, spec: JobSpec) -> float:
        """The share of the validation split the job holds out from its trials (0: none): they
        are scored on the rest, and the coordinator confirms its result on these."""
        ...

    def train_trial(self, arch: Architecture, reference: dict[str, torch.Tensor], splits: Splits,
                    spec: JobSpec, candidate: Sequence[float], *, seed: int, device: torch.device,
                    report: Callable[[int, float], bool],
                    check: Callable[[], None]) -> TrialOutcome: ...


def load(name: str) -> Method:
    return cast(Method, importlib.import_module(methods.get(name).worker))


def load_distributed(name: str) -> DistributedMethod:
    info = methods.get(name)
    if info.trials != "distributed":
        raise ValueError(f"method {name} does not run distributed trials")
    return cast(DistributedMethod, importlib.import_module(info.worker))
