"""Memory layout of the convolution weights a worker trains and scores with.

On CPU, torch's oneDNN convolutions train LeNet-5 1.3–1.5× faster, and score it 1.7–1.9× faster,
when the weights are stored channels-last (NHWC): the convolution then computes in that layout,
hands its output and gradients on in it, and max pooling takes its channels-last kernel, instead
of reordering on every call (`bench/channels_last.py` measures it). Only the strides differ; the
values are the same tensors. So trainers keep the weights of the model's `nn.Conv2d` modules in
this layout, scorings convert them on the way in, and everything handed out (states,
checkpoints) is made standard (contiguous) again, which is what safetensors and readers expect.

Only `nn.Conv2d` weights of a model that opts in (`channels_last_safe = True`: the built-in
LeNet-5 and vgg-fashion) are touched: channels-last weights make the activations channels-last
too, and an uploaded graph may `view` an activation, which those strides cannot satisfy (it
fails at run time). CUDA keeps the standard layout (not measured to gain on its small
convolutions, and its training step is a captured CUDA graph).
"""

from __future__ import annotations

import torch
from torch import nn


class Layout:
    """Which of a model's tensors train and score channels-last on `device`."""

    def __init__(self, model: nn.Module, device: torch.device, *, enabled: bool = True) -> None:
        on = enabled and device.type == "cpu" and getattr(model, "channels_last_safe", False)
        self.names = frozenset(
            f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d)) if on else frozenset()

    def copy(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A detached copy of `t`, channels-last if it is a convolution weight here. Always a
        copy with the canonical strides: a tensor with one input channel already counts as
        channels-last by its strides, and oneDNN takes its fast path only on canonical ones."""
        if name in self.names and t.dim() == 4:
            return t.detach().clone(memory_format=torch.channels_last)
        return t.detach().clone()

    def fast(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """`t` itself where its layout is right already, else a (differentiable) copy. An
        elementwise product of a channels-last weight that has one input channel with a mask or
        a gate comes out in the standard layout (torch cannot tell the two apart by the strides
        of a dimension of size 1), and oneDNN would take the slow path for that layer and,
        through its output, the next."""
        if name not in self.names or t.dim() != 4 or (
                t.is_contiguous(memory_format=torch.channels_last) and t.stride(1) == 1):
            return t
        return t.clone(memory_format=torch.channels_last)

    def params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.fast(k, v) for k, v in params.items()}


def standard(t: torch.Tensor) -> torch.Tensor:
    """A detached contiguous copy in the standard layout, whatever `t`'s strides."""
    return t.detach().clone(memory_format=torch.contiguous_format)
