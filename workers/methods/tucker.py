"""Method `tucker` (core.methods.tucker): Kim et al.'s one-shot compression — EVBMF ranks,
Tucker-2 (convolutions) / truncated SVD (linear layers), fine-tuning — with every layer's ranks
searched around EVBMF's under the job's δ.

A candidate is one log2 rank multiplier per decomposable layer: rank = round(EVBMF rank · 2^c),
between 1 and the layer's side; a layer whose decomposition would hold as many parameters as the
layer itself stays as it is (so which layers are decomposed is part of the search). The start
point, trial 0, is c = 0 everywhere: EVBMF's own ranks, the paper's method.

A trial (`train_trial`) decomposes the uploaded weights at its ranks, fine-tunes the decomposed
module (Adam, cosine-annealed, train mode; BatchNorm statistics recomputed before each scoring),
and hands back the decomposition composed into the original shapes (exact: nothing nonlinear
sits between a decomposition's parts), so the job's trials, replay and full-shape download work as
for every method; its size is the decomposed model's parameter count. The job's `decomposed`
download is the best trial decomposed again at its ranks (exact again: the composed weights have
exactly those ranks), with its logits checked against the trial's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from core.architectures import Architecture
from core.methods.tucker import TuckerOptions, decomposable
from core.spec import JobSpec
from workers.jobs.coordinator import DistributedSearch
from workers.methods import MethodJob, TrialOutcome
from workers.models import decomposed_artifact, derived, zoo
from workers.models.flops import macs
from workers.models.tucker import (
    CONV_KINDS,
    Ranks,
    composed,
    decompose,
    decomposed_parameters,
    replace,
    vbmf_ranks,
)
from workers.runtime.batchnorm import recalibrate
from workers.runtime.data import Splits
from workers.runtime.evaluation import accuracy
from workers.runtime.fine_tuning import TrainingData, train, training_data
from workers.search.space import Real, Space, Value
from workers.search.trials import ExtraArtifact, SearchResult

CALIBRATION_IMAGES = 2048


def search_space(arch: Architecture, o: TuckerOptions) -> tuple[Space, list[Value]]:
    names = decomposable(arch, o)
    return Space(tuple(Real(*o.log2_rank_scale) for _ in names)), [0.0] * len(names)


def ranks_of(arch: Architecture, o: TuckerOptions, reference: dict[str, torch.Tensor],
             candidate: Sequence[Any]) -> dict[str, Ranks]:
    """Each decomposed layer's ranks (layers left as they are are absent)."""
    table = {t.name: t for t in arch.tensors}
    names = decomposable(arch, o)
    if len(candidate) != len(names):
        raise ValueError(f"method tucker on {arch.name} takes {len(names)} values, got {len(candidate)}")
    out = {}
    for name, c in zip(names, candidate, strict=True):
        t = table[name]
        base = vbmf_ranks(t.kind, reference[name])
        scale = 2.0 ** float(c)
        top_out = t.shape[0] if t.kind in CONV_KINDS else min(t.shape[0], t.shape[1])
        r = Ranks(min(top_out, max(1, round(base.out * scale))),
                  None if base.inp is None else min(t.shape[1], max(1, round(base.inp * scale))))
        bias = name.removesuffix(".weight") + ".bias" in table
        if decomposed_parameters(t.kind, t.shape, r, bias) < t.numel + (t.shape[0] if bias else 0):
            out[name] = r
    return out


def decomposed_model(arch: Architecture, params: dict[str, torch.Tensor], ranks: dict[str, Ranks],
                     device: torch.device) -> nn.Module:
    model = zoo.build(arch)
    model.load_state_dict({k: v.detach().cpu() for k, v in params.items()})
    for name, r in ranks.items():
        path = name.removesuffix(".weight")
        bias = params.get(f"{path}.bias")
        replace(model, path, decompose(model.get_submodule(path), params[name], bias, r))
    return model.to(device)


