"""MoE adapters on the dense model vs the native (MoEfied) MoE vs LoRA experts, at the same budget.

Three ways to fine-tune all-MiniLM-L6-v2 with ``M`` experts per layer, top-2, and a budget of ``b``
trained experts per layer; experts, routers and the head train, the rest is frozen:

* ``adapter-moe``: the dense model + MoE adapters (``model.adapter = "moe"``, rank ``--rank``);
* ``native-moe``: the MoEfied model (``minilm-moe``), experts fine-tuned in full;
* ``lora``: the MoEfied model with LoRA experts (``model.lora_r = --lora-r``).

Per variant: trainable parameters of one client-round and its upload bytes (the real
``ClientUpdate.upload_bytes`` through ``bench_lora_sizes.price``), the median time of one budgeted
training step on the same real batches (alternating A/B/C in this process; ratio to native-moe),
and a short quality figure: test accuracy after ``--rounds`` rounds of ``--method`` on a small
VADER federation (``--examples`` sentences, fixed budgets ``b``), each variant on the identical
partition and seed. ``fft-moe`` on the adapters is added as a fourth quality row.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_adapter_sizes.py [--rounds 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _bench import alternate, default_batches, one_thread
from bench_lora_sizes import price

from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation
from hfedmoe.federation.model import build_model, wrap_for_run


def variants(a) -> dict[str, list[str]]:
    common = [f"model.num_experts={a.experts}", "model.top_k=2", 'train.trainable=["experts", "routers", "head"]',
              f"clients.fixed_budgets=[{a.budget}]"]
    return {
        "adapter-moe": common + ["model.name=minilm", "model.adapter=moe", f"model.adapter_rank={a.rank}"],
        "native-moe": common + ["model.name=minilm-moe"],
        "lora": common + ["model.name=minilm-moe", f"model.lora_r={a.lora_r}", "model.lora_alpha=16"],
    }


def step_times(sets: dict[str, list[str]], budget: int, repeats: int) -> dict[str, float]:
    batches = default_batches(4)
    steps = {}
    for name, overrides in sets.items():
        cfg = load_config("configs/default.toml", overrides)
        model, _, _ = build_model(cfg.model, 2, cfg.seed)
        mm = wrap_for_run(model, cfg.model)
        model.train()
        for p in model.parameters():
            p.requires_grad_(False)
        head = [p for n, p in model.named_parameters() if n.startswith("classifier") or "pooler" in n]
        for p in head + mm.router_parameters():
            p.requires_grad_(True)
        leaves = [t for ls in mm.expert_leaves().values() for t in ls]
        opt = torch.optim.AdamW(leaves + mm.router_parameters() + head, lr=1e-5)
        subsets = [list(range(budget))] * mm.num_layers
        counter = [0]

        def step(mm=mm, opt=opt, subsets=subsets, counter=counter):
            batch = batches[counter[0] % len(batches)]
            counter[0] += 1
            with mm.train_only(subsets):
                mm.model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[name] = step
    return alternate(steps, repeats)


def quality(name: str, overrides: list[str], a, out: Path) -> dict:
    cfg = load_config("configs/default.toml", overrides + [
        f"data.max_examples={a.examples}", "data.partition=natural", "data.max_length=32", "train.local_steps=6",
        "train.lr=1e-3", f"federation.rounds={a.rounds}", f"federation.eval_every={a.rounds}",
        f"federation.checkpoint_every={a.rounds}", f"method.name={a.method if name != 'fft-moe' else 'fft-moe'}"])
    t0 = time.perf_counter()
    rows = Simulation(cfg, out / name).run()
    last = rows[-1]
    clients = max(1, len(last.get("sampled_clients", [])) or 1)
    return {"accuracy": last["test_accuracy"], "before": rows[0]["test_accuracy"],
            "upload_per_client": last["upload_bytes"] / clients, "wall": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--budget", type=int, default=2, help="trained experts per layer")
    ap.add_argument("--rank", type=int, default=16, help="adapter expert width r")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--examples", type=int, default=800)
    ap.add_argument("--method", default="flux-freq", help="method of the quality runs (same for all variants)")
    a = ap.parse_args()
    one_thread()
    sets = variants(a)
    sizes = {n: price(load_config("configs/default.toml", o), a.budget) for n, o in sets.items()}
    times = step_times(sets, a.budget, a.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: quality(n, o, a, Path(tmp)) for n, o in sets.items()}
        runs["fft-moe"] = quality("fft-moe", sets["adapter-moe"], a, Path(tmp))
    print(f"all-MiniLM-L6-v2, {a.experts} experts/layer, top-2, budget {a.budget}/layer; adapter rank {a.rank}, "
          f"LoRA r {a.lora_r}; quality: {a.method}, {a.rounds} rounds, VADER {a.examples} sentences, natural split")
    print("| variant | params / expert | trainable / client-round | upload B / client-round | step time vs native | "
          f"test acc. before -> after ({a.method}) |")
    print("|---|---:|---:|---:|---:|---|")
    for n in sets:
        s, r = sizes[n], runs[n]
        print(f"| {n} | {s['per_expert']:,} | {s['trainable']:,} | {s['upload_bytes']:,} | "
              f"{times[n] / times['native-moe']:.2f} | {r['before']:.3f} -> {r['accuracy']:.3f} |")
    r = runs["fft-moe"]
    print(f"| fft-moe (adapters) | {sizes['adapter-moe']['per_expert']:,} | - | run mean {r['upload_per_client']:,.0f} | "
          f"- | {r['before']:.3f} -> {r['accuracy']:.3f} |")
    print(f"median step seconds: " + ", ".join(f"{n} {t:.3f}" for n, t in times.items())
          + f"; quality wall s: " + ", ".join(f"{n} {r['wall']:.0f}" for n, r in runs.items())
          + f"; per-run upload means: " + ", ".join(f"{n} {r['upload_per_client']:,.0f}" for n, r in runs.items()))


if __name__ == "__main__":
    main()
