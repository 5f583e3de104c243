"""Torch modules from downloaded artifacts: one builder per artifact format.

The dense formats ("pruned", "compact") are the architecture's own module with the file's tensors.
A method whose result has a structure of its own (block-diagonal, decomposed) registers a builder
for its format from its own module; `thresher.load` loads the method named in the manifest's spec
(through the method registry) when the format is not known yet, so that its builder registers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core import tensor_table
from core.architectures import Architecture, from_config, get_architecture
from core.artifacts import DENSE_ARTIFACTS
from workers.models import zoo

# (manifest, tensors) → module in eval mode; raises ValueError naming what does not match
Builder = Callable[[dict[str, Any], dict[str, torch.Tensor]], nn.Module]
_BUILDERS: dict[str, Builder] = {}

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.float64: "F64",
                       torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32"}


def register(artifact: str, builder: Builder) -> None:
    _BUILDERS[artifact] = builder


def architecture(manifest: dict[str, Any]) -> Architecture:
    """The tensor table a manifest describes: a built-in family's at the recorded config, or an
    installed architecture by name."""
    name, config = manifest.get("architecture"), manifest.get("architecture_config") or {}
    if not isinstance(name, str) or not isinstance(config, dict):
        raise ValueError("the manifest names no architecture")
    if "base" in config:
        return from_config(name, config)
    try:
        return get_architecture(name)
    except Exception as exc:
        raise ValueError(f"architecture {name!r} is not installed here ({exc})") from None


def check_tensors(arch: Architecture, tensors: dict[str, torch.Tensor]) -> None:
    """Exactly the table's tensors, each in its shape and its kind's dtype (core.tensor_table, the
    upload route's check), floats finite."""
    found = {k: (tuple(v.shape), _SAFETENSORS_DTYPES.get(v.dtype, str(v.dtype))) for k, v in tensors.items()}
    problem = tensor_table.mismatch(arch, found, "the file's weights")
    if problem is not None:
        raise ValueError(problem)
    for name, got in tensors.items():
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ValueError(f"tensor {name!r} holds NaN or infinite values")


def dense(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    arch = architecture(manifest)
    check_tensors(arch, tensors)
    model = zoo.build(arch)
    model.load_state_dict(tensors, strict=True)
    return model.eval()


for _artifact in DENSE_ARTIFACTS:
    register(_artifact, dense)


def known(artifact: str) -> bool:
    return artifact in _BUILDERS


def module_for(artifact: str, manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    if artifact not in _BUILDERS:
        raise ValueError(f"artifact format {artifact!r} is not one this installation can load "
                         f"({', '.join(sorted(_BUILDERS))})")
    return _BUILDERS[artifact](manifest, tensors)
