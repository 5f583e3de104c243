"""Method `mpd` (core.methods.mpd): MPDCompress's permuted block-diagonal masks, trained in, with the
block count of every layer searched under the job's δ.

The candidate of a trial is a list of typed values (workers.search.space): k for every layer that
allows more than one block count (or one shared k), then the permutation seed when more than one
is searched, then, with `prune_blocks`, each layer's log10 keep ratio inside its blocks. A layer's
blocking depends only on its shape, its k and the permutation seed (workers.models.blockdiag), so
the same candidate means the same masks in every trial, on every worker, and in the download.

A trial (`train_trial`) starts from the uploaded weights times the masks and trains with Adam,
cosine-annealed to 0, the gradient masked and the weights re-masked after every step, in train
mode (BatchNorm's statistics follow the masked weights), scoring the validation split after each
epoch for the trial pruner. The job's result also downloads as `blockdiag`: the blocks and their
permutation indices, which `thresher.load` runs as batched matmuls and grouped convolutions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from core.architectures import Architecture, Tensor
from core.methods.mpd import MpdOptions, choices, fixed_layers, shared_k
from core.spec import JobSpec
from workers.jobs.coordinator import DistributedSearch
from workers.methods import MethodJob, TrialOutcome
from workers.models import blockdiag_artifact, derived, zoo
from workers.models.blockdiag import Blocking, blocking, fitted_blocking, weight_mask
from workers.models.flops import macs
from workers.models.masking import nonzero_parameters
from workers.runtime.batchnorm import recalibrate
from workers.runtime.data import Splits
from workers.runtime.evaluation import accuracy
from workers.runtime.fine_tuning import train, training_data
from workers.search.space import Choice, Integer, Real, Space, Value
from workers.search.trials import ExtraArtifact, SearchResult

# training images over which a trial recomputes BatchNorm's statistics before each scoring
CALIBRATION_IMAGES = 2048
# a layer's blocking seed: the permutation seed and the layer's index
_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Plan:
    """What a candidate asks of every prunable layer: its k (1: dense) and, with prune_blocks,
    the share of its block entries kept."""

    blocks: dict[str, int]
    keep: dict[str, float]
    permutation_seed: int

    fitted: bool = False

    def blockings(self, arch: Architecture, reference: dict[str, torch.Tensor]
                  ) -> dict[str, Blocking]:
        out = {}
        for i, t in enumerate(arch.prunable):
            seed, k = _SEED_STRIDE * self.permutation_seed + i, self.blocks[t.name]
            out[t.name] = (fitted_blocking(reference[t.name], k, seed) if self.fitted
                           else blocking(t.shape, k, seed))
        return out


def _searched(arch: Architecture, o: MpdOptions, fixed: frozenset[str]) -> list[Tensor]:
    return [t for t in arch.prunable if len(choices(t, o, fixed)) > 1]


def search_space(arch: Architecture, o: MpdOptions) -> tuple[Space, list[Value]]:
    """The variables of a job and its start point: each layer's middle block count (the shared
    k's middle value), permutation seed 0, every keep ratio at the top of its box."""
    variables: list[Choice | Integer | Real] = []
    start: list[Value] = []
    if o.share_blocks:
        values = tuple(k for k in o.blocks if k > 1) or (1,)
        variables.append(Choice(values))
        start.append(values[len(values) // 2])
    else:
        fixed = fixed_layers(arch)
        for t in _searched(arch, o, fixed):
            values = choices(t, o, fixed)
            variables.append(Choice(values))
            start.append(values[len(values) // 2])
    if o.permutation_seeds > 1:
        variables.append(Integer(0, o.permutation_seeds - 1))
        start.append(0)
    if o.prune_blocks:
        for _ in arch.prunable:
            variables.append(Real(*o.log10_keep))
            start.append(o.log10_keep[1])
    return Space(tuple(variables)), start


def plan_of(arch: Architecture, o: MpdOptions, candidate: Sequence[Any]) -> Plan:
    values = list(candidate)
    blocks = {t.name: 1 for t in arch.prunable}
    fixed = fixed_layers(arch)
    if o.share_blocks:
        k = int(values.pop(0))
        blocks = {t.name: shared_k(t, k, fixed) for t in arch.prunable}
    else:
        for t in _searched(arch, o, fixed):
            k = int(values.pop(0))
            if k not in choices(t, o, fixed):
                raise ValueError(f"layer {t.name} cannot take {k} blocks")
            blocks[t.name] = k
    seed = int(values.pop(0)) if o.permutation_seeds > 1 else 0
    keep = {t.name: 10.0 ** float(values.pop(0)) if o.prune_blocks else 1.0 for t in arch.prunable}
    if values:
        raise ValueError(f"the candidate has {len(values)} values more than the search space")
    return Plan(blocks, keep, seed, fitted=o.blocking == "fitted")


def _masks(arch: Architecture, plan: Plan, reference: dict[str, torch.Tensor]
           ) -> dict[str, torch.Tensor]:
    """Each layer's mask: its blocks, and with a keep ratio below 1 only the largest reference
    weights inside them (magnitude pruning within the structure)."""
    out = {}
    for t, (name, b) in zip(arch.prunable, plan.blockings(arch, reference).items(), strict=True):
        mask = weight_mask(b, t.shape)
        if plan.keep[name] < 1.0:
            inside = reference[name].detach().cpu().abs()[mask]
            n_keep = max(1, round(plan.keep[name] * inside.numel()))
            threshold = inside.kthvalue(inside.numel() - n_keep + 1).values
            mask = mask & (reference[name].detach().cpu().abs() >= threshold)
        out[name] = mask
    return out


def train_trial(arch: Architecture, reference: dict[str, torch.Tensor], splits: Splits,
                spec: JobSpec, candidate: Sequence[Any], *, seed: int, device: torch.device,
                report: Callable[[int, float], bool], check: Callable[[], None]) -> TrialOutcome:
    """Train `arch` from `reference` under the candidate's masks; score after each epoch
    (`report` True stops the trial there, `pruned_at` set); `check()` may raise to abort."""
    o = spec.mpd
    plan = plan_of(arch, o, candidate)
    masks = {k: v.to(device) for k, v in _masks(arch, plan, reference).items()}
    model: nn.Module = zoo.build(arch).to(device)
    weights = {t.name: reference[t.name].detach().to(device, torch.float32).clone()
               for t in arch.parameters}
    with torch.no_grad():
        for name, m in masks.items():
            weights[name].mul_(m)
    for w in weights.values():
        w.requires_grad_(True)
    buffers = {t.name: reference[t.name].detach().to(device).clone() for t in arch.buffers}
    data = training_data(splits.x_train, splits.y_train, o.train_subset, seed, device)
    x_val, y_val = splits.x_val.to(device), splits.y_val.to(device)

    def loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, {**weights, **buffers}, (xb,)), yb)

    def mask_gradients() -> None:
        for name, m in masks.items():
            grad = weights[name].grad
            if grad is not None:
                grad.mul_(m)  # Adam's moments of a masked weight stay 0: its update is 0

    def mask_weights() -> None:
        with torch.no_grad():
            for name, m in masks.items():
                weights[name].mul_(m)

    def score() -> float:
        recalibrate(model, buffers, lambda xb: functional_call(model, {**weights, **buffers}, (xb,)),
                    data.x[:CALIBRATION_IMAGES], o.batch_size)
        return accuracy(model, {**weights, **buffers}, x_val, y_val)

    intermediate, pruned_at = train(
        list(weights.values()), loss, data, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
        train_mode=model.train, score=score, report=report, check=check,
        after_backward=mask_gradients, after_step=mask_weights)
    out = {k: v.detach().cpu().contiguous() for k, v in {**weights, **buffers}.items()}
    kept = {t.name: int(torch.count_nonzero(out[t.name])) for t in arch.prunable}
    dense = zoo.build(arch)
    total_macs = macs(dense, arch.input_shape)
    dense.load_state_dict(out)
    return TrialOutcome(params=out, val_accuracy=intermediate[-1], nonzero=nonzero_parameters(arch, out),
                        total=arch.total_parameters, kept=kept, intermediate=intermediate,
                        pruned_at=pruned_at, groups_kept={},  # no unit is removed
                        macs=macs(dense, arch.input_shape, nonzero=True), total_macs=total_macs)


def trial_pruner(spec: JobSpec) -> tuple[str, int]:
    return spec.mpd.pruner, spec.mpd.epochs


def hold_out(_spec: JobSpec) -> float:
    return 0.0  # trials are scored on the whole validation split


# -- the job ---------------------------------------------------------------------------------


def blockdiag_result(arch: Architecture, reference: dict[str, torch.Tensor],
                     params: dict[str, torch.Tensor], plan: Plan, splits: Splits) -> ExtraArtifact:
    """The block-diagonal download of the best trial, with its accuracy recomputed on it."""
    cpu = {k: v.detach().cpu() for k, v in params.items()}
    blockings = plan.blockings(arch, reference)
    blocked = blockdiag_artifact.deployed(arch, cpu, blockings)
    dense = zoo.build(arch).eval()
    dense.load_state_dict(cpu)
    tensors, measured = derived.figures(arch, dense, blocked, splits, "blockdiag",
                                        derived_macs=macs(dense, arch.input_shape, nonzero=True))
    parameters, indices = blockdiag_artifact.parameter_count(blocked)
    doc = {"parameters": parameters, "permutation_indices": indices,
           "compression_ratio": arch.total_parameters / parameters,
           "layers": blockdiag_artifact.layers_doc(arch, blockings),
           "blocks": {n: k for n, k in plan.blocks.items()},
           "permutation_seed": plan.permutation_seed, **measured}
    return ExtraArtifact(format=blockdiag_artifact.ARTIFACT, architecture=arch.name,
                         architecture_config=dict(arch.config), tensors=tensors,
                         manifest={"blockdiag": doc}, doc=doc)


def run(job: MethodJob) -> SearchResult:
    o = job.spec.mpd
    space, start = search_space(job.arch, o)
    result = DistributedSearch(
        job.arch, job.model, job.params, job.splits, job.spec, job.recorder, space=space,
        start=start, infeasible="allow fewer blocks (smaller values in mpd.blocks, or 1)",
        size=o.objective,
        sessions=job.sessions, lease=job.lease, settings=job.settings, device=job.device,
        should_stop=job.should_stop, contexts=job.contexts).run()
    plan = plan_of(job.arch, o, result.best.candidate)
    result.artifacts.append(blockdiag_result(job.arch, job.params, result.pruned.params, plan,
                                             job.splits))
    return result
