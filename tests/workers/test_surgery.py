"""Dynamic Network Surgery masks and masked training (the adjusting of OLMP), on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch

from core.architectures import get_architecture
from workers.models import zoo
from workers.runtime.data import split_arrays
from workers.runtime.masked_sgd import MaskedTrainer, SolverConfig, hysteresis


def test_hysteresis_prunes_below_0_9_t_restores_above_1_1_t_and_keeps_the_band() -> None:
    t = 1.0
    w = torch.tensor([0.85, 0.95, 1.05, 1.15, 0.85, 0.95, 1.05, 1.15])
    m = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    new = hysteresis(m, w, t, 0.9, 1.1)
    # kept: pruned only under 0.9·T; pruned: back only over 1.1·T; in between nothing changes
    assert new.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert hysteresis(m, -w, t, 0.9, 1.1).tolist() == new.tolist()  # magnitudes, not signs


@pytest.fixture(scope="module")
def trainer_parts(small_model_weights: bytes, small_arrays: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    arch = get_architecture("lenet-300-100")
    splits = split_arrays(small_arrays, {})
    return arch, safetensors.torch.load(small_model_weights), splits


def _trainer(parts, config: SolverConfig | None = None, seed: int = 0) -> MaskedTrainer:  # type: ignore[no-untyped-def]
    arch, params, splits = parts
    return MaskedTrainer(zoo.build(arch).eval(), params, [t.name for t in arch.prunable],
                         splits.x_train, splits.y_train, config or SolverConfig(), seed)


def test_a_pruned_weight_that_grows_past_1_1_t_comes_back(trainer_parts) -> None:  # type: ignore[no-untyped-def]
    trainer = _trainer(trainer_parts, SolverConfig(refresh_gamma=0.0))  # refresh every iteration
    w = trainer.w["fc2.weight"]
    t = float(w.detach().abs().median())
    trainer.set_thresholds({n: (t if n == "fc2.weight" else 0.0) for n in trainer.masked})
    pruned = (trainer.m["fc2.weight"] == 0).nonzero()[0].tolist()
    assert trainer.m["fc2.weight"][tuple(pruned)] == 0
    # A pruned weight pushed past 1.1·T, and a kept one dropped under 0.9·T, between two steps.
    kept = (trainer.m["fc2.weight"] == 1).nonzero()[0].tolist()
    with torch.no_grad():
        trainer.w["fc2.weight"][tuple(pruned)] = 1.5 * t
        trainer.w["fc2.weight"][tuple(kept)] = 0.5 * t
    trainer.train(1)
    assert trainer.m["fc2.weight"][tuple(pruned)] == 1
    assert trainer.m["fc2.weight"][tuple(kept)] == 0


def test_pruned_weights_learn_while_splicing_and_stay_zero_once_frozen(trainer_parts) -> None:  # type: ignore[no-untyped-def]
    trainer = _trainer(trainer_parts, SolverConfig(refresh_gamma=1e9))  # masks hardly refresh
    t = {n: float(trainer.w[n].abs().quantile(0.9)) for n in trainer.masked}
    trainer.set_thresholds(t)
    mask = trainer.m["fc1.weight"].clone()
    before = trainer.w["fc1.weight"].clone()
    trainer.train(20)
    moved = (trainer.w["fc1.weight"] != before) & (mask == 0)
    assert moved.float().mean() > 0.5  # the gradient reaches pruned weights (straight through)

    trainer.freeze()
    frozen_mask = {n: trainer.m[n].clone() for n in trainer.masked}
    trainer.train(20)
    for n in trainer.masked:
        assert torch.equal(trainer.m[n], frozen_mask[n])
        assert torch.count_nonzero(trainer.w[n] * (1 - frozen_mask[n])) == 0


def test_training_resumed_from_a_saved_state_continues_the_same_trajectory(trainer_parts) -> None:  # type: ignore[no-untyped-def]
    a = _trainer(trainer_parts, seed=4)
    a.set_thresholds({n: float(a.w[n].abs().median()) for n in a.masked})
    a.train(30)
    saved = a.state()
    a.train(40)

    b = _trainer(trainer_parts, seed=99)  # other seeds: everything must come from the state
    b.load(saved, frozen=False)
    b.train(40)
    for n in a.w:
        assert torch.equal(a.w[n], b.w[n])
    for n in a.masked:
        assert torch.equal(a.m[n], b.m[n])
    assert a.iteration == b.iteration == 70


def test_frozen_training_keeps_pruned_weights_and_their_velocity_at_zero_and_resumes_frozen(trainer_parts) -> None:  # type: ignore[no-untyped-def]
    a = _trainer(trainer_parts, seed=5)
    a.set_thresholds({n: float(a.w[n].abs().median()) for n in a.masked})
    a.train(10)
    spliced = a.state()  # pruned weights still carry values while masks may change
    assert any(torch.count_nonzero(spliced.weights[n] * (1 - spliced.masks[n])) for n in a.masked)
    a.freeze()
    a.train(10)
    saved = a.state()
    a.train(15)
    for n in a.masked:
        pruned = 1 - a.m[n]
        assert torch.count_nonzero(a.w[n] * pruned) == 0
        assert torch.count_nonzero(a.v[n] * pruned) == 0  # no momentum to carry a weight back

    b = _trainer(trainer_parts, seed=77)
    b.load(saved, frozen=True)
    b.train(15)
    for n in a.w:
        assert torch.equal(a.w[n], b.w[n])

    # a state saved while splicing, loaded frozen: its pruned weights are zero before any step
    c = _trainer(trainer_parts, seed=77)
    c.load(spliced, frozen=True)
    for n in c.masked:
        assert torch.count_nonzero(c.w[n] * (1 - c.m[n])) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a lent one)")
def test_the_cuda_graph_step_is_the_eager_step(trainer_parts) -> None:  # type: ignore[no-untyped-def]
    arch, params, splits = trainer_parts
    cuda = torch.device("cuda")
    params = {k: v.to(cuda) for k, v in params.items()}
    x, y = splits.x_train.to(cuda), splits.y_train.to(cuda)
    runs = []
    for graphs in (True, False):
        t = MaskedTrainer(zoo.build(arch).to(cuda).eval(), params, [p.name for p in arch.prunable],
                          x, y, SolverConfig(), 3, graphs=graphs)
        t.set_thresholds({n: float(t.w[n].abs().median()) for n in t.masked})
        t.train(150)
        t.freeze()
        t.train(150)
        assert t.use_graphs == graphs
        runs.append(t)
    for n in runs[0].w:
        assert torch.equal(runs[0].w[n], runs[1].w[n]), n


def test_caffe_learning_rate_and_refresh_schedules() -> None:
    cfg = SolverConfig(lr=0.01, lr_gamma=1e-4, lr_power=0.75, refresh_gamma=1e-4)
    assert cfg.learning_rate(0) == 0.01
    assert cfg.learning_rate(10_000) == pytest.approx(0.01 * 2 ** -0.75)
    assert cfg.refresh_probability(0) == 1.0
    assert cfg.refresh_probability(10_000) == pytest.approx(0.5)
