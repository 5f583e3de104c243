"""CPU inference latency of a derived model (block-diagonal, decomposed) against the dense one."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

WARMUP = 3


def _forward_ms(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return (time.perf_counter() - start) * 1000.0


def _paired_medians(dense: nn.Module, derived: nn.Module, xb: torch.Tensor, repeats: int) -> tuple[float, float]:
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats + WARMUP):
        for model, acc in zip((dense, derived), times, strict=True):
            ms = _forward_ms(model, xb)
            if i >= WARMUP:
                acc.append(ms)
    return statistics.median(times[0]), statistics.median(times[1])


def _channels_last(dense: nn.Module, derived: nn.Module, input_shape: tuple[int, ...]
                   ) -> tuple[nn.Module, nn.Module] | None:
    """Copies of both models in channels-last layout, or None where either cannot run in it (an
    uploaded graph may `view` an activation whose strides that layout changes)."""
    last = [copy.deepcopy(m).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            for m in (dense, derived)]
    probe = torch.zeros((2, *input_shape)).contiguous(memory_format=torch.channels_last)
    try:
        for m in last:
            m(probe)
    except RuntimeError:
        return None
    return last[0], last[1]


@torch.inference_mode()
def cpu_latency(dense: nn.Module, derived: nn.Module, input_shape: tuple[int, ...], name: str, *,
                batches: Sequence[int] = (1, 256), repeats: int = 20) -> dict[str, Any]:
    """Median ms of one forward pass through `dense` and through `derived` (reported under
    `<name>_ms`, with `speedup` = dense / derived) per batch size, on the same random inputs,
    alternating so that load from elsewhere hits both alike, under the process's current torch
    thread count (reported). Models of images are timed again with both in torch's channels-last
    layout (under `channels_last`), where both run in it: thin decomposed convolutions gain from
    it far more than dense ones (vgg-fashion's EVBMF ranks, one thread, batch 256: 1.5× NCHW,
    2.1× channels-last, bench/tucker_mnist.py)."""
    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    gen = torch.Generator().manual_seed(0)
    last = _channels_last(dense, derived, input_shape) if len(input_shape) == 3 else None
    for batch in batches:
        xb = torch.rand((batch, *input_shape), generator=gen)
        d, b = _paired_medians(dense, derived, xb, repeats)
        out[str(batch)] = {"dense_ms": d, f"{name}_ms": b, "speedup": d / b}
        if last is not None:
            d, b = _paired_medians(last[0], last[1], xb.contiguous(memory_format=torch.channels_last), repeats)
            out[str(batch)]["channels_last"] = {"dense_ms": d, f"{name}_ms": b, "speedup": d / b}
    return out
