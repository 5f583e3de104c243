import math

import pytest
import torch

from workers.methods import hard_concrete as hc


def test_expected_l0_matches_monte_carlo_sampling() -> None:
    """P(z ≠ 0) in closed form against the frequency of non-zero sampled gates."""
    log_alpha = torch.tensor([-4.0, -2.0, -0.5, 0.0, 0.85, 2.0, 5.0])
    draws = 200_000
    gen = torch.Generator().manual_seed(0)
    z = hc.sample(log_alpha.expand(draws, -1).contiguous(), gen)
    freq = (z != 0).double().mean(dim=0)
    expected = hc.prob_nonzero(log_alpha).double()
    # standard error ≤ 0.5/√200000 ≈ 0.0011: a 4-σ band
    assert torch.allclose(freq, expected, atol=0.0045), (freq, expected)
    # the gates are stretched then clamped: both ends are hit with positive probability
    assert ((z == 0).any(dim=0) | (log_alpha > 4)).all()
    assert ((z == 1).any(dim=0) | (log_alpha < -3)).all()
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0


def test_expected_l0_is_differentiable_and_decreasing_with_the_penalty() -> None:
    log_alpha = torch.zeros(5, requires_grad=True)
    hc.prob_nonzero(log_alpha).sum().backward()
    assert log_alpha.grad is not None and bool((log_alpha.grad > 0).all())


def test_deterministic_gates() -> None:
    la = torch.tensor([-10.0, math.log(1 / 11) - 1e-4, 0.0, 2.0, 2.4, 10.0])
    z = hc.deterministic(la)
    assert z[0] == 0 and z[1] == 0  # closed below log(1/11)
    assert z[2] == pytest.approx(0.5 * 1.2 - 0.1)
    assert z[3] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item() * 1.2 - 0.1)
    assert z[4] == 1 and z[5] == 1  # clamped at 1 once σ(log α) ≥ 11/12
    assert torch.equal(hc.deterministic(la), z)


def test_init_from_drop_rate() -> None:
    for p in (0.1, 0.3, 0.5, 0.9):
        la = hc.log_alpha_init((3, 4), p)
        assert la.shape == (3, 4)
        assert float(torch.sigmoid(la[0, 0])) == pytest.approx(1 - p, rel=1e-6)
        assert float(hc.deterministic(la)[0, 0]) == pytest.approx(
            max(0.0, min(1.0, (1 - p) * (hc.ZETA - hc.GAMMA) + hc.GAMMA)), rel=1e-6)
    with pytest.raises(ValueError, match="drop rate"):
        hc.log_alpha_init((1,), 1.0)


def test_sampling_is_reproducible_from_the_generator() -> None:
    la = torch.randn(100)
    a = hc.sample(la, torch.Generator().manual_seed(3))
    b = hc.sample(la, torch.Generator().manual_seed(3))
    c = hc.sample(la, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gate_shapes_per_weight_and_per_group() -> None:
    assert hc.gate_shape("linear", (300, 784), "weight") == (300, 784)
    assert hc.gate_shape("linear", (300, 784), "neuron") == (1, 784)
    assert hc.gate_shape("conv2d", (50, 20, 5, 5), "neuron") == (50, 1, 1, 1)
    assert hc.group_size((1, 784), (300, 784)) == 300
    assert hc.group_size((50, 1, 1, 1), (50, 20, 5, 5)) == 500
    # a zero gate zeroes a whole input column / output filter
    w = torch.ones(4, 3)
    z = torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.equal((w * z)[:, 1], torch.zeros(4))
    with pytest.raises(ValueError, match="kind"):
        hc.gate_shape("bias", (10,), "neuron")
