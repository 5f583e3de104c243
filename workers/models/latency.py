"""CPU inference latency of a derived model (block-diagonal, decomposed) against the dense one."""

from __future__ import annotations

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


@torch.inference_mode()
def cpu_latency(dense: nn.Module, derived: nn.Module, input_shape: tuple[int, ...], name: str, *,
                batches: Sequence[int] = (1, 256), repeats: int = 20) -> dict[str, Any]:
    """Median ms of one forward pass through `dense` and through `derived` (reported under
    `<name>_ms`, with `speedup` = dense / derived) per batch size, on the same random inputs,
    alternating so that load from elsewhere hits both alike, under the process's current torch
    thread count (reported)."""
    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        xb = torch.rand((batch, *input_shape), generator=gen)
        times: tuple[list[float], list[float]] = ([], [])
        for i in range(repeats + WARMUP):
            for model, acc in zip((dense, derived), times, strict=True):
                ms = _forward_ms(model, xb)
                if i >= WARMUP:
                    acc.append(ms)
        d, b = statistics.median(times[0]), statistics.median(times[1])
        out[str(batch)] = {"dense_ms": d, f"{name}_ms": b, "speedup": d / b}
    return out
