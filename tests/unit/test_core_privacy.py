"""core.privacy: clipping to the bound, noise of the promised scale, epsilon from the accountant
checked against the classical RDP-to-DP conversion computed here by hand."""

import math
from dataclasses import dataclass, field

import pytest
import torch

from hfedmoe.core.privacy import epsilon, privatize_update
from hfedmoe.core.validation import Reference


@dataclass
class Upd:
    experts: dict = field(default_factory=dict)
    routers: dict = field(default_factory=dict)
    dense: dict = field(default_factory=dict)


def _case(n=20000, scale=1.0):
    g = torch.Generator().manual_seed(1)
    ref = Reference(experts=[{"w": torch.randn(2, n, generator=g)}], routers=[{"weight": torch.randn(2, 3, generator=g)}],
                    dense={"head": torch.randn(n, generator=g)})
    delta_e = torch.randn(n, generator=g) * scale
    delta_h = torch.randn(n, generator=g) * scale
    u = Upd(experts={(0, 1): {"w": ref.experts[0]["w"][1] + delta_e}}, dense={"head": ref.dense["head"] + delta_h})
    return u, ref, torch.cat([delta_e, delta_h])


def _delta(u, ref):
    return torch.cat([u.experts[(0, 1)]["w"] - ref.experts[0]["w"][1], u.dense["head"] - ref.dense["head"]])


def test_clipping_scales_the_change_to_the_bound_and_keeps_its_direction():
    u, ref, d = _case()
    norm = privatize_update(u, ref, clip=2.0, sigma=1e-12, generator=torch.Generator().manual_seed(0))
    assert norm == pytest.approx(float(d.norm()), rel=1e-6)
    out = _delta(u, ref)
    assert float(out.norm()) == pytest.approx(2.0, rel=1e-4)
    assert torch.allclose(out, d * (2.0 / float(d.norm())), atol=1e-5)


def test_a_small_change_is_not_scaled_up():
    u, ref, d = _case(scale=1e-4)
    privatize_update(u, ref, clip=10.0, sigma=1e-12, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_delta(u, ref), d, atol=1e-6)


def test_noise_has_standard_deviation_sigma_times_clip():
    u, ref, d = _case(scale=1e-6)
    privatize_update(u, ref, clip=0.5, sigma=0.8, generator=torch.Generator().manual_seed(0))
    noise = _delta(u, ref) - d * min(1.0, 0.5 / float(d.norm()))
    assert float(noise.std()) == pytest.approx(0.4, rel=0.02)
    assert abs(float(noise.mean())) < 0.01


def test_epsilon_matches_the_rdp_of_the_gaussian_mechanism():
    sigma, T, delta = 2.0, 10, 1e-5
    # RDP of T Gaussian releases at order a: T a / (2 sigma^2); classical conversion
    # eps <= min_a T a / (2 sigma^2) + log(1/delta) / (a - 1); Opacus's conversion is tighter.
    classical = min(T * a / (2 * sigma**2) + math.log(1 / delta) / (a - 1) for a in [1 + x / 10 for x in range(1, 1000)])
    eps = epsilon(sigma, T, delta)
    assert 0.75 * classical < eps <= classical + 1e-9
    assert epsilon(sigma, 0, delta) == 0.0
    assert epsilon(sigma, 20, delta) > eps > epsilon(4.0, T, delta)
