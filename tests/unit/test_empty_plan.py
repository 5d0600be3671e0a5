"""A plan that can give no tensor a gradient (fedavg-fit's weak client when only experts train)
returns an empty update without a forward or backward, and leaves the model bit for bit as it was;
one fixed non-empty layer or one trainable dense part still trains."""

from __future__ import annotations

import numpy as np
import torch

from hfedmoe.client.train import TrainPlan, TrainSettings, train_client
from hfedmoe.data.batches import TokenizedTexts
from hfedmoe.moe import wrap
from hfedmoe.moe.build import tiny_model


def _data(n: int = 12) -> TokenizedTexts:
    """Causal-LM examples (labels are the tokens): the tiny Mixtral has no dense part inside "experts"
    (MoEfied MiniLM's shared output bias would be one)."""
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, 99, size=int(rng.integers(3, 9))).tolist() for _ in range(n)]
    return TokenizedTexts(ids, np.zeros(n, dtype=np.int64), 0, prompt_lengths=[0] * n)


def _state(mm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in mm.model.state_dict().items()}


def test_an_empty_fixed_plan_with_only_experts_trainable_trains_nothing_and_runs_no_forward():
    mm = wrap(tiny_model("mixtral", seed=0))
    before = _state(mm)
    calls = []
    hook = mm.model.register_forward_pre_hook(lambda *a: calls.append(1))
    plan = TrainPlan(static_subsets=[[] for _ in range(mm.num_layers)])
    upd = train_client(mm, 0, _data(), np.arange(12), plan,
                       TrainSettings(local_steps=3, batch_size=4, trainable=("experts",)), seed=0)
    hook.remove()
    assert calls == []  # no forward was paid for
    assert upd.experts == {} and upd.routers == {} and upd.dense == {}
    assert upd.metrics["steps"] == 0.0 and not bool(upd.trained.any()) and upd.num_examples == 12
    after = mm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_same_plan_with_one_expert_or_a_dense_part_still_trains():
    settings = TrainSettings(local_steps=2, batch_size=4, lr=1e-2, trainable=("experts",))
    mm = wrap(tiny_model("mixtral", seed=0))
    one = [[] for _ in range(mm.num_layers)]
    one[0] = list(range(mm.num_experts))
    upd = train_client(mm, 0, _data(), np.arange(12), TrainPlan(static_subsets=one), settings, seed=0)
    assert upd.metrics["steps"] == 2.0 and bool(upd.trained[0].any()) and not bool(upd.trained[1:].any())

    mm2 = wrap(tiny_model("mixtral", seed=0))
    settings.trainable = ("experts", "embeddings")
    upd2 = train_client(mm2, 0, _data(), np.arange(12),
                        TrainPlan(static_subsets=[[] for _ in range(mm2.num_layers)]), settings, seed=0)
    assert upd2.metrics["steps"] == 2.0 and upd2.dense and not bool(upd2.trained.any())


def test_a_fedavg_fit_run_whose_clients_cannot_fit_ends_unchanged_with_no_failure_or_rejection(tmp_path):
    from pathlib import Path

    from hfedmoe.config import load_config
    from hfedmoe.engines.simulation import Simulation

    cfg = load_config(Path(__file__).parents[2] / "configs" / "tiny-lm.toml",
                      ["method.name=fedavg-fit", 'train.trainable=["experts"]', "federation.rounds=1",
                       "train.local_steps=2", "data.max_examples=160", "clients.fixed_budgets=[1, 2]"])
    sim = Simulation(cfg, tmp_path / "fit")
    assert all(b.budget < sim.mm.num_experts for b in sim.budgets)  # nobody can hold every expert
    before = {k: v.clone() for k, v in sim.mm.model.state_dict().items()}
    row = sim.run()[-1]
    assert row["failed_clients"] == [] and row["rejected_clients"] == {}
    after = sim.mm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
