"""How much of a client's routing the experts it trained carry: for each method of a bench output,
the mean usage share (Eq. 16, the client's router probability mass) of the experts it selected,
per (client, layer, batch) pick, against the share of the client's most-used expert and the
uniform share 1/E; and how many clients trained the same expert in a round.

    python benchmarks/pick_usage.py runs/bench-lm-switch-scarce [DATASET]

Meaningful for the methods that pick per batch (hfedmoe and its ablations, flux-freq, random,
oracle); the others' usage rows are on another scale. Reads each run's metrics.jsonl (hfedmoe.report.metrics.read_metrics) (client_selected_experts: per client, per layer, how many batches
picked each expert; client_usage: per client, per layer, the usage share of each expert).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from hfedmoe.report.metrics import read_metrics


def pick_shares(rows: list[dict[str, Any]]) -> tuple[float, float, float, float]:
    """(mean usage share of the picked experts, mean share of the most-used expert, 1/E,
    fraction of picks that are the most-used expert) over every round, client and layer."""
    picked, top, hits, n, num_experts = 0.0, 0.0, 0.0, 0.0, 1
    for row in rows:
        sel, use = row.get("client_selected_experts") or {}, row.get("client_usage") or {}
        for c, layers in sel.items():
            for s, u in zip(np.asarray(layers, float), np.asarray(use[c], float)):  # (E,), (E,)
                if s.sum() == 0:
                    continue
                num_experts = len(u)
                picked += float((s * u).sum())
                top += float(s.sum() * u.max())
                hits += float(s[u == u.max()].sum())
                n += float(s.sum())
    if n == 0:  # no selection (fedavg-fit, centralized, ...)
        return (float("nan"),) * 4
    return picked / n, top / n, 1.0 / num_experts, hits / n


def overlap(rows: list[dict[str, Any]]) -> tuple[float, float, float]:
    """(mean number of clients that trained each trained expert, distinct experts trained per
    layer, distinct experts one client trained per layer) per round, from client_trained (per
    client, per layer, 1 = trained that round)."""
    per_expert, distinct, own = [], [], []
    for row in rows:
        trained = row.get("client_trained") or {}
        if not trained:
            continue
        t = np.asarray([trained[c] for c in sorted(trained, key=int)], float)  # (C, L, E)
        counts = t.sum(axis=0)  # (L, E): clients per expert
        if counts.any():
            per_expert.append(counts[counts > 0].mean())
        distinct.append((counts > 0).sum(axis=1).mean())
        mine = t.sum(axis=2)  # (C, L): experts each client trained per layer
        own.append(mine[mine > 0].mean())
    if not per_expert:
        return (float("nan"),) * 3
    return float(np.mean(per_expert)), float(np.mean(distinct)), float(np.mean(own))


def main(out: str, dataset: str | None = None) -> None:
    root = Path(out) / "runs"
    for ds in sorted(p for p in root.iterdir() if dataset in (None, p.name)):
        print(f"{ds.name}: usage share of the trained expert (mean over picks; seeds pooled)")
        print("| method | picked expert's share | most-used expert's share | 1/E | picks = most used "
              "| clients per trained expert | experts trained per layer | per client and layer |")
        print("|---|---|---|---|---|---|---|---|")
        for method in sorted(p for p in ds.iterdir() if p.is_dir()):
            runs = [pick_shares(rows) + overlap(rows)  # each run's rows read once
                    for rows in map(read_metrics, sorted(method.glob("seed*/metrics.jsonl")))]
            runs = [r for r in runs if r[0] == r[0]]
            if not runs:
                continue
            p, t, u, h, o, d, c = np.mean(runs, axis=0)
            print(f"| {method.name} | {p:.3f} | {t:.3f} | {u:.3f} | {h:.1%} | {o:.2f} | {d:.1f} | {c:.2f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
