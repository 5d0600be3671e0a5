"""Step time of ``train.dispatch = "static"`` (slots + grouped_mm, one device read per step) over
``"loop"`` (per-expert loop, one read per MoE layer) on the CPU: one client-round of HFedMoE per
call, both dispatches on the same model and data from the same weights, alternating in one
process, one torch thread, medians. Presets: the tiny MoEfied BERT at several (layers, experts)
the tiny causal LM (Mixtral-style fused experts) and the default MiniLM-MoE (6 layers, 8 experts of
192 neurons, hidden 384). Also checks the two trained the same
experts (largest weight difference after the round).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_dispatch.py [--repeats 7] [--steps 4]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from _bench import alternate, one_thread

from hfedmoe.client.train import train_client
from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation

CASES = {  # name -> (config, extra settings)
    "tiny 2x4": ("configs/tiny.toml", ["model.tiny_layers=2", "model.num_experts=4"]),
    "tiny 4x8": ("configs/tiny.toml", ["model.tiny_layers=4", "model.num_experts=8"]),
    "tiny-lm 2x4": ("configs/tiny-lm.toml", ["data.max_length=24", "data.heldout_max_examples=4"]),
    "MiniLM-MoE 6x8": ("configs/default.toml", ["data.partition=natural"]),
}


def case(cfg_path: str, sets: list[str], steps: int, repeats: int) -> tuple[dict[str, float], float]:
    sim = Simulation(load_config(cfg_path, sets + ["data.max_examples=160", "federation.rounds=1",
                                                   "method.name=hfedmoe"]), Path("/nonexistent-unused"))
    _, training, _, _ = sim.plan_round(1)
    cinfo = training[0]
    client = sim.fed.clients[cinfo.client_id]
    start = {k: v.clone() for k, v in sim.mm.model.state_dict().items()}
    after = {}

    def run(dispatch: str):
        def go() -> None:
            sim.mm.model.load_state_dict(start)
            settings = replace(sim.settings, local_steps=steps, dispatch=dispatch)
            train_client(sim.mm, cinfo.client_id, sim.fed.tokens, client.train_idx, sim.make_plan(cinfo, 1),
                         settings, seed=7)
            after[dispatch] = {k: v.clone() for k, v in sim.mm.model.state_dict().items()}
        return go

    times = alternate({"loop": run("loop"), "static": run("static")}, repeats)
    diff = max(float((after["loop"][k].float() - after["static"][k].float()).abs().max()) for k in start)
    return times, diff


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    args = ap.parse_args()
    one_thread()
    print(f"| preset | loop ms/round | static ms/round | static / loop | max weight diff after {args.steps} steps |")
    print("|---|---|---|---|---|")
    for name in args.cases:
        times, diff = case(*CASES[name], args.steps, args.repeats)
        print(f"| {name} | {times['loop'] * 1e3:.1f} | {times['static'] * 1e3:.1f} | "
              f"{times['static'] / times['loop']:.3f} | {diff:.2e} |", flush=True)


if __name__ == "__main__":
    main()
