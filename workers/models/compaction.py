"""Structured compaction: turn a pruned state dict whose zeros cover whole neurons / filters into a
smaller dense model that computes the same logits, and time both on the CPU.

Only the built-in families (LeNet-300-100, LeNet-5 and vgg-fashion, at any width, see `core.zoo`;
vgg-fashion's rules, which BatchNorm shapes, are in `workers.models.compaction_vgg`) are supported:
which units may be removed follows from the wiring between layers, and that wiring is only known for
modules we wrote. A unit is removed only when that provably leaves the logits unchanged:

* its outgoing weights are all zero (nothing consumes it), or
* its incoming weights are all zero: it then emits a constant (relu(bias) for a hidden fc unit; its
  bias, everywhere, for a LeNet-5 convolution filter, which has no nonlinearity and whose max-pool
  of a constant is that constant), so its contribution is folded into the next layer's bias and the
  unit removed. Folding reorders a sum, so logits agree to float rounding (≈1e-6), not bitwise.

Removing units can empty other units (a hidden fc unit whose every input was removed becomes a
constant), so the rules are applied until nothing changes. LeNet-300-100 also drops input pixels
fc1 never reads (zero columns; the compact model takes whole images and gathers the kept pixels).
A layer is never made empty: if every unit goes, one unit with zero weights and bias stays, which
changes nothing. Finer zeros stay as zeros in the dense compact weights: single weights, and fc1
columns of LeNet-5 inside a surviving conv2 filter's 4×4 block (no gather within a feature map).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from core import zoo as core_zoo
from core.architectures import Architecture
from core.zoo import LENET_5_POOLED, MNIST_PIXELS
from workers.models import compaction_vgg, zoo

SUPPORTED = {"workers.models.zoo:LeNet300100": "lenet-300-100", "workers.models.zoo:LeNet5": "lenet-5",
             "workers.models.zoo:VggFashion": "vgg-fashion"}


class NotCompactable(ValueError):
    """The architecture is not one whose structure compaction knows."""


def _keep_or_one(keep: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Indices of kept units, and whether none was: then unit 0 stays as a placeholder (its
    outgoing weights are zero by then; the caller zeroes its incoming ones and bias, so that what
    only fed it goes too)."""
    idx = keep.nonzero().flatten()
    if idx.numel():
        return idx, False
    return torch.zeros(1, dtype=torch.long), True


def _hidden_fc(w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """One ReLU layer of fc units between `w_in` (rows: units) and `w_out` (columns: units): fold
    constant units into `b_out`, remove units nothing reads. Returns the new tensors, changed."""
    w_out, b_out = w_out.clone(), b_out.clone()
    constant = ~w_in.ne(0).any(dim=1) & w_out.ne(0).any(dim=0)
    if bool(constant.any()):
        b_out += w_out[:, constant] @ torch.relu(b_in[constant])
        w_out[:, constant] = 0
    idx, empty = _keep_or_one(w_out.ne(0).any(dim=0))
    changed = bool(constant.any()) or idx.numel() != w_out.shape[1]
    w_in, b_in = w_in[idx], b_in[idx]
    if empty and bool(w_in.ne(0).any() or b_in.ne(0).any()):
        w_in, b_in, changed = torch.zeros_like(w_in), torch.zeros_like(b_in), True
    return w_in, b_in, w_out[:, idx], b_out, changed


def _compact_mlp(arch: Architecture, p: dict[str, torch.Tensor],
                 ) -> tuple[Architecture, dict[str, torch.Tensor]]:
    w1, b1, w2, b2, w3, b3 = (p[k] for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                             "fc3.weight", "fc3.bias"))
    indices = arch.config.get("input_indices")
    pixels = torch.tensor(list(indices) if isinstance(indices, list) else range(MNIST_PIXELS))
    changed = True
    while changed:
        w2, b2, w3, b3, c2 = _hidden_fc(w2, b2, w3, b3)
        w1, b1, w2, b2, c1 = _hidden_fc(w1, b1, w2, b2)
        changed = c1 or c2
    read, _ = _keep_or_one(w1.ne(0).any(dim=0))
    w1, pixels = w1[:, read], pixels[read]
    all_pixels = pixels.numel() == MNIST_PIXELS
    small = core_zoo.lenet_300_100(w1.shape[0], w2.shape[0],
                                   input_indices=None if all_pixels else pixels.tolist())
    return small, {"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2,
                   "fc3.weight": w3, "fc3.bias": b3}


