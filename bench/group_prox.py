"""sgl's proximal step (`workers.methods.group_prox.prox_rows`) against the same closed form over
every support size with a full sort of every row (written here, as the method computed it before
it sorted only the candidates), one torch thread, on LeNet-300-100's fc1 as groups (784 input
columns of 300): dense, and with 90 % and 98 % of the entries zeroed as a trial's layer is once
pruning has begun (plus the small moves Adam's next step gives every entry, zeros included).
Both outputs are checked equal; interleaved repeats (bench/paired_timing.py).

    .venv/bin/python bench/group_prox.py

Writes bench/results/group_prox_cpu.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from olmp_mnist import write_results  # noqa: E402
from paired_timing import speedup  # noqa: E402

from workers.methods.group_prox import prox_rows  # noqa: E402

REPEATS = 60
ZEROS = [0.0, 0.9, 0.98]
# (tλ, tη): group term on, ℓ0 term on (both as in a trial's step), each alone
STRENGTHS = [(1e-4, 1e-5), (1e-4, 1e-4), (0.0, 1e-4), (1e-3, 0.0)]


def every_size(v: torch.Tensor, tl: float, te: float) -> torch.Tensor:
    """The closed form tried at every support size of every row, after a full sort."""
    mags, order = v.abs().sort(dim=1, descending=True)
    norms = mags.square().cumsum(dim=1).sqrt()
    k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype)
    zero = torch.zeros(v.shape[0], 1, dtype=v.dtype)
    gains = torch.cat([zero, 0.5 * (norms - tl).clamp(min=0.0).square() - te * k], dim=1)
    best = v.shape[1] - gains.flip(1).argmax(dim=1)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(v.shape[1]).expand_as(order))
    norm_s = torch.cat([zero, norms], dim=1).gather(1, best.unsqueeze(1))
    scale = (1.0 - tl / norm_s.clamp(min=torch.finfo(v.dtype).tiny)).clamp(min=0.0)
    return torch.where(ranks < best.unsqueeze(1), v * scale, torch.zeros_like(v))


def layer(zeros: float, gen: torch.Generator) -> torch.Tensor:
    """fc1's (784, 300) groups at a trained scale, the smallest `zeros` of them zeroed, then every
    entry moved by about an Adam step (1e-3)."""
    v = torch.randn(784, 300, generator=gen) * 0.05
    if zeros > 0:
        cut = v.abs().flatten().kthvalue(int(zeros * v.numel())).values
        v = torch.where(v.abs() <= cut, torch.zeros_like(v), v)
    return v + torch.randn(v.shape, generator=gen) * 1e-3


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'zeros':>6} {'tλ':>8} {'tη':>8} {'kept':>8} {'full sort ms':>13} {'prox_rows ms':>13} "
          f"{'speed-up':>9} {'(q1–q3)':>12}")
    for zeros in ZEROS:
        v = layer(zeros, gen)
        for tl, te in STRENGTHS:
            got = prox_rows(v, tl, te)
            assert torch.equal(got, every_size(v, tl, te)), (zeros, tl, te)
            r = speedup(lambda v=v, tl=tl, te=te: every_size(v, tl, te),
                        lambda v=v, tl=tl, te=te: prox_rows(v, tl, te), REPEATS)
            kept = int(got.ne(0).sum())
            rows.append({"zeros": zeros, "tl": tl, "te": te, "kept": kept, **r})
            print(f"{zeros:>6.2f} {tl:>8.0e} {te:>8.0e} {kept:>8} {r['slow_ms']:>13.2f} "
                  f"{r['fast_ms']:>13.2f} {r['speedup']:>8.2f}× "
                  f"({r['speedup_q1']:.2f}–{r['speedup_q3']:.2f})")
    write_results("group_prox", False, torch.device("cpu"), {"repeats": REPEATS, "rows": rows})


if __name__ == "__main__":
    main()
