"""Streaming aggregation (one update at a time) against the stacked implementation it replaced
(tests/unit/stacked_reference.py) on random updates, and the core accumulators against numpy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hfedmoe.client import ClientUpdate
from hfedmoe.core.aggregation import aggregate_routers
from hfedmoe.core.streaming import PerExpertMean, RouterMean, WeightedMean
from hfedmoe.methods import HFedMoE
from hfedmoe.methods.fedavg import Centralized, FedAvg
from hfedmoe.methods.fedmoe import FedMoE
from hfedmoe.methods.flexmoe import FlexMoE
from hfedmoe.methods.frequency import FluxFreq, RandomExperts
from hfedmoe.methods.diagnostics import alpha_vs_shares, tau_exclusion
from hfedmoe.methods.restrict import HFedMoERestrict
from hfedmoe.moe import wrap
from hfedmoe.moe.build import tiny_model

from . import stacked_reference as ref

TAU = 0.1


def random_updates(mm, num_clients: int, seed: int, *, zero_examples: bool = False) -> list[ClientUpdate]:
    """Updates whose trained experts, usage (some below TAU), importance, routers and dense subsets
    are random; the dense part names differ between clients."""
    gen = torch.Generator().manual_seed(seed)
    L, E = mm.num_layers, mm.num_experts
    dense_names = sorted(mm.dense_named_parameters())
    out = []
    for c in range(num_clients):
        trained = torch.rand(L, E, generator=gen) < 0.5  # (L, E)
        usage = torch.rand(L, E, generator=gen) * 0.4  # (L, E): about a quarter below TAU
        usage = usage / usage.sum(dim=1, keepdim=True)
        importance = torch.rand(L, E, generator=gen)
        experts = {(l, e): {k: v + torch.randn(v.shape, generator=gen) for k, v in mm.get_expert(l, e).items()}
                   for l, e in trained.nonzero().tolist()}
        routers = {} if c == 1 else {
            l: {k: v + torch.randn(v.shape, generator=gen) for k, v in mm.router_state(l).items()} for l in range(L)
        }
        params = mm.dense_named_parameters()
        chosen = [n for i, n in enumerate(dense_names) if (i + c) % 3 != 0]
        dense = {n: params[n].detach() + torch.randn(params[n].shape, generator=gen) for n in chosen}
        n_ex = 0 if (zero_examples and c == 2) else int(torch.randint(1, 50, (1,), generator=gen))
        out.append(ClientUpdate(c + 10, n_ex, experts, routers, dense, usage.float(), importance.float(), trained,
                                trained.long(), {}))
    return out


def _assert_states_match(a, b, untouched_equal_to=None):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=2e-5, atol=2e-6, msg=lambda m, k=k: f"{k}: {m}")


def old_router_weight(mm, layer):
    """The router weight (E, H) of ``layer`` (the stacked code knew routers named "weight")."""
    return mm.router_state(layer)["weight"]


def held_as_usage(updates, num_experts, seed):
    """A random held set per client and layer, with usage zeroed outside it (as under a routing
    restriction, where usage > 0 marks exactly the held experts); returns the held sets."""
    rng = np.random.default_rng(seed)
    held = {}
    for u in updates:
        rows = []
        for layer in range(u.usage.shape[0]):
            h = sorted(rng.permutation(num_experts)[:3].tolist())
            keep = torch.zeros(num_experts, dtype=torch.bool)
            keep[h] = True
            u.usage[layer] = torch.where(keep, u.usage[layer].clamp_min(1e-3), torch.zeros(()))
            rows.append(h)
        held[u.client_id] = rows
    return held


def _pair(family):
    torch.manual_seed(0)
    mm = wrap(tiny_model(family, seed=0))
    return mm, copy.deepcopy(mm)


FAMILIES = ["minilm_moe", "switch"]


@pytest.mark.parametrize("family", ["minilm_moe", "mixtral"])  # the stacked code knew only routers named "weight"
@pytest.mark.parametrize("gate_weights", ["normalized", "paper-literal", "uniform"])
@pytest.mark.parametrize("expert_aggregation", ["sparse", "uniform"])
def test_hfedmoe_streaming_equals_stacked(family, gate_weights, expert_aggregation):
    new, old = _pair(family)
    updates = random_updates(new, 5, seed=1)
    method = HFedMoE(tau=TAU, gate_weights=gate_weights, expert_aggregation=expert_aggregation)
    agg = method.start_aggregation(new, 1)
    for u in updates:
        agg.add(u)
    metrics = agg.finish()
    ref_metrics = ref.hfedmoe(old, updates, tau=TAU, gate_weights=gate_weights,
                              expert_aggregation=expert_aggregation)
    _assert_states_match(new, old)
    for k in ref_metrics:
        assert metrics[k] == pytest.approx(ref_metrics[k], rel=1e-6)
    # the rest are the mechanism diagnostics, checked against their stacked forms
    extra = set(metrics) - set(ref_metrics)
    if expert_aggregation == "sparse":
        assert metrics["tau_excluded_frac"] == pytest.approx(tau_exclusion(updates, TAU)["tau_excluded_frac"])
    else:
        assert "tau_excluded_frac" not in extra
    if gate_weights != "uniform":
        senders = [u for u in updates if u.routers]
        alphas = []
        for layer in range(new.num_layers):
            g = old_router_weight(new, layer)
            _, alpha = aggregate_routers(
                g, torch.stack([u.routers[layer]["weight"] for u in senders]),
                torch.stack([u.usage[layer] for u in senders]), torch.stack([u.importance[layer] for u in senders]),
                TAU, normalize=gate_weights == "normalized")
            alphas.append(alpha.double())
        expected = alpha_vs_shares(torch.stack(alphas).mean(0),
                                   torch.tensor([float(u.num_examples) for u in senders]),
                                   [u.client_id for u in senders])
        for k in ("alpha_std", "alpha_uniform_dev", "alpha_share_l1"):
            assert metrics[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-12)
        assert metrics["alpha"] == expected["alpha"]
    assert extra <= {"tau_excluded_frac", "tau_trained_pairs", "alpha", "data_share", "alpha_std",
                     "alpha_uniform_dev", "alpha_share_l1", "data_share_std", "alpha_active_clients"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cls", [FedAvg, Centralized, FluxFreq, RandomExperts])
def test_fedavg_family_streaming_equals_stacked(family, cls):
    new, old = _pair(family)
    updates = random_updates(new, 4, seed=2, zero_examples=True)
    cls().aggregate(new, updates, 1)  # the thin wrapper: start, add each, finish
    ref.fedavg_trained(old, updates)
    _assert_states_match(new, old)


def test_flexmoe_aggregates_router_rows_over_holders_and_remembers_usage_after_finish():
    new, old = _pair("minilm_moe")
    updates = random_updates(new, 4, seed=3)
    held = held_as_usage(updates, new.num_experts, seed=3)
    method = FlexMoE()
    agg = method.start_aggregation(new, 1)
    for u in updates:
        agg.add(u)
    assert method.client_usage == {}  # method state changes only once the round is aggregated
    agg.finish()
    ref.fedmoe(old, updates, held)  # experts over trainers, router rows over holders, dense by data
    _assert_states_match(new, old)
    assert sorted(method.client_usage) == [u.client_id for u in updates]
    assert torch.equal(method.client_usage[12], updates[2].usage)


@pytest.mark.parametrize("family", FAMILIES)
def test_fedmoe_streaming_equals_stacked(family):
    new, old = _pair(family)
    updates = random_updates(new, 4, seed=4)
    held = held_as_usage(updates, new.num_experts, seed=0)  # the server derives held sets from usage
    FedMoE().aggregate(new, updates, 1)
    ref.fedmoe(old, updates, held)
    _assert_states_match(new, old)


def test_restrict_aggregates_like_hfedmoe():
    new, old = _pair("minilm_moe")
    updates = random_updates(new, 3, seed=5)
    HFedMoERestrict(tau=TAU).aggregate(new, updates, 1)
    ref.hfedmoe(old, updates, tau=TAU)
    _assert_states_match(new, old)


def test_client_order_does_not_matter_and_one_client_is_copied_bit_for_bit():
    a, b = _pair("minilm_moe")
    updates = random_updates(a, 4, seed=6)
    HFedMoE(tau=TAU).aggregate(a, updates, 1)
    HFedMoE(tau=TAU).aggregate(b, updates[::-1], 1)
    _assert_states_match(a, b)
    # one client, every expert trained and used: FedAvg returns its weights exactly
    one, _ = _pair("minilm_moe")
    (u,) = random_updates(one, 1, seed=7)
    u.trained[:] = True
    u.experts = {(l, e): {k: v + 1.5 for k, v in one.get_expert(l, e).items()}
                 for l in range(one.num_layers) for e in range(one.num_experts)}
    u.num_examples = 7
    FedAvg().aggregate(one, [u], 1)
    for (l, e), tensors in u.experts.items():
        for k, v in one.get_expert(l, e).items():
            assert torch.equal(v, tensors[k])
    for l in range(one.num_layers):
        for k, v in one.router_state(l).items():
            assert torch.equal(v, u.routers[l][k])


def test_unqualified_experts_and_untouched_tensors_stay_bit_for_bit():
    mm, before = _pair("minilm_moe")
    updates = random_updates(mm, 3, seed=8)
    for u in updates:  # nobody trains expert 0 of layer 0
        u.trained[0, 0] = False
        u.experts.pop((0, 0), None)
    HFedMoE(tau=TAU).aggregate(mm, updates, 1)
    for k, v in before.get_expert(0, 0).items():
        assert torch.equal(mm.get_expert(0, 0)[k], v)


def test_importance_weighted_routers_work_whatever_the_router_tensor_is_called():
    mm, before = _pair("switch")  # router tensor "classifier.weight": the stacked code raised KeyError
    updates = random_updates(mm, 3, seed=9)
    metrics = HFedMoE(tau=TAU).aggregate(mm, updates, 1)
    assert 0.0 < metrics["routing_consistency"] <= 1.0
    assert not torch.equal(mm.router_state(0)["classifier.weight"], before.router_state(0)["classifier.weight"])


def test_a_stacked_only_override_is_honoured_by_the_engine_entry_point():
    from hfedmoe.methods.aggregation import BufferedAggregation
    from hfedmoe.methods.base import open_aggregation

    calls = []

    class Custom(FedAvg):  # overrides only the stacked form
        def aggregate(self, mm, updates, round_idx):
            calls.append(len(updates))
            return {"custom": 1.0}

    mm, _ = _pair("minilm_moe")
    agg = open_aggregation(Custom(), mm, 1)
    assert isinstance(agg, BufferedAggregation)
    for u in random_updates(mm, 3, seed=0):
        agg.add(u)
    assert agg.finish() == {"custom": 1.0} and calls == [3]
    assert not isinstance(open_aggregation(FedAvg(), mm, 1), BufferedAggregation)
    assert not isinstance(open_aggregation(HFedMoERestrict(), mm, 1), BufferedAggregation)


def test_add_after_finish_is_refused():
    mm, _ = _pair("minilm_moe")
    agg = FedAvg().start_aggregation(mm, 1)
    agg.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        agg.add(random_updates(mm, 1, seed=0)[0])


# --- core accumulators against numpy ----------------------------------------------------------


def test_weighted_mean_is_fedavg():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(5, 3, 4)).astype(np.float32)
    n = rng.integers(1, 30, size=5).astype(np.float64)
    acc = WeightedMean()
    for x, w in zip(xs, n):
        acc.add({"w": torch.from_numpy(x)}, float(w))
    expected = (n[:, None, None] * xs.astype(np.float64)).sum(0) / n.sum()
    np.testing.assert_allclose(acc.mean("w", torch.float32).numpy(), expected, rtol=1e-6)
    assert acc.count("w") == 5


def test_per_expert_mean_is_eq17():
    rng = np.random.default_rng(1)
    C, E, P = 6, 5, 3
    xs = rng.normal(size=(C, E, P))
    n = rng.integers(1, 20, size=C).astype(np.float64)
    usage = rng.random((C, E))
    trained = rng.random((C, E)) < 0.6
    tau = 0.3
    q = (usage >= tau) & trained  # (C, E)
    g = rng.normal(size=(E, P))
    acc = PerExpertMean(E)
    for c in range(C):
        for e in range(E):
            if q[c, e]:
                acc.add_expert(e, {"w": torch.from_numpy(xs[c, e])}, n[c])
    out = acc.mean({"w": torch.from_numpy(g)})["w"].numpy()
    mass = (n[:, None] * q).sum(0)  # (E,)
    for e in range(E):
        if mass[e] > 0:
            w = n * q[:, e] / mass[e]  # w_c(e), Eq. 17
            np.testing.assert_allclose(out[e], (w[:, None] * xs[:, e]).sum(0), rtol=1e-12)
        else:
            assert np.array_equal(out[e], g[e])


@pytest.mark.parametrize("normalize", [True, False])
def test_router_mean_is_eqs_18_to_21(normalize):
    rng = np.random.default_rng(2)
    C, E, H = 5, 6, 4
    usage = rng.random((C, E)) * 0.3
    importance = rng.random((C, E))
    routers = rng.normal(size=(C, E, H))
    tau = 0.12
    acc = RouterMean(E, tau)
    for c in range(C):
        acc.add(torch.from_numpy(usage[c]), torch.from_numpy(importance[c]), {"weight": torch.from_numpy(routers[c])})
    out = acc.result({"weight": torch.zeros(E, H, dtype=torch.float64)}, normalize=normalize)["weight"].numpy()
    S = usage >= tau  # S_c (Eq. 18)
    S_global = S.any(0)
    alpha = (np.where(S, usage * importance, 0.0)).sum(1) / S_global.sum()  # Eq. 21
    if normalize:
        alpha = alpha / alpha.sum()
    np.testing.assert_allclose(out, np.einsum("c,ceh->eh", alpha, routers), rtol=1e-12)
    consistency = (S & S_global).sum(1) / S_global.sum()  # Eq. 19
    assert acc.consistency() == pytest.approx(consistency.mean(), rel=1e-12)


def test_router_mean_keeps_global_when_no_expert_reaches_tau():
    acc = RouterMean(3, 0.9)
    acc.add(torch.tensor([0.2, 0.3, 0.5]), torch.ones(3), {"weight": torch.ones(3, 2)})
    g = torch.randn(3, 2)
    assert torch.equal(acc.result({"weight": g}, normalize=False)["weight"], g)
    assert acc.consistency() == 0.0


def test_per_expert_mean_refuses_other_names_every_time_and_accepts_another_order():
    from hfedmoe.core.streaming import PerExpertMean

    acc = PerExpertMean(2)
    a, b = torch.ones(3), torch.full((3,), 3.0)
    acc.add_expert(0, {"w": a, "b": a}, 1.0)
    for _ in range(2):  # the refusal must not be remembered as the accepted order
        with pytest.raises(ValueError, match="expected names"):
            acc.add_expert(1, {"w": a, "c": a}, 1.0)
    acc.add_expert(0, {"b": b, "w": b}, 1.0)  # same names, other order: fine
    out = acc.mean({"w": torch.zeros(2, 3), "b": torch.zeros(2, 3)})
    assert torch.equal(out["w"][0], torch.full((3,), 2.0)) and torch.equal(out["w"][1], torch.zeros(3))
