"""What methods `l0` and `sgl` share: distributed training trials (workers.jobs.coordinator
searches the log10 strength boxes and queues them, workers.jobs.trial_items runs each) of one of
workers.methods.regularized's regularizers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from core.architectures import Architecture
from core.spec import JobSpec
from workers.jobs.coordinator import DistributedSearch
from workers.methods import MethodJob, TrialOutcome
from workers.methods.regularized import run_trial
from workers.runtime.data import Splits
from workers.search.trials import SearchResult


def strength_boxes(spec: JobSpec, arch: Architecture) -> list[tuple[float, float]]:
    """The log10 box of each searched strength: λ per prunable tensor, then (sgl) η per tensor."""
    o = spec.regularization
    boxes = [o.lambda_box(t.name) for t in arch.prunable]
    if spec.method == "sgl":
        boxes += [o.eta_box(t.name) for t in arch.prunable]
    return boxes


@dataclass(frozen=True)
class Regularized:
    regularizer: str

    def run(self, job: MethodJob) -> SearchResult:
        return DistributedSearch(
            job.arch, job.model, job.params, job.splits, job.spec, job.recorder,
            boxes=strength_boxes(job.spec, job.arch), infeasible="lower the log10 strength box",
            hold_out=self.hold_out(job.spec), confirm_attempts=job.spec.regularization.confirm_attempts,
            sessions=job.sessions, lease=job.lease, settings=job.settings, device=job.device,
            should_stop=job.should_stop, contexts=job.contexts).run()

    def trial_pruner(self, spec: JobSpec) -> tuple[str, int]:
        return spec.regularization.pruner, spec.regularization.epochs

    def hold_out(self, spec: JobSpec) -> float:
        return spec.regularization.confirm_fraction

    def train_trial(self, arch: Architecture, reference: dict[str, torch.Tensor], splits: Splits,
                    spec: JobSpec, candidate: Sequence[float], *, seed: int, device: torch.device,
                    report: Callable[[int, float], bool], check: Callable[[], None]) -> TrialOutcome:
        return run_trial(self.regularizer, arch, reference, splits, spec.regularization, candidate,
                         seed=seed, device=device, report=report, check=check)
