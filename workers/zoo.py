"""Torch modules of the built-in architectures (tables in core.zoo) and building any registered one."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from core.architectures import Architecture


class LeNet300100(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """Caffe's LeNet (as in OLMP): no nonlinearity after the convolutions, ReLU after fc1 only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def build(arch: Architecture) -> nn.Module:
    """Instantiate the architecture's module and check it has exactly the declared tensors."""
    module_name, _, attr = arch.builder.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    model: nn.Module = factory()
    declared = {t.name: t.shape for t in arch.tensors}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if declared != actual:
        raise RuntimeError(f"architecture {arch.name}: builder {arch.builder} makes tensors {actual}, "
                           f"the table declares {declared}")
    return model
