"""Hard-concrete gates (Louizos, Welling & Kingma 2018, "Learning sparse neural networks through
L0 regularization"): a stochastic gate z ∈ [0, 1] per weight or per group of weights whose
probability of being exactly 0 is differentiable in log α, so the expected number of non-zero
gates can be penalized by gradient descent.

Shapes: a gate tensor broadcasts against its weight. Per weight it has the weight's shape; per group
it is one gate per input column of a linear weight (shape (1, in): an input neuron) or one per
output filter of a convolution (shape (out, 1, …, 1)).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

# The paper's stretch interval (γ, ζ) and temperature β.
BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
# log(−γ/ζ): shifts log α in the probability that a gate is non-zero.
_SHIFT = BETA * math.log(-GAMMA / ZETA)
# keeps log u and log(1 − u) finite
_EPS = 1e-6

Granularity = Literal["weight", "neuron"]


def gate_shape(kind: str, weight_shape: tuple[int, ...], granularity: Granularity) -> tuple[int, ...]:
    """Shape of the gate tensor of a weight: its own shape per weight; per neuron, one gate per
    input column of a linear weight or per output filter of a convolution."""
    if granularity == "weight":
        return weight_shape
    if kind == "linear":
        if len(weight_shape) != 2:
            raise ValueError(f"a linear weight is 2-d, got shape {weight_shape}")
        return (1, weight_shape[1])
    if kind.startswith("conv"):
        return (weight_shape[0],) + (1,) * (len(weight_shape) - 1)
    raise ValueError(f"no neuron gates for tensors of kind {kind!r}")


def log_alpha_init(shape: tuple[int, ...], drop_rate: float, device: torch.device | None = None,
                   ) -> torch.Tensor:
    """log α = log(1 − p) − log p: the deterministic gate opens with odds (1 − p) : p."""
    if not 0.0 < drop_rate < 1.0:
        raise ValueError(f"drop rate must be in (0, 1), got {drop_rate}")
    value = math.log(1.0 - drop_rate) - math.log(drop_rate)
    return torch.full(shape, value, dtype=torch.float32, device=device)


def sample(log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of the gates: s = σ((log u − log(1−u) + log α)/β), stretched to (γ, ζ), clamped.

    `generator` must live on log α's device; the noise is drawn there so a CPU run is reproducible
    from the generator's seed alone."""
    u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device,
                   dtype=log_alpha.dtype).clamp(_EPS, 1.0 - _EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def prob_nonzero(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z ≠ 0) = σ(log α − β log(−γ/ζ)) per gate: the expected L0 of each gate."""
    return torch.sigmoid(log_alpha - _SHIFT)


def deterministic(log_alpha: torch.Tensor) -> torch.Tensor:
    """The test-time gate: clamp(σ(log α)(ζ − γ) + γ, 0, 1); exactly 0 when log α ≤ log(1/11)."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def group_size(gates: tuple[int, ...], weight_shape: tuple[int, ...]) -> int:
    """Weights one gate of this shape controls (1 per weight; a column's or filter's size)."""
    return math.prod(weight_shape) // math.prod(gates)
