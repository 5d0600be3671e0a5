"""Budgeted vs full training step of the default model on real dynamic-padded batches, next to
its compute-only floor; the step's FLOP rate vs this machine's matmul rate, measured in one run.

MiniLM-MoE (E = 8 per layer, top-2), batches of 16 real VADER sentences padded to their longest
(max 48 tokens, the default preset), AdamW over experts + routers + head (attention and
embeddings frozen), dropout as the model is configured (``--attention-dropout``: -1 keeps the
checkpoint's 0.1). Budget = 2 of 8 experts per layer trainable vs all 8, alternating A/B.

- time ratio budget/full (medians) and the FLOP ratio of the same batches from the project's
  FLOP model (the compute-only floor: the best a budget can do when time follows FLOPs);
- peak trainable bytes ratio: saved activations + gradients + optimizer state of the step;
- step FLOP/s (the FLOP model's count / median time) vs a one-thread fp32 matmul measured here.

    python benchmarks/bench_train_step.py [--repeats 6] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from _bench import alternate, default_batches, matmul_rate, shape_matched_rate

from hfedmoe.client.flops import flop_model
from hfedmoe.config import ModelConfig
from hfedmoe.core.flops import BatchShape
from hfedmoe.federation import build_model
from hfedmoe.federation.runtime import set_attention_dropout
from hfedmoe.moe import wrap

PARTS = ("experts", "routers", "head")


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class SavedBytes:
    """Bytes autograd saves for backward inside the context (each storage once)."""

    def __init__(self) -> None:
        self.total, self._seen = 0, set()

    def pack(self, t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key not in self._seen:
            self._seen.add(key)
            self.total += t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


class TrainStepBench:
    """The default model, real dynamic-padded batches, and one AdamW per mode."""

    def __init__(self, budget: int = 2, num_batches: int = 8, attention_dropout: float = -1.0) -> None:
        model, _, self.description = build_model(ModelConfig(name="minilm-moe", num_experts=8, top_k=2), 2, seed=0)
        set_attention_dropout(model, attention_dropout)
        self.mm = mm = wrap(model)
        model.train()
        self.batches = default_batches(num_batches)
        for p in model.parameters():
            p.requires_grad_(False)
        head = [p for n, p in model.named_parameters() if n.startswith("classifier") or "pooler" in n]
        for p in head + mm.router_parameters():
            p.requires_grad_(True)
        L = mm.num_layers
        self.modes = {"full": [None] * L, "budget": [list(range(budget))] * L}
        leaves = [t for ls in mm.expert_leaves().values() for t in ls]
        self.opts = {m: torch.optim.AdamW(leaves + mm.router_parameters() + head, lr=1e-5) for m in self.modes}
        self.flops = flop_model(mm, PARTS)
        self.memory: dict[str, int] = {}
        self.step_flops: dict[str, float] = {m: 0.0 for m in self.modes}
        self._i = {m: 0 for m in self.modes}

    def step(self, mode: str) -> None:
        mm, opt = self.mm, self.opts[mode]
        batch_idx = self._i[mode] % len(self.batches)
        batch = self.batches[batch_idx]
        self._i[mode] += 1
        subsets = self.modes[mode]
        if isinstance(subsets, tuple):  # per batch: subsets[batch_idx]
            subsets = subsets[batch_idx]
        with mm.train_only(subsets) as ctx, mm.capture_routing(batch["attention_mask"]) as cap:
            with SavedBytes() as saved:
                out = mm.model(**batch)
            out.loss.backward()
        grads = sum(nbytes(p.grad) for g in opt.param_groups for p in g["params"] if p.grad is not None)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state = sum(nbytes(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())
        self.memory[mode] = max(self.memory.get(mode, 0), saved.total + grads + state)
        pairs, trained = [], []
        for layer in range(mm.num_layers):
            r = cap.layer(layer)
            topk = r.topk_idx[r.token_mask]
            sel = torch.as_tensor(sorted(ctx.selected[layer]), dtype=torch.long)
            pairs.append(topk.numel())
            trained.append(int(torch.isin(topk, sel).sum()))
        B, S = batch["attention_mask"].shape
        f, b = self.flops.step(BatchShape(int(B), int(S), pairs, trained))
        self.step_flops[mode] += f + b

    def run(self, repeats: int) -> dict[str, float]:
        """Median seconds per step of each mode over ``repeats`` passes over the batches."""
        n = len(self.batches)
        med = alternate({m: (lambda m=m: [self.step(m) for _ in range(n)]) for m in self.modes}, repeats)
        return {m: t / n for m, t in med.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=int, default=2)
    ap.add_argument("--attention-dropout", type=float, default=-1.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench = TrainStepBench(args.budget, attention_dropout=args.attention_dropout)
    med = bench.run(args.repeats)
    steps = {m: bench._i[m] for m in bench.modes}
    flops = {m: bench.step_flops[m] / steps[m] for m in bench.modes}  # mean FLOPs per step
    rate = matmul_rate()
    real = sum(int(b["attention_mask"].sum()) for b in bench.batches)
    padded = sum(b["attention_mask"].numel() for b in bench.batches)
    E = bench.mm.num_experts
    t_ratio = med["budget"] / med["full"]
    f_ratio = flops["budget"] / flops["full"]
    m_ratio = bench.memory["budget"] / bench.memory["full"]
    print(f"{bench.description}; {len(bench.batches)} real VADER batches of 16, dynamic padding "
          f"({real} real of {padded} positions); attention dropout "
          f"{'as built' if args.attention_dropout < 0 else args.attention_dropout}; threads {args.threads}; "
          f"{args.repeats} alternating repeats")
    print(f"step time budget {args.budget}/{E} vs full: ratio {t_ratio:.3f} "
          f"(compute-only floor by FLOPs {f_ratio:.3f}; time/floor {t_ratio / f_ratio:.3f}, goal <= 1.1)")
    print(f"peak trainable bytes (saved activations + grads + AdamW state): full {bench.memory['full'] / 2**20:.1f} MiB, "
          f"budget {bench.memory['budget'] / 2**20:.1f} MiB, ratio {m_ratio:.3f}")
    mcfg = bench.mm.model.config
    k = 2  # top-k of the default preset
    shaped = shape_matched_rate(round(padded / len(bench.batches)), mcfg.hidden_size,
                                max(1, round(real / len(bench.batches) * k / E)), mcfg.intermediate_size // E, E)
    for m in bench.modes:
        print(f"step FLOP rate ({m}): {flops[m] / med[m] / 1e9:.2f} GFLOP/s = "
              f"{flops[m] / med[m] / rate:.2f} of the measured matmul rate {rate / 1e9:.2f} GFLOP/s (goal >= 0.70); "
              f"{flops[m] / med[m] / shaped:.2f} of the rate of the same matmuls at the step's own shapes "
              f"({shaped / 1e9:.2f} GFLOP/s)")


if __name__ == "__main__":
    main()
