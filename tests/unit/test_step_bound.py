"""core.step_bound: the AdamW factor B(t) against hand values and against torch.optim.AdamW itself
under adversarial gradient sequences (the bound must hold, and be nearly reached)."""

import math

import pytest
import torch

from hfedmoe.core.step_bound import adam_step_factor, adamw_distance_bounds


def test_factor_hand_values():
    assert adam_step_factor(1) == pytest.approx(1.0)
    # t = 2: 0.1 / 0.19 * sqrt(1 - 0.999^2) / sqrt(0.001) * sqrt(1 + 0.81 / 0.999)
    hand = 0.1 / 0.19 * math.sqrt(1 - 0.999**2) / math.sqrt(0.001) * math.sqrt(1 + 0.81 / 0.999)
    assert adam_step_factor(2) == pytest.approx(hand)
    limit = 0.1 / math.sqrt(0.001 * (1 - 0.81 / 0.999))
    assert adam_step_factor(100_000) == pytest.approx(limit, rel=1e-6)  # 7.27
    with pytest.raises(ValueError):
        adam_step_factor(0)


@pytest.mark.parametrize("pattern", ["constant", "spike_last", "alternating", "random"])
def test_torch_adamw_never_moves_a_weight_more_than_the_bound(pattern):
    steps, lr, wd, n = 40, 1e-2, 0.01, 64
    g0 = torch.linspace(-3, 3, n, dtype=torch.float64)
    p = torch.nn.Parameter(g0.clone())
    opt = torch.optim.AdamW([p], lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(0)
    for t in range(steps):
        if pattern == "constant":
            grad = torch.ones(n, dtype=torch.float64)
        elif pattern == "spike_last":  # tiny gradients, then a huge one: m_hat / sqrt(v_hat) is largest
            grad = torch.full((n,), 1e-8 if t < steps - 1 else 1e4, dtype=torch.float64)
        elif pattern == "alternating":
            grad = torch.full((n,), (-1.0) ** t, dtype=torch.float64)
        else:
            grad = torch.randn(n, generator=gen, dtype=torch.float64) * 10 ** torch.randint(-3, 3, (1,), generator=gen)
        p.grad = grad
        opt.step()
    change = (p.detach() - g0)
    b = adamw_distance_bounds(lr, steps, wd, torch.finfo(torch.float64).eps, float(g0.abs().max()),
                              float(g0.norm()), n)
    assert float(change.abs().max()) <= b.max_abs
    assert float(change.norm()) <= b.l2
    if pattern == "constant":  # every step moves lr: the bound is within B_max of the truth
        assert float(change.abs().max()) > b.max_abs / adam_step_factor(steps) * 0.95


def test_the_cauchy_schwarz_sequence_reaches_the_factor_exactly():
    # gradients g_i = (beta1 / beta2)^(t - i) make Cauchy-Schwarz an equality: step t moves lr B(t)
    t, lr, b1, b2 = 30, 1.0, 0.9, 0.999
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=lr, eps=0.0)
    before = 0.0
    for i in range(1, t + 1):
        p.grad = torch.tensor([(b1 / b2) ** (t - i)], dtype=torch.float64)
        before = float(p.detach())
        opt.step()
    assert abs(float(p.detach()) - before) == pytest.approx(lr * adam_step_factor(t), rel=1e-9)
    assert adam_step_factor(t) > 1.2  # above the "lr per step" rule of thumb


def test_decay_or_rounding_that_could_move_a_weight_entirely_gives_no_bound():
    b = adamw_distance_bounds(1.0, 200, 0.01, 0.0, 1.0, 1.0, 10)
    assert math.isinf(b.l2) and math.isinf(b.max_abs)
    assert adamw_distance_bounds(1e-3, 0, 0.0, 0.0, 1.0, 1.0, 10).l2 == 0.0
