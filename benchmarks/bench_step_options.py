"""Step-time ratios of two CPU options of local training, on the default model (MiniLM-MoE,
E = 8, top-2, HFedMoE selection with a budget of 2 per layer) and real VADER batches, one torch
thread, alternating A/B repeats in one process (medians):

- ``train.foreach``: AdamW over all trained tensors at once (foreach kernels) vs its per-tensor
  loop (the experts are ~100 per-expert leaf views);
- ``train.dropout = 0``: the checkpoint's hidden dropout (0.1) off vs on.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_step_options.py [--repeats 7] [--steps 3]
"""

from __future__ import annotations

import argparse

import numpy as np
from _bench import alternate, one_thread

from hfedmoe.client.train import TrainSettings, train_client
from hfedmoe.config import load_config
from hfedmoe.data.batches import TokenizedTexts
from hfedmoe.federation import build_model
from hfedmoe.federation.runtime import set_hidden_dropout
from hfedmoe.methods import HFedMoE
from hfedmoe.methods.base import ClientInfo
from hfedmoe.moe import wrap


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    one_thread()
    from hfedmoe.assets.datasets import load_vader
    from hfedmoe.assets.models import load_minilm_tokenizer
    from hfedmoe.data.batches import tokenize

    cfg = load_config("configs/default.toml")
    ds = load_vader()
    idx = np.random.default_rng(0).choice(len(ds.texts), size=16 * args.steps, replace=False)
    data: TokenizedTexts = tokenize(load_minilm_tokenizer(), [ds.texts[i] for i in idx],
                                    np.asarray(ds.labels)[idx], cfg.data.max_length)
    model, _, _ = build_model(cfg.model, ds.num_labels, 0)
    mm = wrap(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = HFedMoE().plan(mm, ClientInfo(0, 2, len(idx), "x"), 1)

    def step(foreach: bool, dropout: float):
        def run():
            model.load_state_dict(state)
            set_hidden_dropout(model, 0.1 if dropout < 0 else dropout)
            s = TrainSettings(local_steps=args.steps, batch_size=16, lr=1e-4, trainable=("experts", "routers", "head"),
                              foreach=foreach)
            train_client(mm, 0, data, np.arange(len(idx)), plan, s, seed=0)
        return run

    t = alternate({"foreach": step(True, -1), "loop": step(False, -1), "dropout0": step(True, 0.0)},
                  args.repeats)
    print(f"median seconds per {args.steps}-step client round: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))
    print(f"foreach / per-tensor loop step time: {t['foreach'] / t['loop']:.3f}")
    print(f"hidden dropout 0 / checkpoint's 0.1 step time: {t['dropout0'] / t['foreach']:.3f}")


if __name__ == "__main__":
    main()
