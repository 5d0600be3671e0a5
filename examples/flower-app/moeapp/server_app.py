"""moeapp: the ServerApp. The strategy is used exactly like Flower's FedAvg."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from hfedmoe.engines.flower.moe_strategy import HFedMoE
from moeapp.task import central_evaluate_fn, load_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    seed = int(rc.get("seed", 0))
    mm = load_model(seed)
    strategy = HFedMoE(
        mm,
        method=str(rc.get("method", "hfedmoe")),
        budget=int(rc.get("budget", 2)),
        fraction_train=float(rc.get("fraction-train", 1.0)),
        fraction_evaluate=float(rc.get("fraction-evaluate", 1.0)),
        min_available_nodes=int(rc.get("min-available-nodes", 2)),
        seed=seed,
    )
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord(mm.model.state_dict()),
        num_rounds=int(rc.get("num-server-rounds", 3)),
        timeout=float(rc.get("round-timeout", 600)),
        evaluate_fn=central_evaluate_fn(load_model(seed), int(rc.get("max-examples", 400)), seed=seed),
    )
    if result.arrays is not None:
        torch.save(result.arrays.to_torch_state_dict(), str(rc.get("save-to", "final_model.pt")))
