"""The built-in modules' 2×2 max pooling: torch's max_pool2d's values without autograd, and
max_pool2d itself (its gradient) with it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.zoo import VGG_FASHION
from workers.models import zoo


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 9), (1, 1, 2, 2), (3, 4, 3, 2)])
def test_inference_pooling_equals_max_pool2d(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, 0] = float("nan")
    with torch.inference_mode():
        ours, theirs = zoo.max_pool_2x2(x), nn.functional.max_pool2d(x, 2)
    assert ours.shape == theirs.shape
    assert torch.equal(ours.nan_to_num(-7.0), theirs.nan_to_num(-7.0))
    assert torch.equal(ours.isnan(), theirs.isnan())
    # channels-last input too (the layout a deployed model may run in)
    with torch.no_grad():
        cl = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
        assert torch.equal(zoo.max_pool_2x2(cl).nan_to_num(-7.0), theirs.nan_to_num(-7.0))


def test_a_map_too_small_to_pool_is_max_pool2d_error() -> None:
    with torch.no_grad(), pytest.raises(RuntimeError, match="too small"):
        zoo.max_pool_2x2(torch.zeros(1, 1, 1, 6))


def test_training_pooling_keeps_max_pool2d_gradient() -> None:
    # a tie (all four zero after a ReLU): max_pool2d sends the gradient to one element
    x = torch.zeros(1, 1, 2, 2, requires_grad=True)
    zoo.max_pool_2x2(x).sum().backward()
    y = torch.zeros(1, 1, 2, 2, requires_grad=True)
    nn.functional.max_pool2d(y, 2).sum().backward()
    assert x.grad is not None and y.grad is not None
    assert torch.equal(x.grad, y.grad) and float(x.grad.sum()) == 1.0


def test_vgg_fashion_logits_are_those_of_max_pool2d() -> None:
    torch.manual_seed(0)
    net = zoo.build(VGG_FASHION).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        fast = net(x)
    # with autograd on, the module pools with max_pool2d itself
    slow = net(x.requires_grad_())
    assert torch.equal(fast, slow.detach())
