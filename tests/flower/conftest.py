from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.toml"
# A few seconds per run: tiny model, 160 examples, 2 local steps per client.
FAST = ["data.max_examples=160", "train.local_steps=2", "train.local_epochs=1", "data.max_length=24",
        "federation.rounds=2"]


@pytest.fixture(scope="module")
def trained():
    """A real ClientUpdate (hfedmoe, budget 1 of 4 experts per layer) and the run it came from."""
    from hfedmoe.config import load_config
    from hfedmoe.engines.simulation import Simulation

    cfg = load_config(TINY, FAST + ["clients.fixed_budgets=[1]"])
    sim = Simulation(cfg, Path("/nonexistent-unused"))
    _, training, _, _ = sim.plan_round(1)
    updates, _, _ = sim.train_clients(1, training[:2])
    return sim, updates
