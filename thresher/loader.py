"""`thresher.load`: any downloaded checkpoint as a torch module.

The file is read as safetensors only (its header first, bounded, then the tensors by the
safetensors library; nothing is unpickled or executed). It must carry a Thresher manifest
(`core.artifacts`); the manifest's architecture gives the tensor table, and the file's tensors
must be exactly that table's (names, shapes, dtypes, finite values) before any module is built.
The artifact's builder (`workers.models.artifacts`) makes the module; a format a method adds is
registered by that method's module, loaded here through the method registry when needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import nn

from core import methods
from core.artifacts import MANIFEST_KEY, artifact_of
from core.errors import InvalidInput
from core.safetensors_header import HeaderLimits, read_header
from thresher import LoadError
from workers.models import artifacts

# a checkpoint holds one tensor per tensor of the model: generous, still bounded
LIMITS = HeaderLimits(max_tensors=1 << 16)


def manifest_of(data: bytes, where: str = "checkpoint") -> dict[str, Any]:
    """The Thresher manifest of a file's bytes (header only); LoadError if there is none."""
    try:
        _, metadata = read_header(data, where, LIMITS)
    except InvalidInput as exc:
        raise LoadError(str(exc)) from None
    if MANIFEST_KEY not in metadata:
        raise LoadError(f"{where} is a safetensors file without a Thresher manifest (metadata "
                        f"key {MANIFEST_KEY!r}): not a checkpoint this service wrote")
    try:
        manifest = json.loads(metadata[MANIFEST_KEY])
    except json.JSONDecodeError:
        raise LoadError(f"{where}: its Thresher manifest is not JSON") from None
    if not isinstance(manifest, dict) or artifact_of(manifest) is None:
        raise LoadError(f"{where}: its manifest is not a Thresher checkpoint's "
                        f"(format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    return manifest


def load_bytes(data: bytes, where: str = "checkpoint") -> nn.Module:
    manifest = manifest_of(data, where)
    artifact = artifact_of(manifest)
    assert artifact is not None
    if not artifacts.known(artifact):
        method = (manifest.get("spec") or {}).get("method")
        if isinstance(method, str) and method in methods.names():
            from workers.methods import load as load_method

            load_method(method)  # its module registers the formats it writes
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # the library checks offsets and sizes against the header
        raise LoadError(f"{where}: corrupt safetensors data ({exc})") from None
    try:
        model = artifacts.module_for(artifact, manifest, tensors)
    except (ValueError, RuntimeError) as exc:
        raise LoadError(f"{where}: {exc}") from None
    model.thresher_manifest = manifest  # type: ignore[assignment]
    return model


def load(path: str | Path) -> nn.Module:
    p = Path(path)
    return load_bytes(p.read_bytes(), str(p))
