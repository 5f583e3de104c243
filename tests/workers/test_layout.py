"""Convolution weights channels-last on CPU (workers.runtime.layout): the same model, trajectory
and scores as the standard layout, and only standard tensors leave a trainer."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch

from core.architectures import get_architecture
from workers.models import zoo
from workers.runtime.data import Splits, split_arrays
from workers.runtime.evaluation import accuracy
from workers.runtime.layout import Layout, standard
from workers.runtime.masked_sgd import MaskedTrainer, SolverConfig

ARCH = get_architecture("lenet-5")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits(small_arrays: dict[str, np.ndarray]) -> Splits:
    return split_arrays(small_arrays, {})


def _reference() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in zoo.build(ARCH).state_dict().items()}


def test_only_convolution_weights_on_cpu_take_the_layout() -> None:
    model = zoo.build(ARCH)
    assert Layout(model, CPU).names == {"conv1.weight", "conv2.weight"}
    assert Layout(model, torch.device("meta")).names == frozenset()
    assert Layout(model, CPU, enabled=False).names == frozenset()
    assert Layout(zoo.build(get_architecture("lenet-300-100")), CPU).names == frozenset()
    # a model that does not say its forward is safe for it (an uploaded graph may `view` an
    # activation, which channels-last strides cannot serve) keeps the standard layout
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten())
    assert Layout(plain, CPU).names == frozenset()


def test_one_input_channel_gets_canonical_channels_last_strides() -> None:
    layout = Layout(zoo.build(ARCH), CPU)
    w = _reference()["conv1.weight"]  # 20 × 1 × 5 × 5: "channels-last" by torch's test already
    assert w.is_contiguous(memory_format=torch.channels_last) and w.stride(1) != 1
    c = layout.copy("conv1.weight", w)
    assert c.stride() == (25, 1, 5, 1) and torch.equal(c, w) and c.data_ptr() != w.data_ptr()
    assert layout.fast("conv1.weight", c) is c
    # a product with a mask comes out in the standard strides; fast puts it back
    product = c * torch.ones_like(c)
    assert product.stride(1) != 1
    assert layout.fast("conv1.weight", product).stride() == (25, 1, 5, 1)
    bias = _reference()["conv1.bias"]
    assert layout.fast("conv1.bias", bias) is bias
    assert standard(c).stride() == (25, 25, 5, 1) and torch.equal(standard(c), w)


def _trainer(splits: Splits, channels_last: bool) -> MaskedTrainer:
    names = [t.name for t in ARCH.prunable]
    t = MaskedTrainer(zoo.build(ARCH).eval(), _reference(), names, splits.x_train, splits.y_train,
                      SolverConfig(), 0, channels_last=channels_last)
    t.set_thresholds({n: float(t.w[n].detach().abs().quantile(0.7)) for n in names})
    return t


def test_a_channels_last_trainer_follows_the_standard_trajectory(splits: Splits) -> None:
    fast, plain = _trainer(splits, True), _trainer(splits, False)
    assert fast.w["conv2.weight"].stride(1) == 1 and plain.w["conv2.weight"].is_contiguous()
    for t in (fast, plain):
        t.train(5)  # splicing (masks may refresh), then masks frozen
        t.freeze()
        t.train(25)
    a, b = fast.masked_params(), plain.masked_params()
    assert fast.kept() == plain.kept()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
        assert a[k].is_contiguous(), k  # handed out in the standard layout
    state = fast.state()
    for group in (state.weights, state.masks, state.velocity):
        assert all(t.is_contiguous() for t in group.values())
    # what leaves a trainer saves as it is (safetensors refuses non-contiguous tensors)
    back = safetensors.torch.load(safetensors.torch.save(a))
    assert all(torch.equal(back[k], a[k]) for k in a)
    # and a state saved from one layout resumes in the other
    plain.load(state, frozen=True)
    assert torch.equal(plain.masked_params()["conv2.weight"], a["conv2.weight"])


def test_scores_do_not_depend_on_the_layout(splits: Splits) -> None:
    model = zoo.build(ARCH).eval()
    params = _reference()
    with torch.inference_mode():
        model.load_state_dict(params)
        direct = float((model(splits.x_val).argmax(1) == splits.y_val).float().mean())
    assert abs(accuracy(model, params, splits.x_val, splits.y_val) - direct) <= 1 / len(splits.y_val)
