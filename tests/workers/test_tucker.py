"""Method `tucker`: EVBMF ranks, Tucker-2 / SVD decompositions as modules, fine-tuning trials, the
`decomposed` download, and the spec's rules."""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient
from torch import nn

from core.architectures import get_architecture
from core.settings import Settings
from core.spec import JobSpec
from core.zoo import LENET_5, VGG_FASHION
from service.app import create_app
from tests.helpers import bearer, make_token, random_splits, upload_dataset, upload_model
from workers.methods import tucker
from workers.models import decomposed_artifact, zoo
from workers.models.flops import macs
from workers.models.tucker import Ranks, compose, composed, decompose, tucker2
from workers.models.vbmf import evbmf, free_energy


@pytest.mark.parametrize(("shape", "rank", "noise"), [((50, 80), 5, 0.1), ((100, 300), 12, 0.5),
                                                      ((300, 784), 20, 0.05), ((20, 500), 3, 0.2),
                                                      ((64, 40), 1, 0.3)])
def test_evbmf_recovers_the_rank_and_the_noise_of_a_low_rank_matrix(
        shape: tuple[int, int], rank: int, noise: float) -> None:
    gen = torch.Generator().manual_seed(7)
    y = (torch.randn(shape[0], rank, generator=gen) @ torch.randn(rank, shape[1], generator=gen)
         + noise * torch.randn(*shape, generator=gen))
    e = evbmf(y)
    assert e.rank == rank
    assert abs(e.sigma2 / noise**2 - 1) < 0.1
    assert evbmf(y.T).rank == rank  # either orientation


