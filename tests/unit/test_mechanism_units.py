"""Unit checks of the issue-8 pieces against hand-computed values: paired t-intervals, Eq. 2
combine weights, expert-state eviction, selection diagnostics, sweep budgets and held-out seeds."""

import math

import pytest
import torch

from hfedmoe.bench.paired import paired_ci
from hfedmoe.client.diagnostics import SelectionDiagnostics, rates
from hfedmoe.client.state import evict_expert_state, live_expert_state
from hfedmoe.methods.diagnostics import alpha_vs_shares, tau_exclusion
from hfedmoe.moe.contexts import LayerRouting
from hfedmoe.moe.layouts import route_straight_through
from hfedmoe.moe.minilm import TopKRouter


def test_paired_ci_matches_hand_computation():
    # d = (0.1, 0.0, 0.1): mean 1/15, sd 0.057735, sem 0.033333, t_{0.975, 2} = 4.302653
    ci = paired_ci([0.8, 0.7, 0.9], [0.7, 0.7, 0.8])
    assert ci["n"] == 3
    assert ci["mean"] == pytest.approx(1 / 15)
    assert ci["hi"] - ci["mean"] == pytest.approx(4.302653 * 0.0333333, rel=1e-5)
    assert math.isnan(paired_ci([0.5], [0.4])["lo"])


def test_topk_prob_combine_is_renormalised_times_k():
    router = TopKRouter(hidden_size=2, num_experts=3, top_k=2)
    with torch.no_grad():
        router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    x = torch.tensor([[2.0, 1.0]])  # logits (2, 1, 0)
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.0]), 0)
    routed = route_straight_through(router, x, None)
    assert torch.equal(routed.router_output[1], torch.ones(1, 2))  # straight-through: value 1
    router.combine = "topk-prob"
    _, w, idx = route_straight_through(router, x, None).router_output
    assert idx.tolist() == [[0, 1]]
    expected = torch.stack([p[0], p[1]]) / (p[0] + p[1]) * 2
    torch.testing.assert_close(w[0], expected)


def test_eviction_drops_state_of_experts_not_trained_this_step():
    leaves = {(0, e): [torch.zeros(3, requires_grad=True)] for e in range(3)}
    opt = torch.optim.AdamW([t for ts in leaves.values() for t in ts], lr=0.1)
    for e in (0, 1):
        leaves[(0, e)][0].grad = torch.ones(3)
    opt.step()
    assert live_expert_state(opt, leaves, 1).tolist() == [2]
    opt.zero_grad(set_to_none=True)
    leaves[(0, 2)][0].grad = torch.ones(3)
    assert evict_expert_state(opt, leaves, {(0, 2)}) == 2  # experts 0 and 1 had Adam moments
    opt.step()
    assert live_expert_state(opt, leaves, 1).tolist() == [1]
    assert not opt.state.get(leaves[(0, 0)][0])


def test_selection_diagnostics_hand_case():
    # lam = 1 (s_b = mean): means (0.4, 0.35, 0.25); KL = (0.277, 0.033, 0.173) by hand;
    # beta = 1 -> IB scores (0.123, 0.317, 0.077): IB picks 1, no-IB picks 0;
    # top-2 routing: token 0 -> {0, 1}, token 1 -> {1, 2}: counts (1, 2, 1), frequency picks 1.
    probs = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.5, 0.5]])
    topk = torch.tensor([[0, 1], [1, 2]])
    mask = torch.ones(2, dtype=torch.bool)
    d = SelectionDiagnostics(lam=1.0, beta=1.0, budget=1, num_experts=3, pooling="token")
    d.update(LayerRouting(probs, topk, mask))
    d.update(LayerRouting(probs, topk, torch.zeros(2, dtype=torch.bool)))  # no real token: not a decision
    r = rates([d.counts()])
    assert r["sel_decisions"] == 1
    assert (r["sel_disagree_hfedmoe_freq"], r["sel_disagree_hfedmoe_noib"], r["sel_disagree_noib_freq"]) == (0, 1, 1)
    kl = torch.tensor([0.4 * math.log(2), (0.2 * math.log(0.2 / 0.35) + 0.5 * math.log(0.5 / 0.35)) / 2,
                       0.25 * math.log(2)])
    assert r["ib_scale_ratio"] == pytest.approx(float(kl.std() / torch.tensor([0.4, 0.35, 0.25]).std()), rel=1e-4)
    # beta = 0: HFedMoE is its no-IB ablation
    d0 = SelectionDiagnostics(lam=1.0, beta=0.0, budget=1, num_experts=3, pooling="token")
    d0.update(LayerRouting(probs, topk, mask))
    assert rates([d0.counts()])["sel_disagree_hfedmoe_noib"] == 0
    # normalised IB term at beta = 1: KL rescaled to the spread of s_b over the 3 routed experts,
    # so std(s_b - I_b) / std(s_b) = 1 exactly; the pick is still expert 1 (IB changes the choice)
    dn = SelectionDiagnostics(lam=1.0, beta=1.0, budget=1, num_experts=3, pooling="token", ib_scale="normalised")
    dn.update(LayerRouting(probs, topk, mask))
    rn = rates([dn.counts()])
    assert rn["ib_scale_ratio"] == pytest.approx(1.0) and rn["sel_disagree_hfedmoe_noib"] == 1


def test_server_diagnostics_hand_case():
    class U:
        def __init__(self, usage, trained):
            self.usage, self.trained = torch.tensor(usage), torch.tensor(trained)

    ups = [U([[0.01, 0.5]], [[True, True]]), U([[0.3, 0.0]], [[True, False]])]
    assert tau_exclusion(ups, 0.02)["tau_excluded_frac"] == pytest.approx(1 / 3)
    m = alpha_vs_shares(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0]), [4, 7])
    assert m["alpha"] == {"4": 0.75, "7": 0.25} and m["alpha_uniform_dev"] == pytest.approx(0.25)
    assert m["alpha_share_l1"] == pytest.approx(0.5)


def test_sweep_budget_is_equal_and_seeds_are_held_out(tmp_path):
    from hfedmoe.bench.spec import Sweep, load_bench_config
    from hfedmoe.errors import HFedMoEError

    sw = Sweep(["hfedmoe", "random"], 100, [], {"train.lr": [1e-4, 1e-3]},
               {"hfedmoe": {"method.beta": [0.0, 1.0, 10.0]}}, trials_per_method=2)
    assert len(sw.trials("hfedmoe")) == 2 and len(sw.trials("random")) == 2
    assert all("method.beta" in t for t in sw.trials("hfedmoe"))
    assert sw.trials("hfedmoe") == sw.trials("hfedmoe")  # seeded
    from pathlib import Path

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
    p = tmp_path / "b.toml"
    p.write_text(f'base = "{tiny}"\nseeds = [0, 1]\n[sweep]\nseed = 1\ngrid = {{ "train.lr" = [0.001] }}\n')
    with pytest.raises(HFedMoEError, match="sweep.seed"):
        load_bench_config(p)