def _blocks(filters: torch.Tensor) -> torch.Tensor:
    """fc1 input columns of LeNet-5's conv2 filters (each filter feeds a 4×4 block of columns)."""
    return (filters.unsqueeze(1) * LENET_5_POOLED + torch.arange(LENET_5_POOLED)).flatten()


def _compact_lenet5(p: dict[str, torch.Tensor]) -> tuple[Architecture, dict[str, torch.Tensor]]:
    c1, cb1, c2, cb2, f1, fb1, f2, fb2 = (p[k].clone() for k in (
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
    while True:
        widths = (c1.shape[0], c2.shape[0], f1.shape[0])
        f1, fb1, f2, fb2, changed = _hidden_fc(f1, fb1, f2, fb2)
        # conv2 filters: fc1 reads filter k through columns 16k … 16k+15
        f1_blocks = f1.reshape(f1.shape[0], c2.shape[0], LENET_5_POOLED)
        constant2 = ~c2.flatten(1).ne(0).any(dim=1) & f1_blocks.ne(0).any(dim=(0, 2))
        if bool(constant2.any()):
            # a constant map pools to itself: each of its 16 fc1 inputs is the filter's bias
            fb1 = fb1 + f1_blocks[:, constant2].sum(dim=2) @ cb2[constant2]
            f1_blocks = f1_blocks.clone()
            f1_blocks[:, constant2] = 0
            f1 = f1_blocks.reshape(f1.shape)
            changed = True
        keep2, empty = _keep_or_one(f1_blocks.ne(0).any(dim=(0, 2)))
        c2, cb2, f1 = c2[keep2], cb2[keep2], f1[:, _blocks(keep2)]
        if empty and bool(c2.ne(0).any() or cb2.ne(0).any()):
            c2, cb2, changed = torch.zeros_like(c2), torch.zeros_like(cb2), True
        # conv1 filters: conv2 reads filter i through its input channel i (a valid convolution, so
        # every output position sees the whole 5×5 kernel of a constant channel)
        constant1 = ~c1.flatten(1).ne(0).any(dim=1) & c2.ne(0).any(dim=(0, 2, 3))
        if bool(constant1.any()):
            cb2 = cb2 + c2[:, constant1].sum(dim=(2, 3)) @ cb1[constant1]
            c2 = c2.clone()
            c2[:, constant1] = 0
            changed = True
        keep1, empty = _keep_or_one(c2.ne(0).any(dim=(0, 2, 3)))
        c1, cb1, c2 = c1[keep1], cb1[keep1], c2[:, keep1]
        if empty:
            c1, cb1 = torch.zeros_like(c1), torch.zeros_like(cb1)
        # a fold zeroes a unit's outgoing weights, so it goes on the next pass at the latest
        if not changed and widths == (c1.shape[0], c2.shape[0], f1.shape[0]):
            break
    small = core_zoo.lenet_5(c1.shape[0], c2.shape[0], f1.shape[0])
    return small, {"conv1.weight": c1, "conv1.bias": cb1, "conv2.weight": c2, "conv2.bias": cb2,
                   "fc1.weight": f1, "fc1.bias": fb1, "fc2.weight": f2, "fc2.bias": fb2}


def zero_dead_units(arch: Architecture, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same shapes, with the incoming weights and bias of every unit nothing reads set to zero.

    Pruning whole groups (input columns, filters) cuts a unit's outgoing side only: the rows that
    fed it stay non-zero, and would be counted as kept although the logits never see them. Zeroing
    them changes no logit, bit for bit (they were multiplied by exact zeros), so a trial's
    non-zero count is what its compact model really holds, up to folded constant units. Layers are
    visited from the output back, so a unit emptied on the way is caught in the same pass. Other
    architectures come back unchanged."""
    family = SUPPORTED.get(arch.builder)
    if family is None:
        return params
    p = dict(params)

    def cut(w: str, b: str, dead: torch.Tensor) -> None:
        if bool(dead.any()):
            keep = (~dead).to(p[w].dtype)
            p[w] = p[w] * keep.reshape(-1, *([1] * (p[w].dim() - 1)))
            p[b] = p[b] * keep

    if family == "vgg-fashion":
        return compaction_vgg.zero_dead_channels(p)
    if family == "lenet-300-100":
        cut("fc2.weight", "fc2.bias", ~p["fc3.weight"].ne(0).any(dim=0))
        cut("fc1.weight", "fc1.bias", ~p["fc2.weight"].ne(0).any(dim=0))
        return p
    cut("fc1.weight", "fc1.bias", ~p["fc2.weight"].ne(0).any(dim=0))
    blocks = p["fc1.weight"].reshape(p["fc1.weight"].shape[0], p["conv2.weight"].shape[0],
                                     LENET_5_POOLED)
    cut("conv2.weight", "conv2.bias", ~blocks.ne(0).any(dim=(0, 2)))
    cut("conv1.weight", "conv1.bias", ~p["conv2.weight"].ne(0).any(dim=(0, 2, 3)))
    return p


def compact(arch: Architecture, params: dict[str, torch.Tensor],
            ) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """The smallest architecture of the same family (and its dense weights, on CPU, contiguous) that
    gives the pruned model's logits; raises NotCompactable for other architectures."""
    family = SUPPORTED.get(arch.builder)
    if family is None:
        raise NotCompactable(
            f"architecture {arch.name} cannot be compacted: structured compaction knows the wiring "
            f"of the built-in families {sorted(SUPPORTED.values())} only")
    expected = {t.name: t.shape for t in arch.tensors}
    found = {k: tuple(v.shape) for k, v in params.items()}
    if found != expected:
        raise ValueError(f"weights do not match {arch.name}: {found} vs {expected}")
    # float32 but for the integer buffers (a BatchNorm's step counter)
    p = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
         for k, v in params.items()}
    if family == "vgg-fashion":
        small, out = compaction_vgg.compact(p)
    else:
        small, out = _compact_mlp(arch, p) if family == "lenet-300-100" else _compact_lenet5(p)
    return small, {k: v.contiguous() for k, v in out.items()}


def _ms(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000.0


@torch.inference_mode()
def cpu_speedup(arch: Architecture, params: dict[str, torch.Tensor], compact_arch: Architecture,
                compact_params: dict[str, torch.Tensor], *, batch: int = 256, repeats: int = 20,
                warmup: int = 3, seed: int = 0) -> dict[str, float]:
    """Median CPU latency of one forward pass of a batch through the pruned model (dense, zeros
    included) and through its compact form, on the same random inputs, under the process's current
    torch thread count. Runs alternate between the two so load from elsewhere hits both alike."""
    if repeats < 1 or batch < 1:
        raise ValueError("batch and repeats must be at least 1")
    models = []
    for a, p in ((arch, params), (compact_arch, compact_params)):
        m = zoo.build(a).eval()
        m.load_state_dict({k: v.to("cpu") for k, v in p.items()})
        models.append(m)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *arch.input_shape), generator=gen)
    ref_ms: list[float] = []
    small_ms: list[float] = []
    for _ in range(warmup):
        models[0](x)
        models[1](x)
    for _ in range(repeats):
        ref_ms.append(_ms(lambda: models[0](x)))
        small_ms.append(_ms(lambda: models[1](x)))
    reference_ms, compact_ms = statistics.median(ref_ms), statistics.median(small_ms)
    return {"reference_ms": reference_ms, "compact_ms": compact_ms,
            "speedup": reference_ms / compact_ms, "batch": batch}
