"""The worker's graph interpreter against the user's eager module: forward (eval, no gradient)
and forward+backward (train mode) at batch 1 and 256, one torch thread, for the nets of
tests/graph_models.py (a ResNet, a MobileNetV2-style net, a VGG-style net, an MLP), each exported
with torch.export and read back the way an upload is. Repeats are interleaved in ABBA order, so
that both see the same machine, and the ratio is the median over repeats of interpreter ÷ eager
within each pair (with its quartiles): a slow stretch of a shared machine slows both runs of a
pair rather than one side's median. Both run under the allocator settings every worker sets
(workers.runtime.allocator).

    .venv/bin/python bench/graph_interpreter.py

Writes bench/results/graph_interpreter_cpu.json.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from olmp_mnist import write_results  # noqa: E402
from paired_timing import paired  # noqa: E402

from core.settings import Settings  # noqa: E402
from service.pt2_upload import parse_pt2  # noqa: E402
from tests.graph_models import NETS, export_bytes  # noqa: E402
from workers.models import zoo  # noqa: E402
from workers.runtime import allocator  # noqa: E402

REPEATS = {1: 300, 256: 40}


def step(net: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    def run() -> None:
        if mode == "forward":
            net.eval()
            with torch.no_grad():
                net(x)
        else:
            net.train()
            net.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
    return run


def compare(eager: nn.Module, graph: nn.Module) -> dict[tuple[int, str], dict[str, float]]:
    """(batch, mode) → eager and interpreter medians (ms) and their ratio, one torch thread,
    interleaved repeats so that both see the same machine (bench/paired_timing.py)."""
    rows: dict[tuple[int, str], dict[str, float]] = {}
    for batch, repeats in REPEATS.items():
        x = torch.randn(batch, 1, 28, 28)
        for mode in ("forward", "forward+backward"):
            r = paired(step(eager, x, mode), step(graph, x, mode), repeats, threads=1)
            rows[(batch, mode)] = {"eager_ms": r["a_ms"], "graph_ms": r["b_ms"], "ratio": r["ratio"],
                                   "ratio_q1": r["ratio_q1"], "ratio_q3": r["ratio_q3"]}
    return rows


def main() -> None:
    # the allocator a worker runs with (workers.runtime.allocator), for both sides: with glibc's
    # defaults, page faults took half of a batch-256 forward pass (bench/allocator.py) and how
    # many depends on the order tensors are freed in, not on what computes them
    kept = allocator.keep_freed_memory()
    rows: dict[str, Any] = {}
    for name, make in NETS.items():
        torch.manual_seed(0)
        eager = make()
        parsed = parse_pt2(export_bytes(eager), Settings())
        graph = zoo.build(parsed.architecture)
        graph.load_state_dict(safetensors.torch.load(parsed.weights))
        for (batch, mode), r in compare(eager, graph).items():
            rows[f"{name} batch {batch} {mode}"] = r
            print(f"{name:<10} batch {batch:>3} {mode:<17} eager {r['eager_ms']:8.3f} ms  "
                  f"graph {r['graph_ms']:8.3f} ms  ratio {r['ratio']:5.2f} "
                  f"(quartiles {r['ratio_q1']:.2f}–{r['ratio_q3']:.2f})", flush=True)
    worst = max(r["ratio"] for r in rows.values())
    print(f"\nworst interpreter ÷ eager: {worst:.2f}")
    write_results("graph_interpreter", False, torch.device("cpu"),
                  {"rows": rows, "worst_ratio": worst, "worker_allocator": kept})


if __name__ == "__main__":
    main()
