"""Empirical variational Bayesian matrix factorization (EVBMF): the global analytic solution of
Nakajima, Sugiyama, Babacan & Tomioka (JMLR 2013), used to pick a rank per unfolding of a kernel.

For Y (L × M, L ≤ M) = B Aᵀ + noise of unknown variance σ², with the priors' variances also
estimated (empirical Bayes), the solution keeps singular component h exactly when its singular
value γ_h exceeds γ̲ = σ·√(M·x̄), x̄ = (1 + τ̲)(1 + α/τ̲), α = L/M, where τ̲ (≈ 2.5129·√α) is
where keeping one component costs as much free energy as dropping it (solved numerically, see
`_psi_zero`). σ² itself minimizes the free energy left after the other variables are optimized
analytically, a 1-D function on a known interval:

    F(σ²) = Σ_{h: x_h ≤ x̄} (x_h − ln x_h) + Σ_{h: x_h > x̄} (x_h − τ_h + ln((τ_h + 1)/x_h)
            + α ln(τ_h/α + 1)) + R/(M σ²) + (L − H) ln σ²,
    x_h = γ_h²/(M σ²),  τ_h = ½(x_h − 1 − α + √((x_h − 1 − α)² − 4α)),

R the energy of Y outside its H computed components. The rank is the number of kept components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

GRID = 400  # log-spaced σ² candidates before the golden-section refinement


def _psi_zero(alpha: float) -> float:
    """τ̲ for aspect ratio α: the τ at which keeping one component (at x = (1+τ)(1+α/τ), where
    the kept estimate is τ) has the same free energy as dropping it. The paper states it as the
    zero of Ψ; τ̲ = 2.5129 at α = 1 either way (≈ 2.5129·√α is the paper's approximation)."""
    def gain(tau: float) -> float:
        x = (1 + tau) * (1 + alpha / tau)
        return (x - math.log(x)) - (x - tau + math.log((tau + 1) / x) + alpha * math.log(tau / alpha + 1))

    lo, hi = 1e-6 + math.sqrt(alpha), 100.0 * (1.0 + math.sqrt(alpha))
    # gain < 0 just above √α (keeping costs more), > 0 for large τ: bisection
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gain(mid) > 0:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Evbmf:
    rank: int
    sigma2: float
    threshold: float  # γ̲: singular values above it are kept


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    d = x - (1.0 + alpha)
    out: np.ndarray = 0.5 * (d + np.sqrt(np.maximum(d * d - 4.0 * alpha, 0.0)))
    return out


def free_energy(sigma2: float, s: np.ndarray, L: int, M: int, residual: float, xbar: float) -> float:
    """The EVB free energy (up to constants) at noise variance σ², the rest optimized."""
    alpha = L / M
    x = s**2 / (M * sigma2)
    kept, dropped = x[x > xbar], x[x <= xbar]
    tau = _tau(kept, alpha)
    return float(np.sum(dropped - np.log(dropped)) + np.sum(kept - tau)
                 + np.sum(np.log((tau + 1.0) / kept)) + alpha * np.sum(np.log(tau / alpha + 1.0))
                 + residual / (M * sigma2) + (L - len(s)) * math.log(sigma2))


def evbmf(y: torch.Tensor) -> Evbmf:
    """EVBMF of a matrix: its rank and noise variance."""
    m = y.detach().double().cpu()
    if m.shape[0] > m.shape[1]:
        m = m.T
    L, M = m.shape
    s = torch.linalg.svdvals(m).numpy()
    alpha = L / M
    tau_bar = _psi_zero(alpha)
    xbar = (1 + tau_bar) * (1 + alpha / tau_bar)
    total = float((m**2).sum())
    residual = max(total - float(np.sum(s**2)), 0.0)
    # σ² lies between these (the paper's bounds): at most the whole energy per entry, at least
    # what the components that can never all be kept leave
    h_ub = max(1, min(len(s), math.ceil(L / (1 + alpha)) - 1))
    upper = (np.sum(s**2) + residual) / (L * M)
    tail = s[h_ub:] if h_ub < len(s) else s[-1:]
    lower = max(float(s[min(h_ub, len(s) - 1)] ** 2) / (M * xbar), float(np.mean(tail**2)) / M, 1e-300)
    if not lower < upper:
        lower = upper * 1e-6
    grid = np.exp(np.linspace(math.log(lower), math.log(upper), GRID))
    values = [free_energy(g, s, L, M, residual, xbar) for g in grid]
    i = int(np.argmin(values))
    a, b = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, GRID - 1)])
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden section on ln σ² around the grid's best
        c, d = b - phi * (b - a), a + phi * (b - a)
        if free_energy(math.exp(c), s, L, M, residual, xbar) < free_energy(math.exp(d), s, L, M, residual, xbar):
            b = d
        else:
            a = c
    sigma2 = math.exp(0.5 * (a + b))
    threshold = math.sqrt(M * sigma2 * xbar)
    return Evbmf(rank=int(np.sum(s > threshold)), sigma2=sigma2, threshold=threshold)
