"""Permuted block-diagonal structure (MPDCompress, Supic et al. 2018): masks, and the modules that run
a masked model as k small matrix products.

A layer W (m×n; a convolution's out × in channels) with k blocks is split into k row groups and k
column groups of near-equal sizes (they differ by at most one); block b connects row group b to
column group b. Seeded random permutations decide which rows and columns form each group, so the
mask M is block-diagonal only after permuting rows and columns: `rows[b]` lists the original rows
of block b, `cols[b]` its original columns. The mask's density is about 1/k.

Deployed, a linear layer gathers its input columns block by block (one index_select), multiplies
them by the stacked blocks in one batched matmul (`torch.bmm`) and puts each output back in its
place (a second index_select). Blocks of unequal sizes are padded with zero rows and columns to
the largest one: the padded entries are exact zeros, are not parameters, and meet a zero input
column. A convolution's k must divide both channel counts: after the channel permutations its mask
is a `groups=k` convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CONV_KINDS = ("conv1d", "conv2d", "conv3d")


def group_sizes(n: int, k: int) -> list[int]:
    """n split into k near-equal parts, the larger ones first."""
    if not 1 <= k <= n:
        raise ValueError(f"{k} blocks cannot split {n} rows or columns")
    return [n // k + (1 if b < n % k else 0) for b in range(k)]


@dataclass(frozen=True)
class Blocking:
    """Which original rows and columns form each block of one layer."""

    k: int
    rows: tuple[torch.Tensor, ...]  # k int64 vectors of original row indices
    cols: tuple[torch.Tensor, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return sum(len(r) for r in self.rows), sum(len(c) for c in self.cols)

    def mask(self) -> torch.Tensor:
        """The m×n 0/1 mask (bool): True where a weight lies inside a block."""
        m, n = self.shape
        mask = torch.zeros(m, n, dtype=torch.bool)
        for r, c in zip(self.rows, self.cols, strict=True):
            mask[r.unsqueeze(1), c.unsqueeze(0)] = True
        return mask

    def entries(self) -> int:
        return sum(len(r) * len(c) for r, c in zip(self.rows, self.cols, strict=True))


def blocking(shape: tuple[int, ...], k: int, seed: int) -> Blocking:
    """The seeded blocking of a layer of `shape` (out, in, *kernel) into k blocks."""
    m, n = shape[0], shape[1]
    gen = torch.Generator().manual_seed(seed)
    row_perm, col_perm = torch.randperm(m, generator=gen), torch.randperm(n, generator=gen)
    rows = torch.split(row_perm, group_sizes(m, k))
    cols = torch.split(col_perm, group_sizes(n, k))
    # sorted within a block: the same sets, and indices that read memory in order
    return Blocking(k, tuple(r.sort().values for r in rows), tuple(c.sort().values for c in cols))


def weight_mask(b: Blocking, shape: tuple[int, ...]) -> torch.Tensor:
    """The mask over a whole weight tensor: a conv's channel mask repeated over its kernel."""
    mask = b.mask()
    return mask.view(*mask.shape, *([1] * (len(shape) - 2))).expand(shape).contiguous()


# -- deployed modules ------------------------------------------------------------------------


def _padded(indices: tuple[torch.Tensor, ...], pad: int) -> torch.Tensor:
    """k index vectors as one k × max matrix, short rows filled with `pad`."""
    width = max(len(i) for i in indices)
    out = torch.full((len(indices), width), pad, dtype=torch.long)
    for b, i in enumerate(indices):
        out[b, : len(i)] = i
    return out


