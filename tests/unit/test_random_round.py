"""random-round: one set of experts per client and round within the budget, kept for every local
step; seeded (repeatable, different across rounds, clients and run seeds). ``random`` redraws."""

from __future__ import annotations

import numpy as np
import torch

from hfedmoe.client import TrainSettings, train_client
from hfedmoe.data.batches import TokenizedTexts
from hfedmoe.methods import ClientInfo
from hfedmoe.methods.frequency import RandomExperts, RandomRound
from hfedmoe.moe import wrap
from hfedmoe.moe.build import tiny_model


def _method(seed=3, scope="layer"):
    m = RandomRound(budget_scope=scope)
    m.seed = seed
    return m


def _sets(method, mm, budget, rounds=range(1, 7), clients=range(3)):
    return {(r, c): method.plan(mm, ClientInfo(c, budget, 10, "x"), r).static_subsets for r in rounds for c in clients}


def test_set_is_within_budget_seeded_and_varies_across_rounds_and_clients():
    mm = wrap(tiny_model("mixtral", num_local_experts=7))
    E, L = mm.num_experts, mm.num_layers
    sets = _sets(_method(), mm, budget=2)
    for subsets in sets.values():
        assert len(subsets) == L and all(len(s) == 2 and len(set(s)) == 2 and 0 <= min(s) and max(s) < E
                                         for s in subsets)
    assert sets == _sets(_method(), mm, budget=2)  # deterministic given the seed
    assert sets != _sets(_method(seed=4), mm, budget=2)  # another run seed, other draws
    assert len({str(sets[(r, 0)]) for r in range(1, 7)}) > 1  # rounds differ
    assert len({str(sets[(1, c)]) for c in range(3)}) > 1  # clients differ
    # a budget above the layer size trains every expert; model scope: `budget` pairs in the model
    assert all(s == list(range(E)) for s in _method().plan(mm, ClientInfo(0, 9, 10, "x"), 1).static_subsets)
    for subsets in _sets(_method(scope="model"), mm, budget=3).values():
        assert sum(len(s) for s in subsets) == 3


def _data(n=12):
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(3, 99, (9,), generator=gen).tolist() for _ in range(n)]
    return TokenizedTexts(rows, np.zeros(n, dtype=np.int64), pad_id=0, prompt_lengths=[1] * n)


def test_the_set_is_kept_for_every_local_step_while_random_redraws():
    """4 steps of 4 sequences of 9 tokens: top-2 of 5 experts reaches every expert in every batch, so
    a kept set is trained in all 4 steps and nothing else is; per-batch random spreads its picks."""
    settings = TrainSettings(local_steps=4, batch_size=4, lr=1e-2, trainable=("experts",))
    mm = wrap(tiny_model("mixtral"))
    client = ClientInfo(0, 1, 12, "x")
    method = _method()
    chosen = method.plan(mm, client, 2).static_subsets
    upd = train_client(mm, 0, _data(), np.arange(12), method.plan(mm, client, 2), settings, seed=7)
    for layer, subset in enumerate(chosen):
        expected = torch.zeros(mm.num_experts, dtype=torch.long)
        expected[subset] = 4
        assert torch.equal(upd.selected_counts[layer], expected)
    per_batch = RandomExperts()
    per_batch.seed = 3
    mm2 = wrap(tiny_model("mixtral"))
    upd2 = train_client(mm2, 0, _data(), np.arange(12), per_batch.plan(mm2, client, 2), settings, seed=7)
    assert int(upd2.selected_counts.sum()) == 4 * mm.num_layers  # one per layer and step, within budget
    assert (upd2.selected_counts.max(dim=1).values < 4).any()  # but not the same expert every step
