"""Share of a run's wall time spent evaluating (test set every round, client validation as
configured), on a reduced default demo, in one run.

Reduced default demo: configs/default.toml with ``data.max_examples=1500``, 4 rounds (the full
demo takes ~8 minutes here), so the evaluation cadence (every ``federation.eval_every`` rounds,
and round 0 and the last) weighs as in the 8-round demo. Prints the run's wall time and the share of it inside
``Simulation.evaluate_global`` (goal <= 10%).

    python benchmarks/bench_eval.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation

REDUCED = ["data.max_examples=1500", "federation.rounds=4"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("configs/default.toml", REDUCED + args.set)
    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(cfg, tmp)
        spent = [0.0]
        calls = [0]
        original = sim.evaluate_global

        def timed(*a, **k):
            calls[0] += 1
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t0

        sim.evaluate_global = timed
        t0 = time.perf_counter()
        rows = sim.run()
        wall = time.perf_counter() - t0
    print(f"reduced default demo ({', '.join(REDUCED + args.set)}), 1 thread: wall {wall:.0f} s, "
          f"evaluation ({calls[0]} times) {spent[0]:.0f} s = {100 * spent[0] / wall:.1f}% of the run (goal <= 10%); "
          f"final test accuracy {100 * rows[-1]['test_accuracy']:.1f}%")


if __name__ == "__main__":
    main()
