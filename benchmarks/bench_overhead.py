"""HFedMoE's own overhead, measured in one process against the work it sits in:

- ``ib_scores`` + ``select_experts`` for one batch (T = 16 x 128, E = 8, 6 layers) as a fraction of
  the default model's training step (2 of 8 experts trainable, same batch shape);
- one round's aggregation (experts + routers, 10 clients) as a fraction of one client's local epoch
  (steps per epoch of the default preset's mean client x the measured step time).

All timings use 1 torch thread (on a shared 2-core box, 2-thread timings of small ops are noise).

    python benchmarks/bench_overhead.py
"""

from __future__ import annotations

import math

import torch
from bench_core import time_aggregation, time_selection
from bench_train_step import TrainStepBench

from hfedmoe.config import load_config
from hfedmoe.federation import build_federation
from hfedmoe.assets.models import load_minilm_tokenizer


def main() -> None:
    torch.set_num_threads(1)
    bench = TrainStepBench(budget=2)
    step_s = bench.time_steps(repeats=5)["budget"]
    sel_s = time_selection(num_threads=1)
    agg_s = time_aggregation(num_threads=1)
    cfg = load_config("configs/default.toml")
    fed = build_federation(cfg, load_minilm_tokenizer())
    mean_client = sum(len(c.train_idx) for c in fed.clients) / len(fed.clients)
    epoch_s = math.ceil(mean_client / 16) * step_s
    print(f"training step (16 x 128, 2/8 experts trainable, 1 thread): {step_s * 1e3:.1f} ms")
    print(f"ib_scores + select_experts, 6 layers:                       {sel_s * 1e3:.2f} ms "
          f"= {100 * sel_s / step_s:.2f}% of a step (goal < 2%)")
    print(f"local epoch of the mean default client ({mean_client:.0f} examples): {epoch_s:.1f} s")
    print(f"aggregation of one round, 10 clients:                       {agg_s * 1e3:.1f} ms "
          f"= {100 * agg_s / epoch_s:.3f}% of a local epoch")


if __name__ == "__main__":
    main()
