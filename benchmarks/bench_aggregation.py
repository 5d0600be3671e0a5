"""Server aggregation of one round for 10 and 100 clients: the project's streaming aggregation
vs Flower's on the same arrays, measured in one run (alternating, medians, one thread).

Payload per client: every expert, router and the task head of a MiniLM-MoE-shaped model (6 layers,
8 experts, hidden 192, FFN 768; 1.8 M expert parameters, 7 MB), i.e. what a FedAvg client sends.

- ours: ``FedAvg().start_aggregation(mm)``, ``add`` each update, ``finish`` (writes the model);
  with every expert trained by every client this is plain FedAvg, the same maths as Flower's;
  also HFedMoE's (Eqs. 17-21) on the same updates;
- Flower: ``flwr.server.strategy.aggregate.aggregate`` (numpy, arrays in memory),
  ``aggregate_inplace`` (FitRes with serialised Parameters, as a Flower server receives them) and
  ``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords`` (Message API records).

    python benchmarks/bench_aggregation.py [--clients 10 100] [--repeats 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _bench import alternate, one_thread

from hfedmoe.client import ClientUpdate
from hfedmoe.methods import HFedMoE
from hfedmoe.methods.fedavg import FedAvg
from hfedmoe.moe import wrap
from hfedmoe.moe.build import tiny_model


def build(num_clients: int, seed: int = 0):
    mm = wrap(tiny_model("minilm_moe", seed=0, hidden_size=192, num_attention_heads=3, intermediate_size=768,
                         num_hidden_layers=6, num_experts=8))
    gen = torch.Generator().manual_seed(seed)
    L, E = mm.num_layers, mm.num_experts
    head = {n: p.detach() for n, p in mm.dense_named_parameters().items() if n.startswith("classifier")}
    updates = []
    for c in range(num_clients):
        experts = {(l, e): {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in mm.get_expert(l, e).items()}
                   for l in range(L) for e in range(E)}
        routers = {l: {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in mm.router_state(l).items()}
                   for l in range(L)}
        dense = {n: t + 0.01 * torch.randn(t.shape, generator=gen) for n, t in head.items()}
        usage = torch.softmax(torch.randn(L, E, generator=gen), dim=1)
        updates.append(ClientUpdate(c, int(torch.randint(20, 200, (1,), generator=gen)), experts, routers, dense,
                                    usage, torch.rand(L, E, generator=gen), torch.ones(L, E, dtype=torch.bool),
                                    torch.ones(L, E, dtype=torch.long)))
    return mm, updates


def as_ndarrays(u: ClientUpdate) -> list[np.ndarray]:
    arrays = [t.numpy() for d in u.experts.values() for t in d.values()]
    arrays += [t.numpy() for d in u.routers.values() for t in d.values()]
    return arrays + [t.numpy() for t in u.dense.values()]


def main() -> None:
    from flwr.common import (
        Array,
        ArrayRecord,
        Code,
        FitRes,
        MetricRecord,
        RecordDict,
        Status,
        ndarrays_to_parameters,
    )
    from flwr.server.strategy.aggregate import aggregate, aggregate_inplace
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    one_thread()
    for C in args.clients:
        mm, updates = build(C)
        nd = [(as_ndarrays(u), u.num_examples) for u in updates]
        fitres = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(a), n, {})) for a, n in nd]
        records = [RecordDict({"arrays": ArrayRecord({str(i): Array(x) for i, x in enumerate(a)}),
                               "metrics": MetricRecord({"num-examples": n})}) for a, n in nd]

        def ours(method):
            def run():  # (the model's values do not change what is computed: no reset needed)
                method.aggregate(mm, updates, 1)  # = start_aggregation, add each, finish
            return run

        med = alternate({
            "ours-fedavg": ours(FedAvg()),
            "ours-hfedmoe": ours(HFedMoE(tau=0.05)),
            "flwr-aggregate": lambda: aggregate(nd),
            "flwr-aggregate_inplace": lambda: aggregate_inplace(fitres),
            "flwr-aggregate_arrayrecords": lambda: aggregate_arrayrecords(records, "num-examples"),
        }, args.repeats)
        mb = sum(x.nbytes for x in nd[0][0]) / 2**20
        print(f"{C} clients x {mb:.1f} MB, 1 thread, median of {args.repeats}:")
        for k, v in med.items():
            print(f"  {k:<28} {v * 1e3:8.1f} ms")
        for k in ("flwr-aggregate", "flwr-aggregate_inplace", "flwr-aggregate_arrayrecords"):
            print(f"  ratio ours-fedavg / {k}: {med['ours-fedavg'] / med[k]:.2f} (goal <= 1.0); "
                  f"ours-hfedmoe / {k}: {med['ours-hfedmoe'] / med[k]:.2f}")


if __name__ == "__main__":
    main()
