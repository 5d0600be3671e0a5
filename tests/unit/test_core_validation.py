"""core.validation on hand-built updates: each check, and the norm rule with hand-computed bounds."""

import math
from dataclasses import dataclass, field

import pytest
import torch

from hfedmoe.core.validation import (
    Allowance,
    NormBound,
    Reference,
    allowed_experts,
    check_update,
    update_distance,
)

L, E = 2, 3


def _ref():
    g = torch.Generator().manual_seed(0)
    return Reference(
        experts=[{"w": torch.randn(E, 4, 2, generator=g)} for _ in range(L)],
        routers=[{"weight": torch.randn(E, 4, generator=g)} for _ in range(L)],
        dense={"head": torch.randn(2, 4, generator=g)},
    )


@dataclass
class Upd:
    num_examples: int = 10
    experts: dict = field(default_factory=dict)
    routers: dict = field(default_factory=dict)
    dense: dict = field(default_factory=dict)
    usage: torch.Tensor = field(default_factory=lambda: torch.full((L, E), 1 / 3))
    importance: torch.Tensor = field(default_factory=lambda: torch.ones(L, E))
    trained: torch.Tensor = field(default_factory=lambda: torch.zeros(L, E, dtype=torch.bool))
    selected_counts: torch.Tensor = field(default_factory=lambda: torch.zeros(L, E, dtype=torch.long))


def _honest(ref):
    u = Upd()
    u.experts[(1, 2)] = {"w": ref.experts[1]["w"][2] + 0.1}
    u.trained[1, 2] = True
    u.selected_counts[1, 2] = 2
    u.routers = {l: {"weight": ref.routers[l]["weight"].clone()} for l in range(L)}
    u.dense = {"head": ref.dense["head"] + 0.2}
    return u


def _allow(**kw):
    base = dict(num_examples=10, experts=torch.ones(L, E, dtype=torch.bool), max_selections=2, per_layer=True,
                routers=True, dense=frozenset({"head"}))
    return Allowance(**{**base, **kw})


def test_an_honest_update_passes_and_its_distance_is_hand_computed():
    ref = _ref()
    u = _honest(ref)
    assert check_update(u, ref, _allow()) is None
    dist, gnorm, d, max_abs, gmax, eps = update_distance(u, ref)
    assert max_abs == pytest.approx(0.2, rel=1e-6)
    assert gmax == max(float(t.abs().max()) for t in (ref.experts[1]["w"][2], ref.routers[0]["weight"],
                                                      ref.routers[1]["weight"], ref.dense["head"]))
    assert eps == torch.finfo(torch.float32).eps
    assert dist == pytest.approx(math.sqrt(8 * 0.1**2 + 8 * 0.2**2))
    assert d == 8 + 2 * E * 4 + 8
    g2 = sum(float(t.pow(2).sum()) for t in (ref.experts[1]["w"][2], ref.routers[0]["weight"],
                                             ref.routers[1]["weight"], ref.dense["head"]))
    assert gnorm == pytest.approx(math.sqrt(g2))


def _set(path, value):
    def f(u, ref):
        setattr(u, path, value)
    return f


