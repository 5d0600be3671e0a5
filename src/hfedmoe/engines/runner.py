"""Pick the engine a run config names (``engine.name``): the in-process Simulation (default) or
Flower's Simulation Engine. The in-process path never imports flwr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hfedmoe.config import RunConfig


def make_run(cfg: RunConfig, out_dir: Path, **kw: Any) -> Any:
    """The run object of ``cfg``'s engine: a Simulation, or a FlowerRun for flower-sim."""
    if cfg.engine.name == "flower-sim":
        from hfedmoe.engines.flower.sim import quiet_offline_env

        quiet_offline_env()  # before flwr is imported
        from hfedmoe.engines.flower.serverapp import FlowerRun

        return FlowerRun(cfg, out_dir, **kw)
    from hfedmoe.engines.simulation import Simulation

    return Simulation(cfg, out_dir, **kw)


def drive(run: Any, rounds: int | None = None) -> None:
    """Run ``run`` to ``rounds`` (default: the config's) on its engine."""
    if run.cfg.engine.name == "flower-sim":
        if rounds is not None:
            run.cfg.federation.rounds = rounds
        from hfedmoe.engines.flower.sim import run_flower_simulation

        run_flower_simulation(run)
    else:
        run.run(rounds)