class BlockDiagLinear(nn.Module):
    """y = x Wᵀ + bias for a block-diagonal W (after permutation), as one batched matmul.

    Stored: `blocks` (k × rows × cols, zero-padded), `rows` and `cols` (k × rows / k × cols:
    original indices, −1 in the padding), `bias` (or none)."""

    def __init__(self, blocks: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 bias: torch.Tensor | None, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.blocks = nn.Parameter(blocks.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.rows: torch.Tensor
        self.cols: torch.Tensor
        self.register_buffer("rows", rows.clone())
        self.register_buffer("cols", cols.clone())
        # forward's gathers, derived: a padded column reads input column 0 and meets a zero
        # weight (cheaper than appending a zero column to every input); each output reads its
        # place in the flat, block-ordered result
        self._gather: torch.Tensor
        self._scatter: torch.Tensor
        self.register_buffer("_gather", cols.clamp(min=0).flatten(), persistent=False)
        flat = rows.flatten()
        valid = (flat >= 0).nonzero().squeeze(1)
        place = torch.empty(out_features, dtype=torch.long)
        place[flat[valid]] = valid
        self.register_buffer("_scatter", place, persistent=False)

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor | None, b: Blocking) -> BlockDiagLinear:
        rows, cols = _padded(b.rows, -1), _padded(b.cols, -1)
        blocks = torch.zeros(b.k, rows.shape[1], cols.shape[1], dtype=weight.dtype)
        for i, (r, c) in enumerate(zip(b.rows, b.cols, strict=True)):
            blocks[i, : len(r), : len(c)] = weight.detach().cpu()[r.unsqueeze(1), c.unsqueeze(0)]
        m, n = b.shape
        return cls(blocks, rows, cols, None if bias is None else bias.detach().cpu(), n, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        k, width = self.cols.shape
        xg = x.index_select(1, self._gather).view(-1, k, width).transpose(0, 1)  # k × B × cols
        y = torch.bmm(xg, self.blocks.transpose(1, 2))  # k × B × rows
        y = y.transpose(0, 1).reshape(x.shape[0], -1).index_select(1, self._scatter)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


class BlockDiagConv(nn.Module):
    """A convolution whose channel mask is k blocks: the input channels gathered block by block,
    one `groups=k` convolution, the output channels put back in their places.

    Stored: `weight` (out × in/k × kernel, output channels in block order), `rows` / `cols`
    (k × out/k and k × in/k original channel indices), `bias` (original order, or none)."""

    def __init__(self, conv: nn.Module, weight: torch.Tensor, rows: torch.Tensor,
                 cols: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            raise ValueError(f"a block-diagonal convolution replaces a torch convolution, not {type(conv).__name__}")
        self.conv_type = type(conv)
        self.k = int(rows.shape[0])
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.rows: torch.Tensor
        self.cols: torch.Tensor
        self.register_buffer("rows", rows.clone())
        self.register_buffer("cols", cols.clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._place: torch.Tensor
        self.register_buffer("_place", torch.argsort(rows.flatten()), persistent=False)
        self._conv = {nn.Conv1d: nn.functional.conv1d, nn.Conv2d: nn.functional.conv2d,
                      nn.Conv3d: nn.functional.conv3d}[self.conv_type]

    @classmethod
    def of(cls, conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None,
           b: Blocking) -> BlockDiagConv:
        rows, cols = torch.stack(list(b.rows)), torch.stack(list(b.cols))
        w = weight.detach().cpu()
        grouped = torch.cat([w[r][:, c] for r, c in zip(b.rows, b.cols, strict=True)])
        return cls(conv, grouped, rows, cols, None if bias is None else bias.detach().cpu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.index_select(1, self.cols.flatten())
        y = self._conv(x, self.weight, None, self.stride, self.padding, self.dilation, self.k)
        y = y.index_select(1, self._place)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *([1] * (y.dim() - 2)))
        return y


# -- blockings fitted to the weights ---------------------------------------------------------


def _assign(score: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Each row of `score` (items × groups) to a group, group b taking exactly sizes[b] items:
    greedily, the highest scores first (stable order: the same scores give the same groups)."""
    items, groups = score.shape
    order = torch.argsort(-score.flatten(), stable=True).tolist()
    room = list(sizes)
    out = [-1] * items
    left = items
    for flat in order:
        i, b = divmod(flat, groups)
        if out[i] < 0 and room[b] > 0:
            out[i] = b
            room[b] -= 1
            left -= 1
            if left == 0:
                break
    return torch.tensor(out, dtype=torch.long)


def _groups(assignment: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    return tuple((assignment == b).nonzero().squeeze(1) for b in range(k))


def fitted_blocking(weight: torch.Tensor, k: int, seed: int, iterations: int = 8) -> Blocking:
    """A blocking whose blocks hold as much of the weights' energy (Σ w²) as a greedy
    co-clustering finds: starting from the seeded random blocking, rows and columns are
    reassigned in turn to the block where their weights are largest, block sizes kept. The
    density is the random blocking's; the weights training starts from lose less."""
    start = blocking(tuple(weight.shape), k, seed)
    if k == 1:
        return start
    energy = weight.detach().cpu().double().pow(2)
    if energy.dim() > 2:
        energy = energy.flatten(2).sum(dim=2)  # a convolution: the channel pair's whole kernel
    m, n = energy.shape
    row_sizes, col_sizes = group_sizes(m, k), group_sizes(n, k)
    cols = torch.empty(n, dtype=torch.long)
    for b, c in enumerate(start.cols):
        cols[c] = b
    best, best_energy = start, float((energy * start.mask()).sum())
    for _ in range(iterations):
        rows = _assign(energy @ nn.functional.one_hot(cols, k).double(), row_sizes)
        cols = _assign(energy.T @ nn.functional.one_hot(rows, k).double(), col_sizes)
        candidate = Blocking(k, _groups(rows, k), _groups(cols, k))
        kept = float((energy * candidate.mask()).sum())
        if kept <= best_energy:
            break
        best, best_energy = candidate, kept
    return best
