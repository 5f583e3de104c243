"""The `blockdiag` download: a model whose block-structured layers are stored as their blocks and
permutation indices, and the builder that turns such a file back into a torch module.

File tensors: every tensor of the architecture as it is, except each blocked layer's weight and
bias, replaced by `<module>.blocks` (linear: k × rows × cols, zero-padded) or `<module>.weight`
(convolution: the grouped kernel), `<module>.rows` and `<module>.cols` (int64 original indices,
−1 in a linear layer's padding) and `<module>.bias`. The manifest's `blockdiag.layers` names each
blocked weight tensor with its module, kind, k and shape. Loading checks all of it: indices that
are not a permutation, padding that is not zero, or a shape that does not fit is refused (a
file built otherwise would compute something else than its manifest says).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.architectures import Architecture
from workers.models import artifacts, zoo
from workers.models.blockdiag import CONV_KINDS, BlockDiagConv, BlockDiagLinear, Blocking

ARTIFACT = "blockdiag"


def _module_of(tensor: str) -> str:
    if not tensor.endswith(".weight"):
        raise ValueError(f"tensor {tensor!r} is not a layer's weight")
    return tensor[: -len(".weight")]


def deployed(arch: Architecture, params: dict[str, torch.Tensor],
             blockings: dict[str, Blocking]) -> nn.Module:
    """The architecture's module with every blocked layer (a weight tensor's name → its
    blocking; k = 1 layers stay dense) replaced by its block-diagonal module."""
    model = zoo.build(arch)
    model.load_state_dict({k: v.detach().cpu() for k, v in params.items()}, strict=True)
    kinds = {t.name: t.kind for t in arch.tensors}
    for name, b in blockings.items():
        if b.k == 1:
            continue
        path = _module_of(name)
        old = model.get_submodule(path)
        bias = params.get(f"{path}.bias")
        new: nn.Module
        if kinds[name] in CONV_KINDS:
            new = BlockDiagConv.of(old, params[name], bias, b)
        else:
            new = BlockDiagLinear.of(params[name], bias, b)
        _replace(model, path, new)
    return model.eval()


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The file's tensors: the deployed module's state (blocks, indices, the dense rest)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def layers_doc(arch: Architecture, blockings: dict[str, Blocking]) -> dict[str, dict[str, Any]]:
    kinds = {t.name: t for t in arch.tensors}
    out = {}
    for name, b in blockings.items():
        if b.k == 1:
            continue
        t = kinds[name]
        per_channel = t.numel // (t.shape[0] * t.shape[1])
        out[name] = {"module": _module_of(name), "kind": t.kind, "k": b.k, "shape": list(t.shape),
                     "block_rows": [len(r) for r in b.rows], "block_cols": [len(c) for c in b.cols],
                     "parameters": b.entries() * per_channel}
    return out


def parameter_count(model: nn.Module) -> tuple[int, int]:
    """(parameters, permutation indices) of a deployed module: block entries (padding excluded)
    and every other trained tensor; the indices are integers reported beside the count."""
    params = indices = 0
    for m in model.modules():
        if isinstance(m, BlockDiagLinear):
            params += int((m.rows >= 0).sum(dim=1).mul((m.cols >= 0).sum(dim=1)).sum())
            indices += int((m.rows >= 0).sum() + (m.cols >= 0).sum())
            params += 0 if m.bias is None else m.bias.numel()
        elif isinstance(m, BlockDiagConv):
            params += m.weight.numel() + (0 if m.bias is None else m.bias.numel())
            indices += m.rows.numel() + m.cols.numel()
        else:
            params += sum(p.numel() for p in m.parameters(recurse=False))
    return params, indices


# -- loading -------------------------------------------------------------------------------------


def _permutation(idx: torch.Tensor, n: int, what: str) -> None:
    valid = idx[idx >= 0]
    if idx.dtype != torch.int64 or bool((idx < -1).any()) or valid.numel() != n or not torch.equal(
            valid.sort().values, torch.arange(n)):
        raise ValueError(f"{what} is not a permutation of {n} indices")


def _take(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise ValueError(f"the file lacks tensor {key!r}")
    return tensors.pop(key)


def module(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The torch module a `blockdiag` file describes (in eval mode)."""
    arch = artifacts.architecture(manifest)
    layers = (manifest.get("blockdiag") or {}).get("layers")
    if not isinstance(layers, dict) or not layers:
        raise ValueError("the manifest lists no block-diagonal layer (blockdiag.layers)")
    table = {t.name: t for t in arch.tensors}
    rest = dict(tensors)
    replaced: dict[str, nn.Module] = {}
    for name, doc in layers.items():
        if name not in table or not table[name].prunable:
            raise ValueError(f"blockdiag layer {name!r} is not a layer of {arch.name}")
        t, path, k = table[name], _module_of(name), int(doc.get("k", 0))
        m, n = t.shape[0], t.shape[1]
        bias_name = f"{path}.bias"
        bias = _take(rest, bias_name) if bias_name in table else None
        if bias is not None and tuple(bias.shape) != (m,):
            raise ValueError(f"tensor {bias_name!r} has shape {list(bias.shape)}, needs [{m}]")
        rows, cols = _take(rest, f"{path}.rows"), _take(rest, f"{path}.cols")
        if rows.dim() != 2 or cols.dim() != 2 or rows.shape[0] != k or cols.shape[0] != k:
            raise ValueError(f"layer {name}: rows / cols must be {k} index rows")
        _permutation(rows, m, f"layer {name}'s rows")
        _permutation(cols, n, f"layer {name}'s cols")
        if t.kind in CONV_KINDS:
            w = _take(rest, f"{path}.weight")
            if (rows < 0).any() or (cols < 0).any() or tuple(w.shape) != (m, n // k, *t.shape[2:]):
                raise ValueError(f"layer {name}: a grouped kernel of shape {[m, n // k, *t.shape[2:]]} "
                                 f"and unpadded indices are needed, got {list(w.shape)}")
            replaced[path] = BlockDiagConv(zoo.build(arch).get_submodule(path), w, rows, cols, bias)
        else:
            blocks = _take(rest, f"{path}.blocks")
            if tuple(blocks.shape) != (k, rows.shape[1], cols.shape[1]):
                raise ValueError(f"layer {name}: blocks must have shape "
                                 f"{[k, rows.shape[1], cols.shape[1]]}, got {list(blocks.shape)}")
            inside = (rows >= 0).unsqueeze(2) & (cols >= 0).unsqueeze(1)
            if bool(blocks.masked_select(~inside).ne(0).any()):
                raise ValueError(f"layer {name}: the blocks' padding is not zero")
            replaced[path] = BlockDiagLinear(blocks, rows, cols, bias, n, m)
    for w in (*rest.values(), *(p for r in replaced.values() for p in r.parameters())):
        if w.is_floating_point() and not bool(torch.isfinite(w).all()):
            raise ValueError("the file holds NaN or infinite values")
    dense = {t.name for t in arch.tensors if _owner(t.name) not in replaced}
    if set(rest) != dense:
        raise ValueError(f"the file's dense tensors are not {arch.name}'s: missing "
                         f"{sorted(dense - set(rest))}, unexpected {sorted(set(rest) - dense)}")
    for name, w in rest.items():
        if tuple(w.shape) != table[name].shape:
            raise ValueError(f"tensor {name!r} has shape {list(w.shape)}, {arch.name} needs "
                             f"{list(table[name].shape)}")
    model = zoo.build(arch)
    model.load_state_dict(rest, strict=False)
    for path, new in replaced.items():
        _replace(model, path, new)
    return model.eval()


def _owner(tensor: str) -> str:
    return tensor.rpartition(".")[0]


artifacts.register(ARTIFACT, module)