def composed_params(arch: Architecture, model: nn.Module, ranks: dict[str, Ranks]) -> dict[str, torch.Tensor]:
    """The decomposed module's function as the architecture's own tensors."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for t in arch.tensors:
        path, _, leaf = t.name.rpartition(".")
        if f"{path}.weight" in ranks:
            w, b = composed(model.get_submodule(path))  # type: ignore[arg-type]
            out[t.name] = (w if leaf == "weight" else b).detach().cpu()  # type: ignore[union-attr]
        else:
            out[t.name] = state[t.name]
    return {k: v.contiguous() for k, v in out.items()}


def _teacher_log_probs(arch: Architecture, reference: dict[str, torch.Tensor], x: torch.Tensor,
                       o: TuckerOptions, device: torch.device) -> torch.Tensor:
    """The uploaded model's log-probabilities at the distillation temperature, for every
    training sample of the trial (eval mode: the reference's own BatchNorm statistics)."""
    teacher = decomposed_model(arch, reference, {}, device).eval()  # no layer decomposed
    with torch.no_grad():
        return torch.cat([nn.functional.log_softmax(teacher(x[s : s + 1000]) / o.distill_temperature, dim=1)
                          for s in range(0, x.shape[0], 1000)])


def train_trial(arch: Architecture, reference: dict[str, torch.Tensor], splits: Splits,
                spec: JobSpec, candidate: Sequence[Any], *, seed: int, device: torch.device,
                report: Callable[[int, float], bool], check: Callable[[], None]) -> TrialOutcome:
    o = spec.tucker
    ranks = ranks_of(arch, o, reference, candidate)
    model = decomposed_model(arch, reference, ranks, device)
    data = training_data(splits.x_train, splits.y_train, o.train_subset, seed, device)
    x_val, y_val = splits.x_val.to(device), splits.y_val.to(device)
    buffers = dict(model.named_buffers())

    def score() -> float:
        recalibrate(model, buffers, model, data.x[:CALIBRATION_IMAGES], o.batch_size)
        return accuracy(model, dict(model.state_dict()), x_val, y_val)

    teacher = _teacher_log_probs(arch, reference, data.x, o, device) if o.distill > 0 else None
    labels = data.y
    # the batches carry sample indices, so that the loss can look up both the label and the
    # uploaded model's soft targets, computed once for the trial rather than once a batch
    indexed = TrainingData(data.x, torch.arange(data.x.shape[0], device=device), data.gen)

    def loss(xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        logits = model(xb)
        ce = nn.functional.cross_entropy(logits, labels[idx])
        if teacher is None:
            return ce
        t = o.distill_temperature
        kd = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=1), teacher[idx],
                                  log_target=True, reduction="batchmean") * (t * t)
        return (1.0 - o.distill) * ce + o.distill * kd

    if o.epochs == 0:
        intermediate, pruned_at = [score()], None
    else:
        intermediate, pruned_at = train(list(model.parameters()), loss, indexed, epochs=o.epochs,
                                        batch_size=o.batch_size, lr=o.lr, train_mode=model.train,
                                        score=score, report=report, check=check)
    model.eval()
    params = composed_params(arch, model, ranks)
    size = sum(p.numel() for p in model.parameters())
    kept = {}
    for t in arch.prunable:
        if t.name in ranks:
            kept[t.name] = sum(p.numel() for n, p in model.get_submodule(
                t.name.removesuffix(".weight")).named_parameters() if n.endswith("weight"))
        else:
            kept[t.name] = int(torch.count_nonzero(params[t.name]))
    return TrialOutcome(params=params, val_accuracy=intermediate[-1], nonzero=size,
                        total=arch.total_parameters, kept=kept, intermediate=intermediate,
                        pruned_at=pruned_at, groups_kept={}, macs=macs(model, arch.input_shape),
                        total_macs=macs(zoo.build(arch), arch.input_shape))


def trial_pruner(spec: JobSpec) -> tuple[str, int]:
    return spec.tucker.pruner, max(spec.tucker.epochs, 1)


def hold_out(_spec: JobSpec) -> float:
    return 0.0  # trials are scored on the whole validation split


def decomposed_result(arch: Architecture, reference: dict[str, torch.Tensor],
                      params: dict[str, torch.Tensor], candidate: Sequence[Any], o: TuckerOptions,
                      splits: Splits) -> ExtraArtifact:
    """The best trial as its decomposed model, its figures recomputed on it."""
    cpu = {k: v.detach().cpu() for k, v in params.items()}
    ranks = ranks_of(arch, o, reference, candidate)
    small = decomposed_model(arch, cpu, ranks, torch.device("cpu")).eval()
    dense = zoo.build(arch).eval()
    dense.load_state_dict(cpu)
    tensors, measured = derived.figures(arch, dense, small, splits, "decomposed",
                                        derived_macs=macs(small, arch.input_shape))
    parameters = sum(p.numel() for p in small.parameters())
    kinds = {t.name: t.kind for t in arch.tensors}
    doc = {"parameters": parameters, "compression_ratio": arch.total_parameters / parameters,
           "layers": decomposed_artifact.layers_doc(kinds, ranks),
           "vbmf_ranks": {n: [r.out, r.inp] for n, r in
                          ((n, vbmf_ranks(kinds[n], reference[n])) for n in decomposable(arch, o))},
           **measured}
    return ExtraArtifact(format=decomposed_artifact.ARTIFACT, architecture=arch.name,
                         architecture_config=dict(arch.config), tensors=tensors,
                         manifest={"decomposed": doc}, doc=doc)


def run(job: MethodJob) -> SearchResult:
    o = job.spec.tucker
    space, start = search_space(job.arch, o)
    result = DistributedSearch(
        job.arch, job.model, job.params, job.splits, job.spec, job.recorder, space=space,
        start=start, infeasible="raise the rank box (tucker.log2_rank_scale) or fine-tune longer "
        "(tucker.epochs)", size=o.objective, sessions=job.sessions, lease=job.lease, settings=job.settings,
        device=job.device, should_stop=job.should_stop, contexts=job.contexts).run()
    result.artifacts.append(decomposed_result(job.arch, job.params, result.pruned.params,
                                              result.best.candidate, o, job.splits))
    return result