BAD = {
    "nan expert": (lambda u, r: u.experts[(1, 2)]["w"].__setitem__((0, 0), float("nan")), "non-finite"),
    "inf dense": (lambda u, r: u.dense["head"].__setitem__((0, 0), float("inf")), "non-finite"),
    "float64 dense": (lambda u, r: u.dense.__setitem__("head", u.dense["head"].double()), "dtype"),
    "short expert": (lambda u, r: u.experts[(1, 2)].__setitem__("w", torch.zeros(4, 1)), "shape"),
    "expert -1": (lambda u, r: u.experts.__setitem__((1, -1), u.experts.pop((1, 2))), "out of range"),
    "expert 99": (lambda u, r: u.experts.__setitem__((1, 99), u.experts.pop((1, 2))), "out of range"),
    "layer 5": (lambda u, r: u.experts.__setitem__((5, 0), u.experts.pop((1, 2))), "out of range"),
    "1e12 examples": (_set("num_examples", 10**12), "num_examples"),
    "0 examples": (_set("num_examples", 0), "num_examples"),
    "bool examples": (_set("num_examples", True), "num_examples"),
    "claims all": (lambda u, r: (u.trained.fill_(True), u.selected_counts.clamp_(min=1)), "without uploading"),
    "unclaimed upload": (lambda u, r: u.trained.fill_(False), "not claimed"),
    "counts disagree": (lambda u, r: u.selected_counts.__setitem__((0, 0), 1), "disagree"),
    "over budget": (lambda u, r: u.selected_counts.__setitem__((1, 2), 3), "budget allows 2"),
    "unknown dense": (lambda u, r: u.dense.__setitem__("attention.q", torch.zeros(1)), "not trainable"),
    "router layer 7": (lambda u, r: u.routers.__setitem__(7, u.routers[0]), "out of range"),
    "router names": (lambda u, r: u.routers.__setitem__(0, {"bias": torch.zeros(E)}), "tensors"),
    "usage nan": (lambda u, r: u.usage.__setitem__((0, 0), float("nan")), "usage"),
    "usage 2": (lambda u, r: u.usage.__setitem__((0, 0), 2.0), "outside [0, 1]"),
    "usage shape": (_set("usage", torch.zeros(L, E + 1)), "usage"),
    "trained int": (_set("trained", torch.zeros(L, E, dtype=torch.long)), "trained"),
    "negative counts": (lambda u, r: u.selected_counts.__setitem__((0, 0), -1), "negative"),
    "not a tensor": (lambda u, r: u.dense.__setitem__("head", [1.0]), "expected a tensor"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_update_is_rejected_with_its_reason(case):
    ref = _ref()
    u = _honest(ref)
    tamper, needle = BAD[case]
    tamper(u, ref)
    reason = check_update(u, ref, _allow())
    assert reason is not None and needle in reason, reason


def test_plan_limits_and_routers():
    ref = _ref()
    u = _honest(ref)
    allowed = allowed_experts(L, E, [[0, 1], None], [None, [0, 1]])
    assert allowed.tolist() == [[True, True, False], [True, True, False]]
    assert "not allowed by the plan" in check_update(u, ref, _allow(experts=allowed))
    assert "routers" in check_update(u, ref, _allow(routers=False))
    assert "examples" in check_update(u, ref, _allow(num_examples=9))
    # model scope: the sum over layers counts
    u.experts[(0, 0)] = {"w": ref.experts[0]["w"][0].clone()}
    u.trained[0, 0] = True
    u.selected_counts[0, 0] = 1
    assert check_update(u, ref, _allow(max_selections=3, per_layer=False)) is None
    assert "in the model" in check_update(u, ref, _allow(max_selections=2, per_layer=False))


def test_norm_bound_first_round_then_median_of_previous_rounds():
    nb = NormBound(factor=10.0, window=2, first_round_factor=3.0)
    assert nb.limit(global_norm=2.0, dims=100) == 6.0  # no history: 3 x ||g||
    assert nb.check(6.5, 2.0, 100).startswith("update norm 6.5 exceeds the bound 6")
    nb.accept(1.0)
    nb.accept(5.0)
    assert nb.limit(2.0, 100) == 6.0  # the current round does not count yet
    nb.end_round()
    nb.accept(3.0)
    nb.end_round()
    assert nb.limit(2.0, 100) == 30.0  # median of [1, 5, 3] = 3
    nb.accept(100.0)
    nb.end_round()  # window 2: rounds [[3], [100]] -> lower middle median 3
    assert nb.limit(2.0, 100) == 30.0
    assert nb.check(float("nan"), 2.0, 100) is not None
    again = NormBound(10.0, 2, 3.0)
    again.load_state_dict(nb.state_dict())
    assert again.limit(2.0, 100) == nb.limit(2.0, 100)


def test_norm_bound_makes_room_for_dp_noise():
    nb = NormBound(factor=10.0, window=2, first_round_factor=1.0, dp_clip=0.5, dp_sigma=2.0)
    # clip (1 + sigma (sqrt(d) + 4)) = 0.5 (1 + 2 (10 + 4)) = 14.5
    assert nb.limit(global_norm=1.0, dims=100) == pytest.approx(14.5)


def test_scores_counts_and_nonce_are_range_checked():
    ref = _ref()
    u = _honest(ref)
    u.importance = torch.full((L, E), 1e30)
    assert "importance: values outside [0, 1]" in check_update(u, ref, _allow())
    u = _honest(ref)
    u.importance[0, 0] = 1.0  # the largest honest score (one token, probability 1)
    assert check_update(u, ref, _allow()) is None
    u.usage[0, 0] = 1.5
    assert "usage" in check_update(u, ref, _allow())
    u = _honest(ref)
    assert check_update(u, ref, _allow(steps=2)) is None  # 2 batches selected in 2 steps
    assert "ran 1 local steps" in check_update(u, ref, _allow(steps=1, max_selections=None))
    u.nonce = "abc"
    assert check_update(u, ref, _allow(nonce="abc")) is None
    assert "stale or replayed" in check_update(u, ref, _allow(nonce="def"))
    del u.nonce  # an update without the field
    assert "stale or replayed" in check_update(u, ref, _allow(nonce="def"))


def test_the_optimizer_bound_replaces_the_first_round_rule_and_caps_the_median():
    from hfedmoe.core.step_bound import StepBounds

    nb = NormBound(factor=10.0, window=2, first_round_factor=3.0)
    step = StepBounds(max_abs=0.1, l2=1.0)
    assert nb.limit(2.0, 100, step) == 1.0  # not 3 x ||g|| = 6
    assert "optimizer" in nb.check(1.5, 2.0, 100, step, max_abs=0.05)
    assert "changes a weight by 0.2" in nb.check(0.5, 2.0, 100, step, max_abs=0.2)
    assert nb.check(0.9, 2.0, 100, step, max_abs=0.09) is None
    nb.accept(0.05)
    nb.end_round()
    assert nb.limit(2.0, 100, step) == pytest.approx(0.5)  # 10 x median 0.05 < 1.0
    assert "median" in nb.check(0.6, 2.0, 100, step, max_abs=0.01)
