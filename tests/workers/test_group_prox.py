import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from workers.methods.group_prox import as_groups, prox, prox_rows


def objective(y: np.ndarray, v: np.ndarray, tl: float, te: float) -> float:
    return float(0.5 * np.sum((y - v) ** 2) + tl * np.linalg.norm(y) + te * np.count_nonzero(y))


def brute_force(v: np.ndarray, tl: float, te: float) -> float:
    """Minimum over every support, each solved numerically (no closed form used)."""
    best = objective(np.zeros_like(v), v, tl, te)
    n = len(v)
    for k in range(1, n + 1):
        for support in itertools.combinations(range(n), k):
            s = list(support)

            def f(x: np.ndarray, s: list[int] = s) -> float:
                y = np.zeros_like(v)
                y[s] = x
                # smooth away the kink at 0 of ‖·‖₂; ℓ0 of the support counted as k
                return float(0.5 * np.sum((y - v) ** 2) + tl * np.sqrt(np.sum(x**2) + 1e-18))

            res = minimize(f, v[s].copy(), method="Nelder-Mead",
                           options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20_000})
            best = min(best, float(res.fun) + te * k)
    return best


@pytest.mark.parametrize("tl,te", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.05), (0.3, 0.02),
                                   (0.05, 0.3), (2.0, 0.01)])
def test_prox_matches_the_minimum_over_all_supports(tl: float, te: float) -> None:
    rng = np.random.default_rng(int(tl * 100 + te * 1000))
    v = rng.normal(size=(12, 4)).astype(np.float64)
    y = prox_rows(torch.from_numpy(v), tl, te).numpy()
    for row, out in zip(v, y, strict=True):
        got = objective(out, row, tl, te)
        assert got == pytest.approx(brute_force(row, tl, te), abs=1e-7)
        # and no random neighbour does better (the prox is a global minimiser)
        for _ in range(50):
            probe = out + rng.normal(scale=0.05, size=out.shape) * (rng.random(out.shape) < 0.5)
            assert objective(probe, row, tl, te) >= got - 1e-12


def test_support_is_the_largest_magnitudes_shrunk_as_a_group() -> None:
    v = torch.tensor([[3.0, -0.1, 0.2, -4.0]], dtype=torch.float64)
    y = prox_rows(v, 1.0, 0.05)
    # |0.2|, |0.1| are not worth their ℓ0 price; the kept pair shrinks by tλ/‖v_S‖ = 1/5
    assert torch.allclose(y, torch.tensor([[3.0 * 0.8, 0.0, 0.0, -4.0 * 0.8]], dtype=torch.float64))


def test_large_lambda_zeroes_whole_groups_and_zero_strength_is_identity() -> None:
    torch.manual_seed(0)
    w = torch.randn(30, 20)
    assert torch.equal(prox(w, "linear", 1.0, 0.0, 0.0), w)
    # columns of a linear weight: norms ≈ √30 ≈ 5.5; tλ = 100 kills all
    assert not prox(w, "linear", 1.0, 100.0, 0.0).any()
    # a middle λ removes the weakest columns entirely and keeps the others whole (η = 0)
    w[:, :5] *= 0.1
    out = prox(w, "linear", 1.0, 2.0, 0.0)
    assert not out[:, :5].any()
    assert bool((out[:, 5:] != 0).all())


def test_groups_of_convolutions_are_output_filters() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 3, 5, 5)
    w[2] *= 0.01
    assert as_groups(w, "conv2d").shape == (6, 75)
    out = prox(w, "conv2d", 0.5, 1.0, 0.0)
    assert out.shape == w.shape
    assert not out[2].any() and all(out[i].any() for i in (0, 1, 3, 4, 5))


def test_vectorised_prox_equals_row_by_row() -> None:
    torch.manual_seed(1)
    v = torch.randn(50, 9)
    batch = prox_rows(v, 0.4, 0.1)
    for i in range(50):
        assert torch.equal(batch[i : i + 1], prox_rows(v[i : i + 1], 0.4, 0.1))


def every_k(row: np.ndarray, tl: float, te: float) -> np.ndarray:
    """The closed form tried at every support size k = 0 … n (no candidate bound), one row."""
    order = np.argsort(-np.abs(row), kind="stable")
    norms = np.sqrt(np.cumsum(row[order] ** 2))
    gains = np.concatenate([[0.0], 0.5 * np.clip(norms - tl, 0, None) ** 2 - te * np.arange(1, len(row) + 1)])
    k = int(np.flatnonzero(gains == gains.max())[-1])
    y = np.zeros_like(row)
    if k:
        y[order[:k]] = row[order[:k]] * max(0.0, 1.0 - tl / norms[k - 1])
    return y


@pytest.mark.parametrize("tl,te", [(0.0, 1e-3), (1e-3, 1e-4), (0.05, 5e-4), (1e-2, 0.0)])
def test_a_mostly_pruned_layer_gets_the_same_prox_as_trying_every_size(tl: float, te: float) -> None:
    # what a trial's weights look like once pruning has begun: most entries near zero, whole
    # groups tiny, a few large ones (the prox then sorts only the candidates of the live rows)
    rng = np.random.default_rng(7)
    v = rng.normal(scale=0.003, size=(120, 60))
    big = rng.random(v.shape) < 0.05
    v[big] = rng.normal(scale=0.2, size=int(big.sum()))
    v[:40] *= 0.01
    y = prox_rows(torch.from_numpy(v), tl, te).numpy()
    want = np.stack([every_k(row, tl, te) for row in v])
    assert np.array_equal(y != 0, want != 0)
    assert np.allclose(y, want, rtol=1e-12, atol=0)
    assert not y[:40].any()  # the tiny groups are gone, whichever term removed them


def test_a_layer_with_nothing_above_the_l0_price_is_all_zero() -> None:
    v = torch.full((5, 7), 0.01)
    assert not prox_rows(v, 0.0, 1.0).any()
    assert prox_rows(v, 0.0, 1.0).shape == v.shape