def test_evbmf_finds_pure_noise_rankless() -> None:
    gen = torch.Generator().manual_seed(1)
    assert evbmf(torch.randn(40, 60, generator=gen)).rank == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evbmf_noise_variance_minimizes_the_free_energy_numerically(seed: int) -> None:
    """Its σ² against a brute-force minimization of the same free energy over a fine grid."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(12, 3, generator=gen) @ torch.randn(3, 30, generator=gen) + 0.3 * torch.randn(12, 30, generator=gen)
    e = evbmf(y)
    s = torch.linalg.svdvals(y.double()).numpy()
    L, M = 12, 30
    from workers.models.vbmf import _psi_zero

    tau = _psi_zero(L / M)
    xbar = (1 + tau) * (1 + (L / M) / tau)
    grid = np.exp(np.linspace(math.log(1e-4), math.log(float((s**2).sum()) / (L * M)), 20_000))
    values = [free_energy(g, s, L, M, 0.0, xbar) for g in grid]
    best = float(grid[int(np.argmin(values))])
    assert abs(math.log(e.sigma2 / best)) < 1e-2
    assert free_energy(e.sigma2, s, L, M, 0.0, xbar) <= min(values) + 1e-9


def test_tucker2_error_falls_with_the_ranks_and_is_exact_at_full_rank() -> None:
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(16, 12, 3, 3, generator=gen)
    errors = [float((compose(*tucker2(k, r, r)) - k).norm() / k.norm()) for r in (2, 4, 8, 12)]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.3
    assert float((compose(*tucker2(k, 16, 12)) - k).norm() / k.norm()) < 1e-5


@pytest.mark.parametrize("conv", [nn.Conv2d(20, 50, 5), nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2),
                                  nn.Conv2d(1, 20, 5, padding=1), nn.Conv2d(8, 8, 3, stride=(1, 2), bias=False)],
                         ids=["plain", "strided-dilated", "tucker1", "nobias"])
def test_the_three_convolutions_equal_the_decomposed_kernel_s_convolution(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    w, b = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    s = w.shape[1]
    r = Ranks(5, None if s <= 4 else 3)
    seq = decompose(conv, w, b, r)
    assert len(seq) == (2 if r.inp is None else 3)
    core, u4, u3 = tucker2(w, r.out, r.inp)
    x = torch.randn(2, s, 19, 17)
    with torch.no_grad():
        want = nn.functional.conv2d(x, compose(core, u4, u3), b, conv.stride, conv.padding, conv.dilation)
        assert float((seq(x) - want).abs().max()) < 1e-5
        cw, cb = composed(seq)  # composing back gives the same layer
        assert float((nn.functional.conv2d(x, cw, cb, conv.stride, conv.padding, conv.dilation) - want).abs().max()) < 1e-5


def test_the_svd_of_a_linear_layer_is_its_truncation_and_exact_at_full_rank() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(80, 50)
    x = torch.randn(4, 80)
    with torch.no_grad():
        full = decompose(lin, lin.weight, lin.bias, Ranks(50, None))
        assert float((full(x) - lin(x)).abs().max()) < 1e-5
        seq = decompose(lin, lin.weight, lin.bias, Ranks(7, None))
        u, sv, vh = torch.linalg.svd(lin.weight)
        want = (u[:, :7] * sv[:7]) @ vh[:7]
        assert float((composed(seq)[0] - want).abs().max()) < 1e-5


def test_macs_count_every_layer_at_its_output_size() -> None:
    model = zoo.build(LENET_5)
    # conv1 24×24×20×25, conv2 8×8×50×500, fc1 800×500, fc2 500×10
    assert macs(model, (1, 28, 28)) == 24 * 24 * 20 * 25 + 8 * 8 * 50 * 500 + 800 * 500 + 500 * 10


@pytest.mark.parametrize("arch", [LENET_5, VGG_FASHION], ids=lambda a: a.name)
def test_a_trial_composes_back_exactly_and_the_download_reproduces_it(arch: Any) -> None:
    torch.manual_seed(1)
    reference = {k: v.detach().clone() for k, v in zoo.build(arch).state_dict().items()}
    spec = JobSpec(model_id="m", dataset_id="d", method="tucker", max_accuracy_drop=0.1,
                   budget={"trials": 1}, tucker={"epochs": 1, "batch_size": 50})
    space, start = tucker.search_space(arch, spec.tucker)
    assert start == [0.0] * len(space.variables)  # trial 0: EVBMF's own ranks
    candidate = [-1.0] * len(start)
    epochs: list[int] = []
    out = tucker.train_trial(arch, reference, random_splits(), spec, candidate, seed=0,
                             device=torch.device("cpu"), report=lambda e, a: bool(epochs.append(e)),
                             check=lambda: None)
    assert epochs == [0] and out.nonzero < arch.total_parameters
    assert set(out.params) == {t.name for t in arch.tensors}
    extra = tucker.decomposed_result(arch, reference, out.params, candidate, spec.tucker, random_splits())
    doc = extra.doc
    assert doc["parameters"] == out.nonzero and doc["max_logit_difference"] < 1e-4
    assert doc["flops_ratio"] > 1.0
    manifest = {"architecture": arch.name, "architecture_config": dict(arch.config), "decomposed": doc}
    model = decomposed_artifact.module(json.loads(json.dumps(manifest)), dict(extra.tensors))
    dense = zoo.build(arch).eval()
    dense.load_state_dict(out.params)
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        assert float((model(x) - dense(x)).abs().max()) < 1e-4
    bad = dict(extra.tensors)
    name = next(iter(doc["layers"])).removesuffix(".weight") + ".0.weight"
    bad[name] = bad[name][:-1]
    with pytest.raises(ValueError, match=re.escape(f"tensor '{name}' has shape")):
        decomposed_artifact.module(manifest, bad)


def test_distillation_learns_from_the_uploaded_model_not_the_labels() -> None:
    """With distill 1 the loss is the uploaded model's soft targets alone: other labels train the
    very same weights; with distill 0.5 they count, and the weights differ."""
    from workers.runtime.data import Splits

    torch.manual_seed(0)
    reference = {k: v.detach().clone() for k, v in zoo.build(LENET_5).state_dict().items()}
    base = random_splits()
    relabelled = Splits(base.x_train, (base.y_train + 1) % 10, base.x_val, base.y_val,
                        base.x_test, base.y_test)

    def trained(splits: Any, distill: float) -> dict[str, torch.Tensor]:
        spec = JobSpec(model_id="m", dataset_id="d", method="tucker", max_accuracy_drop=0.1,
                       budget={"trials": 1}, tucker={"epochs": 1, "batch_size": 50, "distill": distill})
        return tucker.train_trial(LENET_5, reference, splits, spec, [-1.0, -1.0], seed=0,
                                  device=torch.device("cpu"), report=lambda e, a: False,
                                  check=lambda: None).params

    same = trained(base, 1.0), trained(relabelled, 1.0)
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    mixed = trained(base, 0.5), trained(relabelled, 0.5)
    assert not torch.equal(mixed[0]["fc1.weight"], mixed[1]["fc1.weight"])
    assert not torch.equal(same[0]["fc1.weight"], mixed[0]["fc1.weight"])


def test_a_layer_whose_decomposition_is_not_smaller_stays_as_it_is() -> None:
    torch.manual_seed(0)
    reference = {k: v.detach().clone() for k, v in zoo.build(LENET_5).state_dict().items()}
    spec = JobSpec(model_id="m", dataset_id="d", method="tucker", max_accuracy_drop=0.1,
                   budget={"trials": 1}, tucker={"log2_rank_scale": [-1, 8], "min_layer_share": 0})
    ranks = tucker.ranks_of(LENET_5, spec.tucker, reference, [8.0, 8.0, 8.0, 8.0])
    # conv1 at its full rank 20 (Tucker-1: 25·20 + 20·20 weights > 500) and conv2 at (50, 20)
    # would grow: they stay; whatever is decomposed is smaller than the layer
    assert "conv1.weight" not in ranks and "conv2.weight" not in ranks
    table = {t.name: t for t in LENET_5.tensors}
    from workers.models.tucker import decomposed_parameters

    for name, r in ranks.items():
        t = table[name]
        assert decomposed_parameters(t.kind, t.shape, r, True) < t.numel + t.shape[0]
    assert "conv2.weight" in tucker.ranks_of(LENET_5, spec.tucker, reference, [8.0, -1.0, 8.0, 8.0])


@pytest.mark.parametrize(("arch", "options", "message"), [
    ("lenet-5", {"log2_rank_scale": [0.5, 1.0]}, "tucker.log2_rank_scale must satisfy"),
    ("lenet-5", {"epochs": -1}, "epochs"),
    ("lenet-5", {"ranks": 3}, "ranks"),
    ("lenet-5", {"distill": 1.5}, "distill"),
    ("lenet-300-100", {"decompose_linear": False}, "lenet-300-100 has no layer to decompose"),
])
def test_a_bad_tucker_spec_is_answered_422_naming_the_field(settings: Settings, arch: str,
                                                            options: dict[str, Any], message: str) -> None:
    torch.manual_seed(0)
    weights = safetensors.torch.save({k: v.contiguous() for k, v in zoo.build(get_architecture(arch)).state_dict().items()})
    arrays = {"x_train": np.zeros((20, 1, 28, 28), np.float32), "y_train": np.arange(20) % 10,
              "x_test": np.zeros((10, 1, 28, 28), np.float32), "y_test": np.arange(10) % 10}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as client:
        model = upload_model(client, weights, architecture=arch)
        ds = upload_dataset(client, buf.getvalue())
        r = client.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": ds["id"], "method": "tucker",
                                          "optimizer": "optuna:tpe", "max_accuracy_drop": 0.01,
                                          "budget": {"trials": 2}, "tucker": options})
        assert r.status_code == 422, r.text
        assert message in json.dumps(r.json(), ensure_ascii=False)
        assert client.get("/v1/jobs").json()["total"] == 0


def test_a_flops_objective_picks_the_trial_with_the_fewest_multiply_accumulates(
        settings: Settings, small_model_weights: bytes, small_dataset_npz: bytes) -> None:
    from tests.helpers import submit
    from tests.helpers import trials as all_trials
    from workers.jobs.loop import Worker

    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as client:
        model = upload_model(client, small_model_weights)
        ds = upload_dataset(client, small_dataset_npz)
        job = submit(client, model["id"], ds["id"], method="tucker", optimizer="optuna:tpe",
                     max_accuracy_drop=0.05, budget={"trials": 4}, seed=1,
                     tucker={"epochs": 1, "log2_rank_scale": [0.0, 3.0], "lr": 0.003,
                             "objective": "flops"})
        Worker(settings, name="test-worker").serve(exit_when_idle=True)
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", done["error"]
        best, dec = done["best"], done["best"]["decomposed"]
        trials = all_trials(client, job["id"])
        # the objective is the kept fraction of multiply-accumulates, not of parameters
        chosen = next(t for t in trials if t["number"] == best["trial_number"])
        assert abs(chosen["metrics"]["objective"] - math.log10(dec["macs"] / dec["reference_macs"])) < 1e-9
        assert abs(chosen["metrics"]["objective"] - math.log10(best["nonzero"] / best["total"])) > 1e-4
        feasible = [t for t in trials if t["feasible"]]
        assert chosen["metrics"]["objective"] == min(t["metrics"]["objective"] for t in feasible)


def test_layers_too_small_to_matter_stay_as_they_are() -> None:
    """By default a layer holding under 2 % of the parameters is not decomposed: vgg-fashion's
    conv1 (288 weights) and classifier (1,280) got EVBMF rank 1, which collapsed the model."""
    from core.methods.tucker import TuckerOptions, decomposable
    from core.zoo import VGG_FASHION

    assert decomposable(VGG_FASHION, TuckerOptions()) == [
        "conv2.weight", "conv3.weight", "conv4.weight", "conv5.weight", "conv6.weight"]
    assert decomposable(LENET_5, TuckerOptions()) == ["conv2.weight", "fc1.weight"]
    assert len(decomposable(LENET_5, TuckerOptions(min_layer_share=0))) == 4
