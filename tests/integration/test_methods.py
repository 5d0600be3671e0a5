"""Every method runs on the tiny preset; budgets, failures/drops, restriction and the FLEX-MoE
assignment are checked against what the method promises."""

import math

import numpy as np
import pytest
import torch

from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation
from hfedmoe.errors import HFedMoEError
from hfedmoe.methods import METHODS, make_method
from hfedmoe.methods.base import ClientInfo
from hfedmoe.methods.flexmoe import assign_experts

from .conftest import FAST, TINY



ONE_ROUND = FAST + ["federation.rounds=1"]


def _sim(tmp_path, name, extra=()):
    return Simulation(load_config(TINY, ONE_ROUND + [f"method.name={name}", *extra]), tmp_path / name)


@pytest.fixture(scope="module")
def one_round_rows(tmp_path_factory):
    """Round-1 metrics row of every registered method (one tiny run each)."""
    base = tmp_path_factory.mktemp("methods")
    rows, sims = {}, {}
    for name in METHODS:
        sim = _sim(base, name)
        rows[name] = sim.run()[-1]
        sims[name] = sim
    return rows, sims


def test_every_method_runs_one_round(one_round_rows):
    rows, _ = one_round_rows
    for name, r in rows.items():
        assert r["round"] == 1 and r["method"] == name
        for key in ("test_accuracy", "test_loss", "sim_time_s", "backward_flops_per_client"):
            assert math.isfinite(r[key]), (name, key)
        assert r["train_loss"] is not None and math.isfinite(r["train_loss"]), name
        # honest clients of every method pass the round guard (centralized's pooled client once
        # failed the per-client budget check, so the centralised bound never trained)
        assert r["rejected_clients"] == {}, (name, r["rejected_clients"])


def test_fedavg_fails_and_fedavg_drop_skips_exactly_the_unfit(one_round_rows):
    rows, sims = one_round_rows
    unfit = [cid for cid, b in enumerate(sims["fedavg"].budgets) if not b.fits_full]
    assert unfit  # the tiny preset has weak clients
    assert rows["fedavg"]["failed_clients"] == unfit and rows["fedavg"]["dropped_clients"] == []
    assert rows["fedavg-drop"]["dropped_clients"] == unfit and rows["fedavg-drop"]["failed_clients"] == []
    trained = set(rows["fedavg-drop"]["client_trained"])
    assert trained == {str(c) for c in range(len(sims["fedavg"].budgets)) if c not in unfit}
    for cid, layers in rows["fedavg"]["client_trained"].items():
        assert all(all(row) for row in layers)  # all experts trained where tokens reached them


@pytest.mark.parametrize("name", ["random", "flux-freq", "flex-moe", "fedmoe", "hfedmoe-restrict", "fft-moe"])
def test_budget_respected(one_round_rows, name):
    rows, sims = one_round_rows
    steps = 2  # train.local_steps in FAST
    for cid, counts in rows[name]["client_selected_experts"].items():
        budget = sims[name].budgets[int(cid)].budget
        for layer_counts in counts:
            assert all(c <= steps for c in layer_counts)
            assert sum(layer_counts) <= budget * steps, (name, cid)
        trained = np.array(rows[name]["client_trained"][cid])  # (L, E)
        if name in ("flex-moe", "fedmoe", "fft-moe"):  # fixed subsets for the round
            assert (trained.sum(axis=1) <= budget).all()


class _Routing:
    """Routing of a 4-token batch that reached every one of 4 experts."""

    topk_idx = torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0]])  # (T, k)
    token_mask = torch.ones(4, dtype=torch.bool)  # (T,)


def _draws(method, mm, seed, round_idx=1, n=12):
    method.seed = seed
    plan = method.plan(mm, ClientInfo(0, 1, 10, "phone-flagship"), round_idx)
    draws = [plan.selector(0, _Routing) for _ in range(n)]  # per-batch selectors answer with (E,) device masks
    return [tuple(e for e, c in enumerate(d.tolist()) if c) for d in draws]


def test_random_is_reproducible_and_seeded(tmp_path):
    a = _sim(tmp_path / "a", "random").run()[-1]["client_selected_experts"]
    b = _sim(tmp_path / "b", "random").run()[-1]["client_selected_experts"]
    assert a == b
    sim = _sim(tmp_path / "c", "random")
    m = make_method(sim.cfg.method)
    first = _draws(m, sim.mm, seed=0)
    assert all(len(d) == 1 for d in first)  # budget 1
    assert first == _draws(m, sim.mm, seed=0)  # same seed, same draws
    assert first != _draws(m, sim.mm, seed=1)  # another seed, other draws
    assert len(set(first)) > 1  # not a fixed choice


