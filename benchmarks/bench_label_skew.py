"""Label-skew evidence (docs/label-skew.md): configs/user-data.toml's settings on public datasets,
Dirichlet 0.5 over 8 clients, one line of JSON per run (final / best test accuracy, macro-F1, the
largest predicted-class share, majority rate, seconds).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_label_skew.py vader 0 ce \\
        data.max_examples=3000 federation.rounds=4 [--set-like overrides ...] [--out DIR]

The run goes into ``--out`` (default ``runs/label-skew/<dataset>-<seed>-<name>``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation

ROOT = Path(__file__).resolve().parents[1]
BASE = ["data.path=", "data.partition=dirichlet", "data.num_clients=8", "data.alpha=0.5", "data.min_client_size=10",
        "runtime.threads=1", "federation.checkpoint_every=100", "federation.client_eval_every=100"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("seed", type=int)
    ap.add_argument("name", help="a label for this setting")
    ap.add_argument("overrides", nargs="*", help="key=value, as hfedmoe run --set")
    ap.add_argument("--config", default=str(ROOT / "configs" / "user-data.toml"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    sets = [f"data.dataset={args.dataset}", f"seed={args.seed}", *BASE, *args.overrides]
    cfg = load_config(args.config, sets)
    out = args.out or ROOT / "runs" / "label-skew" / f"{args.dataset}-{args.seed}-{args.name}"
    t0 = time.perf_counter()
    sim = Simulation(cfg, out)
    rows = sim.run()
    evaluated = [r for r in rows if r.get("test_accuracy") is not None]
    acc = [r["test_accuracy"] for r in evaluated]
    print(json.dumps({"ds": args.dataset, "seed": args.seed, "name": args.name, "overrides": args.overrides,
                      "acc": acc, "f1": [r.get("test_macro_f1") for r in evaluated],
                      "max_pred_share": max(evaluated[-1].get("test_pred_share") or [0.0]),
                      "majority": sim.fed.majority_rate(), "s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
