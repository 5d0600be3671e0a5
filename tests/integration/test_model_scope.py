"""``budget_scope = "model"``: one count of trainable experts over the whole model (method.md,
"Setting"), for every per-batch selector: HFedMoE, flux-freq, random and the oracle choose the
best (layer, expert) pairs across layers, not an even share per layer."""

import numpy as np
import pytest
import torch

from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation
from hfedmoe.methods._common import select_in_model

from .conftest import TINY

# tiny-moe: 2 layers x 4 experts, top-2. A typed budget of 1 per layer is 2 over the model; the old
# even share trained exactly 1 expert in each layer at every step.
STEPS, BUDGET = 6, 2
SETTINGS = ["data.max_examples=200", f"train.local_steps={STEPS}", "data.max_length=24", "federation.rounds=1",
            "method.budget_scope=model", "clients.fixed_budgets=[1]"]


def _numpy_select(scores: np.ndarray, routed: np.ndarray, budget: int) -> list[list[int]]:
    flat, ok = scores.reshape(-1), routed.reshape(-1)
    order = sorted((i for i in range(flat.size) if ok[i]), key=lambda i: (-flat[i], i))[:budget]
    E = scores.shape[1]
    return [sorted(i % E for i in order if i // E == layer) for layer in range(scores.shape[0])]


def test_select_in_model_matches_a_global_ranking():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.integers(0, 4, size=(3, 5)).astype(np.float32)  # ties on purpose
        routed = rng.random((3, 5)) < 0.7
        budget = int(rng.integers(0, 9))
        got = select_in_model(torch.from_numpy(scores), torch.from_numpy(routed), budget)
        assert [sorted(s) for s in got] == _numpy_select(scores, routed, budget)


@pytest.mark.parametrize("name", ["hfedmoe", "flux-freq", "random", "oracle"])
def test_model_scope_spends_the_whole_budget_across_layers(tmp_path, name):
    events = []
    sim = Simulation(load_config(TINY, SETTINGS + [f"method.name={name}"]), tmp_path / name,
                     on_event=lambda e: events.append(e) if e["kind"] == "step" else None)
    row = sim.run()[-1]
    assert row["rejected_clients"] == {} and set(row["client_budget"].values()) == {BUDGET}
    per_layer = []
    for cid, counts in row["client_selected_experts"].items():
        # every batch routes >= BUDGET (layer, expert) pairs, so each step trains exactly BUDGET
        assert int(np.sum(counts)) == BUDGET * STEPS, (cid, counts)
        per_layer += np.sum(counts, axis=1).tolist()  # (L,) selections per layer over the round
    assert any(n != STEPS for n in per_layer), per_layer  # some step put both experts in one layer
    live = [e["live_expert_state"] for e in events if "live_expert_state" in e]
    assert live and all(sum(s) <= BUDGET for s in live)  # the per-round memory bound, over the model
