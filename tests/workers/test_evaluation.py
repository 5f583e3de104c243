"""Batched population scoring gives exactly the accuracies of one-at-a-time scoring (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch

from core.architectures import get_architecture
from workers.models import zoo
from workers.models.masking import MagnitudePruner
from workers.runtime.evaluation import Evaluator, accuracy, dense_flops


@pytest.mark.parametrize("arch_name", ["lenet-300-100", "lenet-5"])
def test_batched_and_one_at_a_time_agree_exactly(arch_name: str, small_arrays: dict[str, np.ndarray],
                                                 small_model_weights: bytes) -> None:
    arch = get_architecture(arch_name)
    torch.manual_seed(0)
    model = zoo.build(arch).eval()
    params = {k: v.detach() for k, v in model.state_dict().items()}
    if arch_name == "lenet-300-100":  # an untrained MLP predicts one class for every input
        params = safetensors.torch.load(small_model_weights)
    pruner = MagnitudePruner(arch, params, prune_biases=False)
    rng = np.random.default_rng(0)
    candidates = [pruner.apply(list(10 ** rng.uniform(-2.5, 0, pruner.dims))).params for _ in range(12)]
    x, y = torch.from_numpy(small_arrays["x_val"][:400]), torch.from_numpy(small_arrays["y_val"][:400])

    loop = Evaluator(model, x, y, mode="loop").accuracies(candidates)
    batched = Evaluator(model, x, y, mode="batched").accuracies(candidates)
    one_by_one = [Evaluator(model, x, y, mode="batched").accuracies([c])[0] for c in candidates]
    # a tiny activation budget forces chunking over both candidates and samples
    chunked = Evaluator(model, x, y, mode="batched", budget=50_000).accuracies(candidates)
    plain = [accuracy(model, c, x, y) for c in candidates]
    assert batched == one_by_one == chunked == loop == plain
    assert len(set(batched)) > 3  # the candidates really differ


def test_dense_flops_of_the_builtins() -> None:
    x = torch.zeros(1, 1, 28, 28)
    for name, expected in (("lenet-300-100", 2 * (784 * 300 + 300 * 100 + 100 * 10)),
                           ("lenet-5", 2 * (20 * 25 * 24 * 24 + 50 * 20 * 25 * 8 * 8 + 800 * 500 + 500 * 10))):
        model = zoo.build(get_architecture(name))
        assert dense_flops(model, dict(model.state_dict()), x) == expected
