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
    sampled, training, _, _ = sim.plan_round(1)
    kept = _Keep()
    sim.train_clients(1, training[:2], kept)
    return sim, kept.updates


class _Keep:
    """An aggregation that keeps the updates it receives (the engine streams and drops them)."""

    def __init__(self) -> None:
        self.updates = []

    def add(self, update) -> None:
        self.updates.append(update)


def marked(mark: str) -> list:
    """The processes (other than this one) whose environment has HFEDMOE_TEST_MARK = ``mark``: every
    process a run started inherits it, Flower's detached SuperLink and Ray's workers too."""
    import os

    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("HFEDMOE_TEST_MARK") == mark:
                found.append(p)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found
