import math

import pytest
import torch

from core.architectures import get_architecture
from workers.models import zoo
from workers.models.masking import MagnitudePruner, log_ratios_to_keep


@pytest.fixture
def lenet() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = zoo.build(get_architecture("lenet-300-100"))
    return model, dict(model.state_dict())


def test_keep_ratios_give_exact_counts_of_the_largest_weights(lenet) -> None:  # type: ignore[no-untyped-def]
    _, params = lenet
    pruner = MagnitudePruner(get_architecture("lenet-300-100"), params, prune_biases=False)
    assert pruner.names == ["fc1.weight", "fc2.weight", "fc3.weight"]
    pruned = pruner.apply([0.1, 0.5, 1.0])
    assert pruned.kept == {"fc1.weight": 23_520, "fc2.weight": 15_000, "fc3.weight": 1_000}
    # the kept weights are exactly the largest magnitudes, untouched
    w, p = params["fc1.weight"], pruned.params["fc1.weight"]
    kept = p != 0
    assert torch.equal(p[kept], w[kept])
    assert w[kept].abs().min() >= w[~kept].abs().max()
    # biases are not searched and stay dense
    assert torch.equal(pruned.params["fc1.bias"], params["fc1.bias"])
    assert pruned.nonzero == 23_520 + 15_000 + 1_000 + 300 + 100 + 10
    assert pruned.total == 266_610


def test_tiny_ratio_keeps_at_least_one_weight_and_counts_match_tensors(lenet) -> None:  # type: ignore[no-untyped-def]
    _, params = lenet
    pruner = MagnitudePruner(get_architecture("lenet-300-100"), params, prune_biases=True)
    pruned = pruner.apply([1e-9] * pruner.dims)
    assert all(v == 1 for v in pruned.kept.values())
    assert pruned.nonzero == sum(int(torch.count_nonzero(t)) for t in pruned.params.values()) == 6


def test_tied_biases_are_pruned_with_their_weight_s_threshold(lenet) -> None:  # type: ignore[no-untyped-def]
    _, params = lenet
    arch = get_architecture("lenet-300-100")
    pruner = MagnitudePruner(arch, params, prune_biases=False, tie_biases=True)
    assert pruner.names == ["fc1.weight", "fc2.weight", "fc3.weight"]  # no extra variable
    assert pruner.tied == {"fc1.weight": "fc1.bias", "fc2.weight": "fc2.bias", "fc3.weight": "fc3.bias"}
    ratios = [0.01, 0.05, 1.0]
    pruned = pruner.apply(ratios)
    for (w, b), r in zip(pruner.tied.items(), ratios, strict=True):
        t = pruner.threshold(w, r)
        expected = torch.where(params[b].abs() >= t, params[b], torch.zeros_like(params[b]))
        assert torch.equal(pruned.params[b], expected)
    assert int((pruned.params["fc1.bias"] == 0).sum()) > 0  # the layer's T cuts some biases
    assert pruned.nonzero == sum(int(torch.count_nonzero(t)) for t in pruned.params.values())
    # biases searched as variables of their own take precedence over tying
    assert MagnitudePruner(arch, params, prune_biases=True, tie_biases=True).tied == {}


def test_thresholds_follow_sorted_magnitudes(lenet) -> None:  # type: ignore[no-untyped-def]
    _, params = lenet
    pruner = MagnitudePruner(get_architecture("lenet-300-100"), params, prune_biases=False)
    w = params["fc2.weight"].abs().flatten()
    assert pruner.threshold("fc2.weight", 1.0) == pytest.approx(float(w.min()))
    assert pruner.threshold("fc2.weight", 1 / 30_000) == pytest.approx(float(w.max()))


def test_bad_ratios_are_rejected(lenet) -> None:  # type: ignore[no-untyped-def]
    _, params = lenet
    pruner = MagnitudePruner(get_architecture("lenet-300-100"), params, prune_biases=False)
    with pytest.raises(ValueError, match="keep ratio"):
        pruner.apply([0.5, math.nan, 0.5])
    with pytest.raises(ValueError, match="expected 3 keep ratios"):
        pruner.apply([0.5])


def test_log_space_maps_to_ratios() -> None:
    assert log_ratios_to_keep([0.0, -1.0, -4.0, 0.3]) == pytest.approx([1.0, 0.1, 1e-4, 1.0])


def test_builtin_modules_match_their_tables() -> None:
    for name in ("lenet-300-100", "lenet-5"):
        arch = get_architecture(name)
        model = zoo.build(arch)
        assert sum(p.numel() for p in model.parameters()) == arch.total_parameters
        out = model(torch.zeros(3, 1, 28, 28))
        assert out.shape == (3, 10)
