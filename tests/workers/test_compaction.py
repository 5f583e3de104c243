"""Structured compaction: smaller dense LeNets that compute the pruned model's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch
from torch.func import functional_call

from core.architectures import Architecture, Tensor, from_config, get_architecture
from core.methods.regularization import RegularizationOptions
from workers.methods.regularized import run_trial
from workers.models import zoo
from workers.models.compaction import NotCompactable, compact, cpu_speedup, zero_dead_units
from workers.runtime.data import split_arrays
from workers.runtime.evaluation import accuracy


def logits(arch: Architecture, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = zoo.build(arch).eval()
    model.load_state_dict(params)  # strict: the compact table and weights agree exactly
    with torch.inference_mode():
        return functional_call(model, params, (x,))


def random_params(arch: Architecture, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in zoo.build(arch).state_dict().items()}


def images(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_lenet_300_100_structured_zeros_compact_to_the_same_logits() -> None:
    arch = get_architecture("lenet-300-100")
    p = random_params(arch, 0)
    g = torch.Generator().manual_seed(2)
    dead_pixels = torch.randperm(784, generator=g)[:300]
    p["fc1.weight"][:, dead_pixels] = 0
    p["fc2.weight"][:, torch.arange(0, 300, 3)] = 0  # 100 fc1 units nobody reads
    p["fc3.weight"][:, :40] = 0  # 40 fc2 units nobody reads
    # fc1 units with no inputs but a positive bias: constants, to be folded into fc2's bias
    p["fc1.weight"][[1, 2, 4], :] = 0
    p["fc1.bias"][[1, 2, 4]] = torch.tensor([0.5, 0.7, -0.3])
    # an fc2 unit whose every remaining input is cut: constant relu(bias) into fc3
    p["fc2.weight"][50, :] = 0
    p["fc2.bias"][50] = 0.9
    x = images()
    small, q = compact(arch, p)
    assert small.name != arch.name and small.config["base"] == "lenet-300-100"
    assert small.tensor("fc1.weight").shape == (300 - 100 - 3, 784 - 300)
    assert small.tensor("fc2.weight").shape == (100 - 40 - 1, 300 - 100 - 3)
    assert small.total_parameters < arch.total_parameters / 2
    assert torch.allclose(logits(small, q, x), logits(arch, p, x), atol=1e-5, rtol=0)
    assert small.config["input_indices"] == sorted(set(range(784)) - set(dead_pixels.tolist()))
    # the compact architecture is plain data: JSON, rebuilt from name and config
    json.dumps(small.config)
    assert from_config(small.name, json.loads(json.dumps(small.config))) == small
    # nothing left to remove: compacting again changes nothing
    again, r = compact(small, q)
    assert again == small and all(torch.equal(r[k], q[k]) for k in q)


def test_folding_is_needed_for_constant_units() -> None:
    """A unit with no inputs but a positive bias still feeds the next layer: compaction folds it,
    so dropping it plainly would change the logits (this guards the fold against being skipped)."""
    arch = get_architecture("lenet-300-100")
    p = random_params(arch, 3)
    p["fc1.weight"][:10, :] = 0
    p["fc1.bias"][:10] = 1.0
    small, q = compact(arch, p)
    assert small.tensor("fc1.weight").shape[0] == 290
    naive = dict(q)
    naive["fc2.bias"] = p["fc2.bias"]  # the bias before folding
    x = images()
    full = logits(arch, p, x)
    assert torch.allclose(logits(small, q, x), full, atol=1e-5, rtol=0)
    assert not torch.allclose(logits(small, naive, x), full, atol=1e-3)


def test_lenet_5_structured_zeros_compact_to_the_same_logits() -> None:
    arch = get_architecture("lenet-5")
    p = random_params(arch, 0)
    p["conv1.weight"][[0, 3]] = 0  # constant maps: folded into conv2's bias
    p["conv1.bias"][[0, 3]] = torch.tensor([0.4, -0.2])
    p["conv2.weight"][:, [5, 6, 7]] = 0  # conv1 filters 5–7: nobody reads them
    p["conv2.weight"][[1, 2]] = 0  # constant conv2 filters: folded into fc1's bias
    p["conv2.bias"][[1, 2]] = torch.tensor([0.3, 0.6])
    for k in range(10, 20):  # conv2 filters 10–19: fc1 never reads their 4×4 block
        p["fc1.weight"][:, 16 * k : 16 * k + 16] = 0
    p["fc2.weight"][:, 100:300] = 0  # 200 fc1 units nobody reads
    p["fc1.weight"][[0, 1]] = 0
    p["fc1.bias"][[0, 1]] = torch.tensor([0.8, 0.1])
    small, q = compact(arch, p)
    assert small.tensor("conv1.weight").shape == (15, 1, 5, 5)
    assert small.tensor("conv2.weight").shape == (38, 15, 5, 5)
    assert small.tensor("fc1.weight").shape == (298, 38 * 16)
    x = images()
    assert torch.allclose(logits(small, q, x), logits(arch, p, x), atol=1e-5, rtol=0)
    assert from_config(small.name, small.config) == small


def test_cascade_empties_a_whole_layer_but_keeps_one_unit() -> None:
    arch = get_architecture("lenet-300-100")
    p = random_params(arch, 4)
    p["fc3.weight"][:] = 0  # the logits are fc3's bias alone: everything before is dead
    small, q = compact(arch, p)
    assert [small.tensor(n).shape for n in ("fc1.weight", "fc2.weight", "fc3.weight")] == [
        (1, 1), (1, 1), (10, 1)]
    assert not any(q[n].any() for n in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
    x = images(8)
    assert torch.allclose(logits(small, q, x), logits(arch, p, x), atol=1e-6, rtol=0)


def test_only_builtin_families_are_compacted() -> None:
    tiny = Architecture(name="tiny", description="", input_shape=(1, 28, 28), num_classes=10,
                        tensors=(Tensor("a.weight", (10, 784), "linear"),), builder="x:y")
    with pytest.raises(NotCompactable, match="cannot be compacted"):
        compact(tiny, {"a.weight": torch.zeros(10, 784)})
    with pytest.raises(ValueError, match="do not match"):
        compact(get_architecture("lenet-5"), {"fc1.weight": torch.zeros(3)})


def test_cpu_speedup_reports_positive_latencies() -> None:
    arch = get_architecture("lenet-300-100")
    p = random_params(arch, 0)
    p["fc2.weight"][:, 30:] = 0
    p["fc3.weight"][:, 10:] = 0
    small, q = compact(arch, p)
    out = cpu_speedup(arch, p, small, q, batch=64, repeats=5)
    assert set(out) == {"reference_ms", "compact_ms", "speedup", "batch"}
    assert out["reference_ms"] > 0 and out["compact_ms"] > 0 and out["speedup"] > 0
    assert out["batch"] == 64
    assert out["speedup"] == pytest.approx(out["reference_ms"] / out["compact_ms"])


def test_a_neuron_l0_trial_compacts_without_changing_accuracy(  # type: ignore[no-untyped-def]
        small_arrays: dict[str, np.ndarray], small_model_weights: bytes) -> None:
    arch = get_architecture("lenet-300-100")
    splits = split_arrays(small_arrays, {})
    out = run_trial("l0", arch, safetensors.torch.load(small_model_weights), splits,
                    RegularizationOptions(epochs=2, finetune_epochs=0, lr=1e-2, batch_size=50,
                                          granularity="neuron"),
                    [-4.5] * 3, seed=0, device=torch.device("cpu"),
                    report=lambda _e, _a: False, check=lambda: None)
    small, q = compact(arch, out.params)
    assert small.tensor("fc1.weight").shape[1] == out.groups_kept["fc1.weight"] < 784
    assert small.total_parameters < arch.total_parameters
    model = zoo.build(small).eval()
    assert accuracy(model, q, splits.x_val, splits.y_val) == out.val_accuracy


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_units_nothing_reads_lose_their_inputs_without_changing_a_logit(name: str) -> None:
    arch = get_architecture(name)
    p = random_params(arch, 7)
    if name == "lenet-300-100":
        p["fc3.weight"][:, :40] = 0  # 40 fc2 units unread
        p["fc2.weight"][:, :120] = 0  # 120 fc1 units unread
        p["fc2.weight"][40:, 120:150] = 0  # 30 more, read only by the unread fc2 units
        dead_rows = {"fc2.weight": 40, "fc1.weight": 150}
    else:
        p["fc2.weight"][:, :100] = 0  # 100 fc1 units unread
        p["fc1.weight"][:, :16 * 10] = 0  # conv2 filters 0–9 unread
        p["conv2.weight"][:, :5] = 0  # conv1 filters 0–4 unread
        dead_rows = {"fc1.weight": 100, "conv2.weight": 10, "conv1.weight": 5}
    out = zero_dead_units(arch, p)
    x = images()
    assert torch.equal(logits(arch, out, x), logits(arch, p, x))  # bit for bit
    for w, n in dead_rows.items():
        rows = out[w].flatten(1).ne(0).any(dim=1)
        assert int((~rows).sum()) == n, w
        assert int((out[w.replace("weight", "bias")] == 0).sum()) == n
    before = sum(int(torch.count_nonzero(v)) for v in p.values())
    after = sum(int(torch.count_nonzero(v)) for v in out.values())
    assert after < before
    # and the compact model holds exactly what is left, unread units gone
    _, small = compact(arch, out)
    assert sum(v.numel() for v in small.values()) == after
    again = zero_dead_units(arch, out)
    assert all(torch.equal(again[k], out[k]) for k in out)  # nothing left to cut
