"""The `decomposed` download: the uploaded architecture with layers replaced by their Tucker-2 / SVD
decompositions, and the builder that turns such a file back into a torch module.

File tensors: the decomposed module's state dict (`conv2.0.weight`, `conv2.1.weight`,
`conv2.2.weight`, `conv2.2.bias` for a Tucker-2 convolution; `fc1.0.weight`, `fc1.1.weight`,
`fc1.1.bias` for an SVD-split linear layer; every other tensor under its own name). The manifest's
`decomposed.layers` names each replaced weight tensor with its module, kind and ranks; the builder
makes the module those ranks describe and loads the file into it with every name and shape
checked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.models import artifacts, zoo
from workers.models.tucker import Ranks, empty_decomposed, replace

ARTIFACT = "decomposed"


def layers_doc(arch_kinds: dict[str, str], ranks: dict[str, Ranks]) -> dict[str, dict[str, Any]]:
    return {name: {"module": name.removesuffix(".weight"), "kind": arch_kinds[name],
                   "ranks": [r.out, r.inp],
                   "form": "svd" if arch_kinds[name] == "linear" else
                   ("tucker1" if r.inp is None else "tucker2")}
            for name, r in ranks.items()}


def module(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The torch module a `decomposed` file describes (in eval mode)."""
    arch = artifacts.architecture(manifest)
    layers = (manifest.get("decomposed") or {}).get("layers")
    if not isinstance(layers, dict) or not layers:
        raise ValueError("the manifest lists no decomposed layer (decomposed.layers)")
    table = {t.name: t for t in arch.tensors}
    model = zoo.build(arch)
    for name, doc in layers.items():
        if name not in table or not table[name].prunable or not name.endswith(".weight"):
            raise ValueError(f"decomposed layer {name!r} is not a layer of {arch.name}")
        ranks = doc.get("ranks") if isinstance(doc, dict) else None
        if (not isinstance(ranks, list) or len(ranks) != 2 or not isinstance(ranks[0], int)
                or not (ranks[1] is None or isinstance(ranks[1], int))):
            raise ValueError(f"decomposed layer {name}: ranks must be [out, in or null]")
        t = table[name]
        top_out = min(t.shape[0], t.shape[1]) if t.kind == "linear" else t.shape[0]
        if not 1 <= ranks[0] <= top_out or (ranks[1] is not None and not 1 <= ranks[1] <= t.shape[1]):
            raise ValueError(f"decomposed layer {name}: ranks {ranks} do not fit its shape {list(t.shape)}")
        path = name.removesuffix(".weight")
        replace(model, path, empty_decomposed(model.get_submodule(path), Ranks(ranks[0], ranks[1])))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if set(expected) != set(got):
        raise ValueError(f"the file's tensors are not the decomposed {arch.name}'s: missing "
                         f"{sorted(set(expected) - set(got))}, unexpected {sorted(set(got) - set(expected))}")
    for k, shape in expected.items():
        if got[k] != shape:
            raise ValueError(f"tensor {k!r} has shape {list(got[k])}, the ranks need {list(shape)}")
        v = tensors[k]
        if k.endswith("num_batches_tracked") != (v.dtype == torch.int64):
            raise ValueError(f"tensor {k!r} has dtype {v.dtype}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"tensor {k!r} holds NaN or infinite values")
    model.load_state_dict(tensors, strict=True)
    return model.eval()


artifacts.register(ARTIFACT, module)
