"""Recomputing BatchNorm's running statistics for weights as they stand.

What BatchNorm tracks while training lags the weights (an exponential average over the last
batches while the optimizer moves them), and a method that changes every layer at once (masks, a
decomposition) changes every layer's activations: the statistics a model is scored and shipped
with are recomputed instead, as the average batch statistics over some training images."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn


def recalibrate(model: nn.Module, buffers: Mapping[str, torch.Tensor],
                forward: Callable[[torch.Tensor], object], x: torch.Tensor, batch_size: int) -> None:
    """Reset `buffers` (the running statistics and step counters `forward` computes with; a
    module's own, or the dict a functional call passes), run `forward` over `x` in train mode with
    a cumulative average (momentum None), no gradient, and put the step counters back."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    counts = {k: v.clone() for k, v in buffers.items() if k.endswith("num_batches_tracked")}
    with torch.no_grad():
        for k, v in buffers.items():  # the counters too: momentum None averages by them
            v.fill_(1.0 if k.endswith("running_var") else 0.0)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                forward(x[start : start + batch_size])
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    with torch.no_grad():  # the step counters count training steps, not these
        for k, count in counts.items():
            buffers[k].copy_(count)


def normalized_outputs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, str]:
    """{a convolution's weight name: the BatchNorm module that normalizes its output directly}.

    Found by running the model once on a dummy batch of two and matching each BatchNorm call's
    input tensor against the outputs of the convolutions called before it, so it holds for any
    module that calls its layers as submodules, built-in or uploaded; a convolution whose output
    goes anywhere else first (an activation, a sum), or into a BatchNorm without a scale and
    shift, is not listed."""
    names = {m: n for n, m in model.named_modules()}
    # the outputs are kept alive, so that no later tensor can reuse an id
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    found: dict[str, str] = {}

    def conv_hook(module: nn.Module, _args: object, output: torch.Tensor) -> None:
        produced[id(output)] = (names[module], output)

    def norm_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        source = produced.get(id(args[0]))
        if source is not None and source[1] is args[0] and getattr(module, "affine", False):
            found[f"{source[0]}.weight"] = names[module]

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(norm_hook))
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    was_training = model.training
    model.eval()  # the running statistics are read, never updated
    try:
        with torch.no_grad():
            model(torch.zeros((2, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found
