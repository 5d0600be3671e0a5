"""Server optimizers (FedAvgM / FedAdam / FedYogi) against numpy re-computations of Flower's and
Reddi et al.'s formulas, with the sparse ("lazy") rule: elements the aggregation left unchanged are
untouched in value and state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfedmoe.core.server_opt import ServerOptSettings, server_step
from hfedmoe.methods.aggregation import Aggregation
from hfedmoe.methods.server_opt import ServerOptimizer


def numpy_reference(kind, xs0, deltas, lr, mom=0.9, b1=0.9, b2=0.99, tau=1e-3):
    """Dense rounds (every element touched every round), the textbook formulas in float64."""
    x = xs0.astype(np.float64)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for t, d in enumerate(deltas, start=1):
        if kind == "avgm":  # Flower FedAvgM: pg = old - avg; mv = mom * mv + pg; x = old - lr * mv
            pg = -d
            m = pg if t == 1 else mom * m + pg
            x = x - lr * m
            continue
        m = b1 * m + (1 - b1) * d
        if kind == "adam":
            v = b2 * v + (1 - b2) * d**2
            x = x + lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + tau)
        else:  # yogi
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
            x = x + lr * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("kind,lr", [("avgm", 0.7), ("adam", 0.05), ("yogi", 0.05)])
def test_three_dense_rounds_match_numpy(kind, lr):
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(5, 3)).astype(np.float32)
    deltas = [rng.normal(scale=0.1, size=(5, 3)).astype(np.float32) for _ in range(3)]
    s = ServerOptSettings(kind=kind, lr=lr)
    x, state = torch.from_numpy(x0), {}
    for d in deltas:
        x, state = server_step(s, x, x + torch.from_numpy(d), state)
    # the aggregate x + d is rounded to float32 before the step: recompute the delta that way too
    expected = numpy_reference(kind, x0, deltas, lr)
    np.testing.assert_allclose(x.numpy(), expected, rtol=2e-5, atol=2e-6)


def test_fedadam_first_step_by_hand():
    # one element, delta 0.2, lr 0.1: m = 0.02, v = 0.0004, bias factor sqrt(0.01)/0.1 = 1
    # step = 0.1 * 1 * 0.02 / (0.02 + 0.001) = 0.0952380...
    s = ServerOptSettings(kind="adam", lr=0.1, tau=1e-3)
    x, _ = server_step(s, torch.tensor([1.0]), torch.tensor([1.2]), {})
    assert x.item() == pytest.approx(1.0 + 0.1 * 0.02 / 0.021, rel=1e-5)


def test_yogi_second_moment_by_hand():
    # v0 = 0: v1 = (1 - b2) d^2 = 0.01 * 0.04; second round delta 0.1: v2 = v1 - 0.01 * 0.01 * sign(v1 - 0.01)
    s = ServerOptSettings(kind="yogi", lr=0.01)
    x, st = server_step(s, torch.tensor([0.0]), torch.tensor([0.2]), {})
    assert st["v"].item() == pytest.approx(0.0004, rel=1e-5)
    _, st2 = server_step(s, x, x + 0.1, st)
    assert st2["v"].item() == pytest.approx(0.0004 + 0.0001, rel=1e-4)


@pytest.mark.parametrize("kind", ["avgm", "adam", "yogi"])
def test_untouched_elements_keep_value_and_state_bit_for_bit(kind):
    s = ServerOptSettings(kind=kind, lr=0.1)
    old = torch.randn(4, 6)
    agg = old.clone()
    agg[1] += 0.3  # only row 1 (one "expert") was updated by somebody
    x, st = server_step(s, old, agg, {})
    assert torch.equal(x[[0, 2, 3]], old[[0, 2, 3]])
    assert not torch.equal(x[1], old[1])
    # the next round updates only row 2: row 1 keeps its value AND its momentum
    agg2 = x.clone()
    agg2[2] -= 0.1
    x2, st2 = server_step(s, x, agg2, st)
    assert torch.equal(x2[1], x[1]) and torch.equal(st2["m"][1], st["m"][1])
    assert torch.equal(x2[[0, 3]], old[[0, 3]])


def test_none_and_unchanged_return_the_aggregate_unchanged():
    old = torch.randn(3)
    agg = old + 1
    out, st = server_step(ServerOptSettings(kind="none"), old, agg, {})
    assert out is agg and st == {}
    same, st = server_step(ServerOptSettings(kind="adam"), old, old.clone(), {})
    assert torch.equal(same, old) and st == {}


def test_avgm_without_momentum_at_lr_one_is_the_aggregate():
    old, agg = torch.randn(7), torch.randn(7)
    out, _ = server_step(ServerOptSettings(kind="avgm", lr=1.0, momentum=0.0), old, agg, {})
    torch.testing.assert_close(out, agg)


class _Model:
    def __init__(self) -> None:
        self.model = torch.nn.Linear(3, 4)


class _Shift(Aggregation):
    """A method's aggregation that moves only the first output row of the weight (one 'expert')."""

    def __init__(self, mm) -> None:
        self.mm = mm

    def add(self, update) -> None:
        pass

    def finish(self) -> dict[str, float]:
        with torch.no_grad():
            self.mm.model.weight[0] += 0.5
        return {"inner": 1.0}


def test_wrapped_aggregation_steps_only_what_the_method_changed_and_checkpoints_its_state():
    mm = _Model()
    before = {n: p.detach().clone() for n, p in mm.model.named_parameters()}
    opt = ServerOptimizer(ServerOptSettings(kind="adam", lr=0.05))
    metrics = opt.wrap(_Shift(mm), mm).finish()
    assert metrics == {"inner": 1.0, "server_opt_params": 1.0}
    w = mm.model.weight.detach()
    assert torch.equal(w[1:], before["weight"][1:]) and torch.equal(mm.model.bias.detach(), before["bias"])
    # adam's first step is about lr * sign(delta) (tau small against |delta| = 0.5)
    torch.testing.assert_close(w[0] - before["weight"][0], torch.full((3,), 0.05 * 0.05 / 0.051), rtol=1e-4,
                               atol=1e-6)
    again = ServerOptimizer(ServerOptSettings(kind="adam", lr=0.05))
    again.load_state_tensors(opt.state_tensors())
    assert set(again.state) == {"weight"}
    assert all(torch.equal(again.state["weight"][k], opt.state["weight"][k]) for k in ("m", "v", "n"))
    assert ServerOptimizer(ServerOptSettings()).wrap(agg := _Shift(mm), mm) is agg
