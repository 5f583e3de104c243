"""2×2 max pooling in the built-in modules (`workers.models.zoo.max_pool_2x2`) against torch's
`max_pool2d`, without autograd, one torch thread: vgg-fashion's three pooled shapes at batch 256
(and batch 1), and the whole vgg-fashion forward pass with each (the same weights, the same
inputs, the same outputs checked equal). Interleaved repeats (bench/paired_timing.py).

    .venv/bin/python bench/max_pool.py

Writes bench/results/max_pool_cpu.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from olmp_mnist import write_results  # noqa: E402
from paired_timing import speedup  # noqa: E402

from core.zoo import VGG_FASHION, VGG_FASHION_CONVS  # noqa: E402
from workers.models import zoo  # noqa: E402

SHAPES = [(256, 32, 28, 28), (256, 64, 14, 14), (256, 128, 7, 7), (1, 32, 28, 28)]
REPEATS = 40


def torch_pooled(net: zoo.VggFashion, x: torch.Tensor) -> torch.Tensor:
    """vgg-fashion's forward pass as zoo.VggFashion's, with torch's max_pool2d."""
    for i, (conv, pool) in enumerate(zip(VGG_FASHION_CONVS, net.pool_after, strict=True), 1):
        x = torch.relu(getattr(net, f"bn{i}")(getattr(net, conv)(x)))
        if pool:
            x = nn.functional.max_pool2d(x, 2)
    out: torch.Tensor = net.fc(x.mean(dim=(2, 3)))
    return out


def main() -> None:
    rows = {}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for shape in SHAPES:
            x = torch.randn(shape, generator=gen)
            assert torch.equal(zoo.max_pool_2x2(x), nn.functional.max_pool2d(x, 2))
            r = speedup(lambda x=x: nn.functional.max_pool2d(x, 2), lambda x=x: zoo.max_pool_2x2(x),
                        REPEATS, threads=1)
            rows[f"pool {'×'.join(map(str, shape))}"] = r
        torch.manual_seed(0)
        net = zoo.build(VGG_FASHION).eval()
        for batch in (1, 256):
            x = torch.rand(batch, 1, 28, 28, generator=gen)
            assert torch.equal(net(x), torch_pooled(net, x))
            rows[f"vgg-fashion forward, batch {batch}"] = speedup(
                lambda x=x: torch_pooled(net, x), lambda x=x: net(x), REPEATS, threads=1)
    print(f"{'':<34}{'max_pool2d ms':>14}{'max_pool_2x2 ms':>16}{'speed-up':>10}{'quartiles':>14}")
    for name, r in rows.items():
        print(f"{name:<34}{r['slow_ms']:>14.3f}{r['fast_ms']:>16.3f}{r['speedup']:>9.2f}×"
              f"{r['speedup_q1']:>8.2f}–{r['speedup_q3']:.2f}")
    write_results("max_pool", False, torch.device("cpu"), {"repeats": REPEATS, "threads": 1, "rows": rows})


if __name__ == "__main__":
    main()
