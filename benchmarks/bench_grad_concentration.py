"""How much a choice of experts could matter, to first order, at the start of federation.

For each client's first batches of a run's starting model (after the router and head warm-ups of
its config), one backward through every routed expert gives the per-expert gradients g_e. The
loss decrease of an SGD step on expert e is lr * ||g_e||^2 to first order, so per layer this
prints the share of sum_e ||g_e||^2 held by the oracle's b experts (largest ||g_e||) against the
share b random routed experts hold in expectation (b / routed). A ratio near 1 means no choice
can matter; a large ratio means the gradient-norm oracle should beat random under SGD.

    python benchmarks/bench_grad_concentration.py --bench configs/bench-trec16.toml [--set key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from hfedmoe.bench.spec import load_bench_config, run_config
from hfedmoe.client.state import grad_norms
from hfedmoe.core.selection import routed_experts
from hfedmoe.data.batches import iter_batches
from hfedmoe.engines.simulation import Simulation


def concentration(sim: Simulation, batches_per_client: int, budgets: tuple[int, ...]) -> dict[int, tuple[float, float]]:
    """{b: (oracle share, random share)}, means over (client, batch, layer)."""
    mm, fed = sim.mm, sim.fed
    L, E = mm.num_layers, mm.num_experts
    leaves = mm.expert_leaves()
    model = mm.model
    model.train()
    shares: dict[int, list[tuple[float, float]]] = {b: [] for b in budgets}
    for c in fed.clients:
        batches = iter_batches(fed.tokens, c.train_idx, sim.cfg.train.batch_size, shuffle=True,
                               rng=np.random.default_rng(0))
        for k, batch in enumerate(batches):
            if k >= batches_per_client:
                break
            with mm.capture_routing(batch["attention_mask"]) as cap, mm.train_only([None] * L):
                model(**batch).loss.backward()
            g2 = grad_norms(leaves, L, E).double() ** 2  # (L, E)
            model.zero_grad(set_to_none=True)
            for layer in range(L):
                r = cap.layer(layer)
                routed = routed_experts(r.topk_idx, r.token_mask, E).cpu()  # (E,)
                v = g2[layer][routed]  # (routed,)
                for b in budgets:
                    if b < int(routed.sum()):
                        shares[b].append((float(v.topk(b).values.sum() / v.sum()), b / int(routed.sum())))
    return {b: tuple(np.mean(s, axis=0)) for b, s in shares.items() if s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="a bench file: its base config and common overrides")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--batches", type=int, default=3, help="batches per client")
    ap.add_argument("--budgets", default="1,2,4")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bench = load_bench_config(args.bench, extra_sets=args.set)
    cfg = run_config(bench, bench.datasets[0], "random", bench.seeds[0])
    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(cfg, tmp)
        result = concentration(sim, args.batches, tuple(int(b) for b in args.budgets.split(",")))
    print(f"{len(sim.fed.clients)} clients x {args.batches} batches x {sim.mm.num_layers} layers, "
          f"{sim.mm.num_experts} experts, top-{sim.mm.top_k}")
    for b, (oracle, rand) in result.items():
        print(f"budget {b}: the oracle's experts hold {oracle:.3f} of sum ||g_e||^2, random routed experts "
              f"{rand:.3f} in expectation: ratio {oracle / rand:.2f}")


if __name__ == "__main__":
    main()
