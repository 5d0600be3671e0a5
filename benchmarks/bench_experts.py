"""``train_only``'s expert forward + backward vs transformers' own experts implementations
(``eager``, ``batched_mm``, ``grouped_mm``) on the same tiny Mixtral experts module and routing,
measured in one run (alternating, medians, one thread).

Inside ``train_only``, :func:`hfedmoe.moe.hooks._fused_experts_forward` calls the registered
implementation itself (on stand-ins holding the trainable experts' leaves), so each implementation
is timed twice: the module's own forward ("hf") and through ``train_only`` with every expert
trainable (same work plus the adapter's overhead: one row per routed pair, the leaves stacked).
Ratio > 1: the adapter costs that much more.

    python benchmarks/bench_experts.py [--tokens 1024] [--repeats 7]
"""

from __future__ import annotations

import argparse

import torch
from _bench import alternate, one_thread

from hfedmoe.moe import wrap
from hfedmoe.moe.build import tiny_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    one_thread()
    torch.manual_seed(0)
    model = tiny_model("mixtral", seed=0, hidden_size=128, intermediate_size=256, num_local_experts=8,
                       num_experts_per_tok=2, num_hidden_layers=1)
    mm = wrap(model)
    experts = model.model.layers[0].mlp.experts
    H, E, k = 128, 8, 2
    x = torch.randn(args.tokens, H)
    logits = torch.randn(args.tokens, E)
    weights, idx = torch.softmax(logits, dim=-1).topk(k, dim=-1)  # (T, k)
    params = list(experts.parameters())

    def hf(impl: str):
        def run():
            model.config._experts_implementation = impl
            xi = x.clone().requires_grad_(True)
            experts(xi, idx, weights).sum().backward()
            for p in params:
                p.grad = None
        return run

    leaves = [t for ls in mm.expert_leaves().values() for t in ls]

    def ours(impl: str):
        def run():
            model.config._experts_implementation = impl
            xi = x.clone().requires_grad_(True)
            with mm.train_only([None]):
                experts(xi, idx, weights).sum().backward()
            for t in leaves:
                t.grad = None
        return run

    fns = {}
    for impl in ("eager", "batched_mm", "grouped_mm"):
        try:
            hf(impl)()
            fns[f"hf {impl}"], fns[f"ours {impl}"] = hf(impl), ours(impl)
        except Exception as exc:  # noqa: BLE001 - an implementation this torch/CPU cannot run
            print(f"{impl}: not available here ({type(exc).__name__}: {str(exc)[:80]})")
    med = alternate(fns, args.repeats)
    print(f"tiny Mixtral experts (E={E}, top-{k}, H={H}, FFN 256), {args.tokens} tokens, forward + backward, "
          f"1 thread, median of {args.repeats}:")
    for name, sec in med.items():
        impl = name.split()[1]
        extra = f"   train_only / hf: {sec / med['hf ' + impl]:.2f}" if name.startswith("ours") else ""
        print(f"  {name:<16} {sec * 1e3:8.2f} ms{extra}")

if __name__ == "__main__":
    main()
