"""Method `mpd`: permuted block-diagonal masks, the modules that run them, masked training, the
`blockdiag` download, and the spec's rules answered at admission."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient

import thresher.loader
from core.architectures import get_architecture
from core.artifacts import MANIFEST_KEY
from core.methods.mpd import shared_k
from core.settings import Settings
from core.spec import JobSpec
from core.zoo import LENET_5, LENET_300_100, VGG_FASHION
from service.app import create_app
from tests.helpers import bearer, make_token, random_splits, upload_dataset, upload_model
from workers.methods import mpd
from workers.models import blockdiag_artifact, zoo
from workers.models.blockdiag import blocking, fitted_blocking, group_sizes, weight_mask


@pytest.mark.parametrize(("m", "n", "k"), [(300, 784, 16), (100, 300, 7), (10, 100, 10), (6, 6, 1),
                                           (64, 32, 8)])
def test_a_mask_is_k_near_equal_blocks_covering_every_row_and_column_once(m: int, n: int, k: int) -> None:
    b = blocking((m, n), k, seed=3)
    assert [len(r) for r in b.rows] == group_sizes(m, k)
    assert max(group_sizes(m, k)) - min(group_sizes(m, k)) <= 1
    assert max(group_sizes(n, k)) - min(group_sizes(n, k)) <= 1
    assert sorted(torch.cat(b.rows).tolist()) == list(range(m))
    assert sorted(torch.cat(b.cols).tolist()) == list(range(n))
    mask = b.mask()
    assert int(mask.sum()) == b.entries() == sum(
        r * c for r, c in zip(group_sizes(m, k), group_sizes(n, k), strict=True))
    assert abs(float(mask.float().mean()) - 1 / k) < 0.5 / k  # density about 1/k
    # each row reaches exactly its block's columns
    for r, c in zip(b.rows, b.cols, strict=True):
        for i in r.tolist():
            assert mask[i].nonzero().squeeze(1).tolist() == c.tolist()
    # permuted by the blocks' order, the mask is block-diagonal; the permutation undoes exactly
    rp, cp = torch.cat(b.rows), torch.cat(b.cols)
    permuted = mask[rp][:, cp]
    r0 = c0 = 0
    for r, c in zip(b.rows, b.cols, strict=True):
        assert bool(permuted[r0 : r0 + len(r), c0 : c0 + len(c)].all())
        r0, c0 = r0 + len(r), c0 + len(c)
    assert int(permuted.sum()) == b.entries()
    restored = torch.empty_like(permuted)
    restored[rp.unsqueeze(1), cp.unsqueeze(0)] = permuted
    assert torch.equal(restored, mask)
    assert torch.equal(blocking((m, n), k, seed=3).mask(), mask)  # seeded
    if k > 1:
        assert not torch.equal(blocking((m, n), k, seed=4).mask(), mask)


def test_too_many_blocks_for_a_side_is_refused() -> None:
    with pytest.raises(ValueError, match="11 blocks cannot split 10"):
        blocking((10, 100), 11, seed=0)


def test_a_fitted_blocking_keeps_more_weight_energy_at_the_same_density() -> None:
    torch.manual_seed(0)
    # a weight with a hidden block structure: what random permutations cannot find
    w = torch.randn(60, 90) * 0.1
    for b in range(6):
        w[b * 10 : (b + 1) * 10, b * 15 : (b + 1) * 15] += 1.0
    w = w[torch.randperm(60)][:, torch.randperm(90)]
    energy = w.pow(2)
    rand, fit = blocking((60, 90), 6, seed=1), fitted_blocking(w, 6, seed=1)
    assert fit.entries() == rand.entries()
    assert float((energy * fit.mask()).sum()) > 3 * float((energy * rand.mask()).sum())
    assert float((energy * fit.mask()).sum()) > 0.9 * float(energy.sum())  # it finds the blocks


def _masked(arch_name: str, k: int, seed: int = 0) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any]]:
    arch = get_architecture(arch_name)
    torch.manual_seed(seed)
    model = zoo.build(arch)
    params = {n: v.detach().clone() for n, v in model.state_dict().items()}
    for t in arch.buffers:  # BatchNorm statistics that are not the identity
        if t.kind in ("running_mean", "running_var"):
            params[t.name] = torch.rand(t.shape) + 0.5
    blockings = {}
    for i, t in enumerate(arch.prunable):
        b = blocking(t.shape, shared_k(t, k), seed=i)
        blockings[t.name] = b
        params[t.name] = params[t.name] * weight_mask(b, t.shape)
    return arch, params, blockings


@pytest.mark.parametrize(("arch_name", "k"), [("lenet-300-100", 7), ("lenet-300-100", 16),
                                              ("lenet-5", 5), ("vgg-fashion", 8)])
def test_the_blockdiag_module_computes_the_masked_dense_model(arch_name: str, k: int) -> None:
    arch, params, blockings = _masked(arch_name, k)
    dense = zoo.build(arch).eval()
    dense.load_state_dict(params)
    blocked = blockdiag_artifact.deployed(arch, params, blockings)
    x = torch.rand(32, *arch.input_shape)
    with torch.no_grad():
        assert float((blocked(x) - dense(x)).abs().max()) < 1e-5
    # through the file: its tensors and manifest give the same module back
    manifest = {"architecture": arch.name, "architecture_config": dict(arch.config),
                "blockdiag": {"layers": blockdiag_artifact.layers_doc(arch, blockings)}}
    loaded = blockdiag_artifact.module(manifest, blockdiag_artifact.tensors_of(blocked))
    with torch.no_grad():
        assert float((loaded(x) - dense(x)).abs().max()) < 1e-5
    params_count, indices = blockdiag_artifact.parameter_count(blocked)
    structural = sum(b.entries() * (t.numel // (t.shape[0] * t.shape[1]))
                     for t, b in zip(arch.prunable, blockings.values(), strict=True))
    dense_rest = sum(t.numel for t in arch.parameters if not t.prunable)
    assert params_count == structural + dense_rest
    assert indices == sum(t.shape[0] + t.shape[1] for t, b in
                          zip(arch.prunable, blockings.values(), strict=True) if b.k > 1)


def test_a_convolution_deploys_as_a_grouped_convolution() -> None:
    arch, params, blockings = _masked("vgg-fashion", 8)
    blocked = blockdiag_artifact.deployed(arch, params, blockings)
    conv = blocked.get_submodule("conv3")
    assert conv.k == 8 and tuple(conv.weight.shape) == (64, 4, 3, 3)


def _file(arch_name: str = "lenet-300-100") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    arch, params, blockings = _masked(arch_name, 7)
    blocked = blockdiag_artifact.deployed(arch, params, blockings)
    manifest = {"architecture": arch.name, "architecture_config": dict(arch.config),
                "blockdiag": {"layers": blockdiag_artifact.layers_doc(arch, blockings)}}
    return manifest, blockdiag_artifact.tensors_of(blocked)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t["fc1.rows"].fill_(3), "not a permutation"),
    # fc2 (100 × 300) in 7 blocks: the last block is 14 × 42, padded to 15 × 43
    (lambda t: t["fc2.blocks"].__setitem__((6, 14, 42), 1.0), "padding is not zero"),
    (lambda t: t.pop("fc3.bias"), "lacks tensor 'fc3.bias'"),
    (lambda t: t.__setitem__("fc1.blocks", t["fc1.blocks"][:, :-1]), "blocks must have shape"),
    (lambda t: t.__setitem__("extra", torch.zeros(1)), "unexpected ['extra']"),
])
def test_a_tampered_blockdiag_file_is_refused(change: Any, message: str) -> None:
    manifest, tensors = _file()
    change(tensors)
    with pytest.raises(ValueError, match=re.escape(message)):
        blockdiag_artifact.module(manifest, tensors)


@pytest.mark.parametrize("arch", [LENET_300_100, VGG_FASHION], ids=lambda a: a.name)
def test_training_keeps_every_weight_outside_the_mask_at_zero(arch: Any) -> None:
    torch.manual_seed(1)
    reference = {k: v.detach().clone() for k, v in zoo.build(arch).state_dict().items()}
    spec = JobSpec(model_id="m", dataset_id="d", method="mpd", max_accuracy_drop=0.1,
                   budget={"trials": 1}, mpd={"epochs": 2, "batch_size": 50, "lr": 0.01})
    space, start = mpd.search_space(arch, spec.mpd)
    assert space.contains(start)
    candidate = [v for v in start]
    epochs: list[int] = []
    out = mpd.train_trial(arch, reference, random_splits(), spec, candidate, seed=0,
                          device=torch.device("cpu"), report=lambda e, a: bool(epochs.append(e)),
                          check=lambda: None)
    assert epochs == [0, 1] and out.pruned_at is None and len(out.intermediate) == 2
    plan = mpd.plan_of(arch, spec.mpd, candidate)
    for t, b in zip(arch.prunable, plan.blockings(arch, reference).values(), strict=True):
        mask = weight_mask(b, t.shape)
        assert bool((out.params[t.name][~mask] == 0).all()), t.name
        if b.k > 1:
            # inside the blocks the weights trained
            assert not torch.equal(out.params[t.name][mask], reference[t.name][mask]), t.name
    assert out.nonzero == sum(int(torch.count_nonzero(out.params[t.name])) for t in arch.parameters)
    # the same candidate and seed train the same weights
    again = mpd.train_trial(arch, reference, random_splits(), spec, candidate, seed=0,
                            device=torch.device("cpu"), report=lambda e, a: False,
                            check=lambda: None)
    assert all(torch.equal(out.params[k], again.params[k]) for k in out.params)


def test_prune_blocks_also_prunes_inside_the_blocks() -> None:
    arch = LENET_300_100
    torch.manual_seed(1)
    reference = {k: v.detach().clone() for k, v in zoo.build(arch).state_dict().items()}
    spec = JobSpec(model_id="m", dataset_id="d", method="mpd", max_accuracy_drop=0.1,
                   budget={"trials": 1}, mpd={"epochs": 1, "prune_blocks": True,
                                              "log10_keep": [-1.0, 0.0]})
    plan_blocks = [4, 4, 2]
    out = mpd.train_trial(arch, reference, random_splits(), spec, [*plan_blocks, -0.30103, 0.0, 0.0],
                          seed=0, device=torch.device("cpu"), report=lambda e, a: False,
                          check=lambda: None)
    fc1_in_blocks = blocking((300, 784), 4, seed=0).entries()
    assert abs(out.kept["fc1.weight"] - fc1_in_blocks / 2) <= 1  # half of fc1's blocks kept
    assert out.kept["fc2.weight"] == blocking((100, 300), 4, seed=1).entries()


@pytest.mark.parametrize(("mpd_options", "arch", "message"), [
    ({"blocks": []}, "lenet-300-100", "mpd.blocks needs at least one block count"),
    ({"blocks": [2, 2]}, "lenet-300-100", "lists a block count twice"),
    ({"blocks": [0, 4]}, "lenet-300-100", "must lie in 1…4096"),
    ({"blocks": [3]}, "lenet-5", "layer conv1.weight (conv2d [20, 1, 5, 5]) allows none of them"),
    ({"blocks": [16]}, "lenet-300-100", "layer fc3.weight (linear [10, 100]) allows none of them"),
    ({"blocks": [1]}, "lenet-300-100", "nothing to search"),
    ({"blocks": [1, 400]}, "lenet-300-100", "nothing to search"),
    ({"log10_keep": [0.0, -1.0]}, "lenet-300-100", "mpd.log10_keep must satisfy"),
    ({"block": [2]}, "lenet-300-100", "block"),
])
def test_a_spec_the_model_cannot_take_is_answered_422_naming_the_problem(
        settings: Settings, mpd_options: dict[str, Any], arch: str, message: str) -> None:
    a = get_architecture(arch)
    torch.manual_seed(0)
    weights = safetensors.torch.save({k: v.contiguous() for k, v in zoo.build(a).state_dict().items()})
    arrays = {"x_train": np.zeros((20, 1, 28, 28), np.float32), "y_train": np.arange(20) % 10,
              "x_test": np.zeros((10, 1, 28, 28), np.float32), "y_test": np.arange(10) % 10}
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with TestClient(create_app(settings), headers=bearer(make_token(settings.database_url))) as client:
        model = upload_model(client, weights, architecture=arch)
        ds = upload_dataset(client, buf.getvalue())
        body = {"model_id": model["id"], "dataset_id": ds["id"], "method": "mpd",
                "optimizer": "nevergrad:NGOpt", "max_accuracy_drop": 0.01,
                "budget": {"trials": 2}, "mpd": mpd_options}
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 422, r.text
        assert message in json.dumps(r.json(), ensure_ascii=False), r.text
        assert client.get("/v1/jobs").json()["total"] == 0  # nothing half-written


def test_lenet5_conv1_stays_dense_and_conv2_takes_only_common_divisors() -> None:
    spec = JobSpec(model_id="m", dataset_id="d", method="mpd", max_accuracy_drop=0.01,
                   budget={"trials": 1}, mpd={"blocks": [1, 2, 4, 5, 8, 10]})
    space, _ = mpd.search_space(LENET_5, spec.mpd)
    # conv1 (one input channel) is not a variable; conv2 (50 × 20) allows 1, 2, 5, 10
    assert [v.values for v in space.variables] == [(1, 2, 5, 10), (1, 2, 4, 5, 8, 10),
                                                  (1, 2, 4, 5, 8, 10)]
    plan = mpd.plan_of(LENET_5, spec.mpd, [10, 8, 2])
    assert plan.blocks == {"conv1.weight": 1, "conv2.weight": 10, "fc1.weight": 8, "fc2.weight": 2}
    with pytest.raises(ValueError, match=r"conv2\.weight cannot take 4 blocks"):
        mpd.plan_of(LENET_5, spec.mpd, [4, 8, 2])


def test_the_blockdiag_download_loads_with_thresher_load(tmp_path: Path) -> None:
    manifest, tensors = _file("lenet-5")
    from workers.jobs import checkpoint

    data = checkpoint.build(tensors, {**manifest, "spec": {"method": "mpd"}}, "blockdiag")
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    model = thresher.load(path)
    meta = json.loads(safetensors.safe_open(str(path), "pt").metadata()[MANIFEST_KEY])
    assert meta["artifact"] == "blockdiag" and model.thresher_manifest["artifact"] == "blockdiag"
    arch, params, _ = _masked("lenet-5", 7)
    dense = zoo.build(arch).eval()
    dense.load_state_dict(params)
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        assert float((model(x) - dense(x)).abs().max()) < 1e-5
