"""A client-round with ``train.dispatch = "static"`` trains what the per-layer loop trains, for the
per-batch selectors (budget slots), a fixed plan (host subsets) and the oracle (every expert):
the same experts stepped, the same usage and selection counts, weights equal within float32
rounding (the tiny MoEfied BERT's experts have 36-float rows and a bias: grouped_mm is exact on
them, the bias gradient is summed in another order, tests/unit/test_static_dispatch.py)."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hfedmoe.client.train import train_client
from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation

from .conftest import FAST, TINY


@pytest.mark.parametrize("method", ["hfedmoe", "random", "fedmoe", "oracle"])
def test_a_static_client_round_trains_what_the_loop_trains(method):
    sim = Simulation(load_config(TINY, FAST + ["federation.rounds=1", f"method.name={method}"]),
                     Path("/nonexistent-unused"))
    _, training, _, _ = sim.plan_round(1)
    cinfo = training[0]
    client = sim.fed.clients[cinfo.client_id]
    start = {k: v.clone() for k, v in sim.mm.model.state_dict().items()}
    out = {}
    for dispatch in ("loop", "static"):
        sim.mm.model.load_state_dict(start)
        update = train_client(sim.mm, cinfo.client_id, sim.fed.tokens, client.train_idx, sim.make_plan(cinfo, 1),
                              replace(sim.settings, local_steps=3, dispatch=dispatch), seed=7)
        out[dispatch] = (update, {k: v.clone() for k, v in sim.mm.model.state_dict().items()})
    (loop, w_loop), (static, w_static) = out["loop"], out["static"]
    assert static.trained.any() and torch.equal(static.trained, loop.trained)
    assert torch.equal(static.selected_counts, loop.selected_counts)
    assert torch.allclose(static.usage, loop.usage, atol=1e-6)
    assert static.experts.keys() == loop.experts.keys()
    for k in w_loop:
        assert torch.allclose(w_static[k], w_loop[k], rtol=1e-5, atol=1e-6), k
    untrained = [(l, e) for l in range(sim.mm.num_layers) for e in range(sim.mm.num_experts) if not loop.trained[l, e]]
    assert untrained or method == "oracle"
    for l, e in untrained:  # experts no step trained: bit for bit the global weights
        sim.mm.model.load_state_dict(w_static)
        after = sim.mm.get_expert(l, e)
        sim.mm.model.load_state_dict(start)
        assert all(torch.equal(after[n], t) for n, t in sim.mm.get_expert(l, e).items()), (l, e)
