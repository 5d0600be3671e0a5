"""HFedMoE's own overhead per training step, measured in one run (one thread):

A/B on the same real dynamic-padded batches of the default model, budget 2 of 8 per layer:
- "hfedmoe": the selector scores the routed experts (Eq. 14) and picks the budget inside the forward;
- "static": the same number of experts fixed in advance (no scoring, no selection).
The ratio minus one is the overhead of importance scoring + selection (goal < 2%). Also the
selection alone on the captured routing of those batches, as a share of the step.

    python benchmarks/bench_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from _bench import alternate, one_thread
from bench_train_step import TrainStepBench

from hfedmoe.core.importance import ib_scores
from hfedmoe.core.selection import select_experts
from hfedmoe.methods.base import routed_mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    one_thread()
    bench = TrainStepBench(budget=2)
    mm, E, budget = bench.mm, bench.mm.num_experts, 2

    def selector(layer, routing):
        return select_experts(ib_scores(routing.gate_probs, routing.token_mask, 0.5, 0.1),
                              routed_mask(routing, E), budget).tolist()

    # the routing of each batch (eval mode), and the experts the selector picks from it: the
    # "static" mode trains exactly those, fixed in advance, so both modes do the same work
    routings = []
    mm.model.eval()
    with torch.no_grad():
        for b in bench.batches:
            with mm.capture_routing(b["attention_mask"]) as cap:
                mm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            routings.append([cap.layer(layer) for layer in range(mm.num_layers)])
    mm.model.train()
    bench.modes["hfedmoe"] = selector
    bench.modes["static"] = tuple([selector(layer, r) for layer, r in enumerate(layers)] for layers in routings)
    for m in ("hfedmoe", "static"):
        bench.opts[m] = bench.opts["budget"]
        bench._i[m] = 0
        bench.step_flops[m] = 0.0
    n = len(bench.batches)
    med = alternate({m: (lambda m=m: [bench.step(m) for _ in range(n)]) for m in ("hfedmoe", "static")},
                    args.repeats)
    t0 = time.perf_counter()
    for _ in range(5):
        for layers in routings:
            for layer, r in enumerate(layers):
                selector(layer, r)
    sel = (time.perf_counter() - t0) / 5
    print(f"{bench.description}; {n} real batches of 16 (dynamic padding); 1 thread; {args.repeats} alternating repeats")
    print(f"step with HFedMoE selection vs the same experts fixed in advance: ratio "
          f"{med['hfedmoe'] / med['static']:.3f} (overhead {100 * (med['hfedmoe'] / med['static'] - 1):+.1f}%, "
          f"goal < 2%; the two modes differ only where train-mode dropout changes the routing)")
    print(f"ib_scores + select_experts alone: {100 * sel / med['static']:.2f}% of the steps' time")


if __name__ == "__main__":
    main()