@pytest.mark.parametrize("name", ["fedmoe", "hfedmoe-restrict", "fft-moe"])
def test_restricted_routing_stays_inside_the_subset(tmp_path, name):
    sim = _sim(tmp_path, name, ["federation.rounds=2"])
    last = sim.run()[-1]
    full_bytes = sum(t.numel() * t.element_size() for t in sim.mm.model.state_dict().values())
    if name in ("fedmoe", "fft-moe"):  # the unrestricted profiling pass runs every expert: the whole model
        assert last["download_bytes"] == full_bytes * len(last["sampled_clients"])
    else:  # memory-bounded: the dense part and the held experts only
        held_total = sum(len(h) for c in last["sampled_clients"] for h in sim.method.round_held[c])
        expert = sum(t.numel() * t.element_size() for t in sim.mm.get_expert(0, 0).values())
        missing = len(last["sampled_clients"]) * sim.mm.num_layers * sim.mm.num_experts - held_total
        assert last["download_bytes"] == full_bytes * len(last["sampled_clients"]) - missing * expert
        assert missing > 0
    for cid, layers in last["client_usage"].items():
        held = sim.method.round_held[int(cid)]  # the sub-MoE of round 2
        for layer, usage in enumerate(layers):
            assert len(held[layer]) >= sim.mm.top_k
            assert all(u == 0 for e, u in enumerate(usage) if e not in held[layer]), (cid, layer)
            trained = {e for e, t in enumerate(last["client_trained"][cid][layer]) if t}
            assert trained <= set(held[layer])


def test_restricted_method_state_roundtrips(tmp_path):
    sim = _sim(tmp_path, "hfedmoe-restrict")  # server-side state: each client's uploaded importance
    sim.run()
    state = sim.method.state_dict()
    fresh = make_method(sim.cfg.method)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state and set(state["client_scores"]) == {"0", "1", "2", "3"}


def test_assign_experts_hand_checked_case():
    # k = (1, 1, 1) over 3 experts: loads exactly 1, so the answer is a permutation. Totals:
    # (0,1,2) 1.0, (0,2,1) 2.1, (1,0,2) 1.0, (1,2,0) 1.7, (2,0,1) 1.3, (2,1,0) 0.9 -> (0,2,1).
    fitness = np.array([[0.9, 0.1, 0.0],
                        [0.8, 0.0, 0.7],
                        [0.9, 0.5, 0.1]])
    got = assign_experts(fitness, [1, 1, 1])
    assert got.tolist() == [[True, False, False], [False, False, True], [False, True, False]]
    # k = (2, 1, 1) over 2 experts: each expert exactly twice; client 0 holds both, clients 1 and 2
    # split: 0.9 + 0.2 = 1.1 beats 0.1 + 0.8 = 0.9, although both prefer expert 0.
    got = assign_experts(np.array([[0.5, 0.5], [0.9, 0.1], [0.8, 0.2]]), [2, 1, 1])
    assert got.tolist() == [[True, True], [True, False], [False, True]]


def test_assign_experts_respects_counts_and_load_bounds():
    rng = np.random.default_rng(0)
    for C, E in ((4, 8), (5, 3), (7, 6)):
        k = rng.integers(1, E + 1, size=C)
        fitness = rng.random((C, E))
        got = assign_experts(fitness, k)
        assert (got.sum(axis=1) == k).all()
        total = int(k.sum())
        loads = got.sum(axis=0)
        assert loads.min() >= total // E and loads.max() <= -(-total // E)
    with pytest.raises(ValueError, match="num_assigned"):
        assign_experts(np.ones((2, 3)), [1, 4])


def test_unknown_method_is_a_one_line_error():
    with pytest.raises(HFedMoEError, match="method.name"):
        load_config(TINY, ["method.name=nope"])


def test_centralized_trains_everything_whatever_the_clients_budgets(tmp_path):
    """The pooled client is no device: with typed budgets of 1 expert per layer its update (every
    expert, every step) must not be held to a client's budget by the round guard."""
    rows = _sim(tmp_path, "centralized", ["clients.fixed_budgets=[1]"]).run()
    assert rows[-1]["rejected_clients"] == {}
    assert rows[-1]["test_loss"] != rows[0]["test_loss"]  # the global model did change
    trained = np.array(rows[-1]["client_trained"]["0"])  # (L, E)
    assert trained.sum() > trained.shape[0]  # more than one expert per layer
