"""Trainable parameters and upload bytes per client-round: LoRA experts vs full expert fine-tuning.

Builds the preset's model (no training, no data), wraps it as a run does (``wrap_for_run``), and
prices a client that trained ``--budget`` experts per MoE layer through the real
``ClientUpdate.upload_bytes`` (expert tensors it would send, routers and dense parts per the
preset's ``train.trainable``, the (L, E) statistics). Usage:

    PYTHONPATH=src python benchmarks/bench_lora_sizes.py --config configs/tiny-lm.toml --r 8
    PYTHONPATH=src python benchmarks/bench_lora_sizes.py --config configs/llm.toml --r 8 --budget 2
"""

from __future__ import annotations

import argparse

import torch

from hfedmoe.client import ClientUpdate
from hfedmoe.client.train import trainable_dense_names
from hfedmoe.config import load_config
from hfedmoe.federation.model import build_model, wrap_for_run


def price(cfg, budget: int) -> dict:
    model, _, desc = build_model(cfg.model, 1, cfg.seed)
    mm = wrap_for_run(model, cfg.model)
    L, E = mm.num_layers, mm.num_experts
    parts = list(cfg.train.trainable)
    experts = {(layer, e): mm.get_expert(layer, e) for layer in range(L) for e in range(budget)}
    routers = {layer: mm.router_state(layer) for layer in range(L)} if "routers" in parts else {}
    dense_p = mm.dense_named_parameters()
    dense = {n: dense_p[n].detach() for n in trainable_dense_names(mm, parts)}
    trained = torch.zeros(L, E, dtype=torch.bool)
    trained[:, :budget] = True
    upd = ClientUpdate(0, 1, experts, routers, dense, torch.zeros(L, E), torch.zeros(L, E), trained,
                       trained.long(), {})
    per_expert = sum(t.numel() for t in mm.get_expert(0, 0).values())
    expert_trainable = L * budget * per_expert
    other = sum(t.numel() for d in routers.values() for t in d.values()) + sum(t.numel() for t in dense.values())
    return {"model": desc, "L": L, "E": E, "per_expert": per_expert, "expert_trainable": expert_trainable,
            "other_trainable": other, "trainable": expert_trainable + other, "upload_bytes": upd.upload_bytes()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--budget", type=int, default=2, help="experts trained per MoE layer")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. train.trainable=[...]")
    a = ap.parse_args()
    torch.set_num_threads(1)
    full = price(load_config(a.config, a.set + ["model.lora_r=0"]), a.budget)
    lora = price(load_config(a.config, a.set + [f"model.lora_r={a.r}", f"model.lora_alpha={a.alpha}"]), a.budget)
    print(f"{full['model']}: L={full['L']} E={full['E']}, budget {a.budget}/layer, trainable parts per config")
    for name, x in (("full experts", full), (f"LoRA r={a.r}", lora)):
        print(f"  {name:>12}: per expert {x['per_expert']:,} params; per client-round trainable "
              f"{x['trainable']:,} (experts {x['expert_trainable']:,} + routers/dense {x['other_trainable']:,}); "
              f"upload {x['upload_bytes']:,} B")
    print(f"  LoRA / full: per expert {lora['per_expert'] / full['per_expert']:.4f}, trainable "
          f"{lora['trainable'] / full['trainable']:.4f}, upload {lora['upload_bytes'] / full['upload_bytes']:.4f}")


if __name__ == "__main__":
    main()
