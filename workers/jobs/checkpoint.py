"""The downloadable result: dense safetensors with exact zeros and a JSON manifest in its metadata."""

from __future__ import annotations

import json
from typing import Any

import safetensors.torch
import torch

from core.artifacts import FORMAT, MANIFEST_KEY


def build(params: dict[str, torch.Tensor], manifest: dict[str, Any], artifact: str = "pruned") -> bytes:
    """The file of one artifact: its tensors and the manifest (core.artifacts)."""
    # parameters and running statistics as float32; integer buffers (BatchNorm's step counter)
    # keep their dtype, which the architecture's table and the upload check require
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
               .contiguous() for k, v in params.items()}
    return safetensors.torch.save(tensors, metadata={MANIFEST_KEY: json.dumps({**manifest, "format": FORMAT, "artifact": artifact})})


def read_manifest(data: bytes) -> dict[str, Any]:
    """The manifest of a checkpoint (header only; no tensor is loaded)."""
    from core.safetensors_header import read_header

    _, metadata = read_header(data, "checkpoint")
    result: dict[str, Any] = json.loads(metadata[MANIFEST_KEY])
    return result
