"""Torch modules of the built-in architectures (tables in core.zoo) and building any registered one."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from core.architectures import Architecture, family_of
from core.zoo import (
    LENET_5_POOLED,
    LENET_5_WIDTHS,
    LENET_300_100_WIDTHS,
    MNIST_PIXELS,
    VGG_FASHION_CONVS,
    VGG_FASHION_POOL_AFTER,
    VGG_FASHION_WIDTHS,
)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """`nn.functional.max_pool2d(x, 2)`. Without autograd it is the maximum of the four strided
    views, the same values (a maximum is exact) and, on this torch's CPU with one thread, 3.5–11×
    faster than max_pool2d's NCHW kernel on vgg-fashion's shapes (`bench/max_pool.py`): at batch
    256 its three poolings took an eighth of the dense model's inference and a quarter of its
    Tucker-decomposed form's. With autograd max_pool2d itself, so that training
    sends a tie's gradient to one element as before, and on a map too small to pool, max_pool2d's
    error."""
    if (torch.is_grad_enabled() and x.requires_grad) or min(x.shape[-2:]) < 2:
        return nn.functional.max_pool2d(x, 2)
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                         torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


class LeNet300100(nn.Module):
    """fc1 → ReLU → fc2 → ReLU → fc3; with `input_indices`, fc1 reads only those flattened pixels
    (a compacted model still takes whole images, so it is a drop-in replacement)."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        widths = {**LENET_300_100_WIDTHS, **dict((config or {}).get("widths", {}))}
        fc1, fc2 = int(widths["fc1"]), int(widths["fc2"])
        input_indices: Sequence[int] | None = (config or {}).get("input_indices")
        self.input_indices: torch.Tensor | None
        if input_indices is None:
            self.input_indices = None
            inputs = MNIST_PIXELS
        else:
            # not persistent: the state dict holds exactly the architecture's tensor table
            self.register_buffer("input_indices", torch.tensor(list(input_indices), dtype=torch.long),
                                 persistent=False)
            inputs = len(input_indices)
        self.fc1 = nn.Linear(inputs, fc1)
        self.fc2 = nn.Linear(fc1, fc2)
        self.fc3 = nn.Linear(fc2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.input_indices is not None:
            x = x.index_select(1, self.input_indices)
        out: torch.Tensor = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return out


class LeNet5(nn.Module):
    """Caffe's LeNet (as in OLMP): no nonlinearity after the convolutions, ReLU after fc1 only."""

    # its forward reads activations by flatten (a reshape), never a view: workers.runtime.layout
    # may keep its convolutions channels-last on CPU
    channels_last_safe = True

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        widths = {**LENET_5_WIDTHS, **dict((config or {}).get("widths", {}))}
        conv1, conv2, fc1 = int(widths["conv1"]), int(widths["conv2"]), int(widths["fc1"])
        self.conv1 = nn.Conv2d(1, conv1, 5)
        self.conv2 = nn.Conv2d(conv1, conv2, 5)
        self.fc1 = nn.Linear(conv2 * LENET_5_POOLED, fc1)
        self.fc2 = nn.Linear(fc1, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        out: torch.Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return out


class VggFashion(nn.Module):
    """conv 3×3 (no bias) → BatchNorm → ReLU, six times, max-pool after every second, then global
    average pooling and fc; `config["widths"]` narrows the convolutions (a compacted model)."""

    channels_last_safe = True  # as LeNet5's: no view of an activation

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        widths = {**VGG_FASHION_WIDTHS, **dict((config or {}).get("widths", {}))}
        channels = 1
        self.pool_after: list[bool] = []
        for i, conv in enumerate(VGG_FASHION_CONVS, start=1):
            out = int(widths[conv])
            self.add_module(conv, nn.Conv2d(channels, out, 3, padding=1, bias=False))
            self.add_module(f"bn{i}", nn.BatchNorm2d(out))
            self.pool_after.append(conv in VGG_FASHION_POOL_AFTER)
            channels = out
        self.fc = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, pool) in enumerate(zip(VGG_FASHION_CONVS, self.pool_after, strict=True), 1):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, conv)(x)))
            if pool:
                x = max_pool_2x2(x)
        out: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return out


def build(arch: Architecture) -> nn.Module:
    """Instantiate the architecture's module and check it has exactly the declared tensors."""
    module_name, _, attr = arch.builder.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    # a family's builder receives the architecture's config (its widths, kept inputs, ...); an
    # operator's single architecture is built as it is
    model: nn.Module = factory(config=arch.config) if family_of(arch) is not None else factory()
    declared = {t.name: t.shape for t in arch.tensors}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if declared != actual:
        raise RuntimeError(f"architecture {arch.name}: builder {arch.builder} makes tensors {actual}, "
                           f"the table declares {declared}")
    return model
