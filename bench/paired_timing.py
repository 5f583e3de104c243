"""Timing two callables against each other on a shared machine, for the benches that report a
speed ratio (graph_interpreter, max_pool, tucker_mnist).

Repeats are interleaved in ABBA order: whichever runs second in a pair finds the allocator's cache
warm and the other core's load a moment later, and alternating cancels both. The ratio is the
median over repeats of b ÷ a within each pair (with its quartiles), so that a slow stretch of the
machine slows both runs of a pair rather than one side's median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int,
           threads: int | None = None) -> dict[str, float]:
    """Medians of `a` and `b` in ms, and the median, first and third quartile of b ÷ a over
    interleaved pairs, under `threads` torch threads (None: the current count)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a(), b()  # warm-up
        times: dict[str, list[float]] = {"a": [], "b": []}
        runs = {"a": a, "b": b}
        for i in range(repeats):
            for k in (("a", "b") if i % 2 == 0 else ("b", "a")):
                t0 = time.perf_counter()
                runs[k]()
                times[k].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    ratios = sorted(tb / ta for ta, tb in zip(times["a"], times["b"], strict=True))
    return {"a_ms": 1e3 * statistics.median(times["a"]), "b_ms": 1e3 * statistics.median(times["b"]),
            "ratio": statistics.median(ratios), "ratio_q1": ratios[len(ratios) // 4],
            "ratio_q3": ratios[(3 * len(ratios)) // 4]}


def speedup(slow: Callable[[], object], fast: Callable[[], object], repeats: int,
            threads: int | None = None) -> dict[str, Any]:
    """`paired` read as a speed-up of `fast` over `slow`: slow ÷ fast per pair (median, quartiles)."""
    r = paired(fast, slow, repeats, threads)
    return {"slow_ms": r["b_ms"], "fast_ms": r["a_ms"], "speedup": r["ratio"],
            "speedup_q1": r["ratio_q1"], "speedup_q3": r["ratio_q3"]}
