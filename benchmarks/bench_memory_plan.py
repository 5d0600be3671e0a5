"""Predicted (``hfedmoe plan``) vs measured peak memory of a one-round in-process run, per
preset, each in a fresh process: the prediction is made after the model and the clients are built
(:func:`hfedmoe.federation.memory.plan_memory`), the measurement is the process's peak resident
memory (``ru_maxrss``) after the round. ``--predict-only PRESET`` prints the prediction without
training (the LLM preset is too heavy to run here).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_memory_plan.py [--presets tiny default]
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_memory_plan.py --predict-only llm
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

GIB = 2**30
# one short round per preset: the peak of a step does not depend on the number of steps
ROUND = ["federation.rounds=1", "train.local_steps=4"]


def child(preset: str, train: bool, sets: list[str]) -> None:
    import resource
    import tempfile

    import torch

    from hfedmoe.config import load_config
    from hfedmoe.engines.simulation import Simulation
    from hfedmoe.federation.memory import plan_memory

    torch.set_num_threads(1)
    cfg = load_config(f"configs/{preset}.toml", ROUND + sets)
    with tempfile.TemporaryDirectory() as d:
        sim = Simulation(cfg, d)
        plan = plan_memory(cfg, sim.mm, sim.budgets, sim.device.type)
        if train:
            sim.run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"preset": preset, "predicted": plan.process_peak, "client_max": max(plan.client_bytes),
                      "engine": plan.engine_bytes, "runtime": plan.runtime_bytes, "weights": plan.weights_bytes,
                      "measured": peak if train else None}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="*", default=["tiny", "default"])
    ap.add_argument("--predict-only", nargs="*", default=[])
    ap.add_argument("--set", nargs="*", default=[], dest="sets")
    ap.add_argument("--child", default=None)
    ap.add_argument("--train", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.train, args.sets)
        return
    jobs = [(p, True) for p in args.presets] + [(p, False) for p in args.predict_only]
    for preset, train in jobs:
        cmd = [sys.executable, __file__, "--child", preset, *(["--train"] if train else []), "--set", *args.sets]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        line = (f"{preset}: predicted peak {r['predicted'] / GIB:.2f} GB (largest client step "
                f"{r['client_max'] / GIB:.2f}, engine {r['engine'] / GIB:.2f}, runtime {r['runtime'] / GIB:.2f}, "
                f"weights {r['weights'] / GIB:.2f})")
        if r["measured"] is not None:
            line += f"; measured peak RSS {r['measured'] / GIB:.2f} GB (measured/predicted {r['measured'] / r['predicted']:.2f})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
