"""MiniLM-MoE training step: 2 of 8 experts per layer trainable vs all 8, alternating in one run.

E = 8 experts per layer, top-2 routing, batch 16 x 128 tokens of real VADER text, AdamW over
experts + routers + task head (attention and embeddings frozen, as in the default preset).

Prints the median step-time ratio (budget / full) and three memory ratios measured exactly from
the tensors of the step, not from the process RSS (which only grows and cannot alternate):
- saved activations: bytes autograd keeps for backward (saved_tensors_hooks), peak of the step;
- gradients: bytes of every .grad after backward;
- optimizer state: bytes of AdamW's exp_avg / exp_avg_sq after the step.

    python benchmarks/bench_train_step.py [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hfedmoe.assets.datasets import load_vader
from hfedmoe.config import ModelConfig
from hfedmoe.federation import build_model
from hfedmoe.moe import wrap


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class SavedBytes:
    """Counts bytes autograd saves for backward inside the context."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[int] = set()

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
    """The default model, one batch of 16 x 128 real tokens, and one AdamW per mode."""

    def __init__(self, budget: int = 2, seq_len: int = 128, batch_size: int = 16) -> None:
        model, tok, self.description = build_model(
            ModelConfig(name="minilm-moe", num_experts=8, top_k=2), num_labels=2, seed=0)
        self.mm = mm = wrap(model)
        ds = load_vader()
        batch = tok(ds.texts[:batch_size], padding="max_length", max_length=seq_len, truncation=True,
                    return_tensors="pt")
        batch["labels"] = torch.as_tensor(ds.labels[:batch_size])
        self.batch = batch
        for p in model.parameters():
            p.requires_grad_(False)
        head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
        for p in head + mm.router_parameters():
            p.requires_grad_(True)
        L = mm.num_layers
        self.modes = {"full": [None] * L, "budget": [list(range(budget))] * L}
        leaves = [t for ls in mm.expert_leaves().values() for t in ls]
        self.opts = {m: torch.optim.AdamW(leaves + mm.router_parameters() + head, lr=1e-5) for m in self.modes}
        self.memory: dict[str, dict[str, int]] = {}

    def step(self, mode: str) -> None:
        mm, opt = self.mm, self.opts[mode]
        with mm.train_only(self.modes[mode]):
            with SavedBytes() as saved:  # counts what the forward saves for backward
                out = mm.model(**self.batch)
            out.loss.backward()
        grads = sum(tensor_bytes(p.grad) for g in opt.param_groups for p in g["params"] if p.grad is not None)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state = sum(tensor_bytes(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())
        self.memory[mode] = {"saved_activations": saved.total, "gradients": grads, "optimizer_state": state}

    def time_steps(self, repeats: int) -> dict[str, float]:
        """Median seconds per step of each mode, alternating modes (A, B, A, B, ...)."""
        for mode in self.modes:  # warm-up
            self.step(mode)
        times: dict[str, list[float]] = {m: [] for m in self.modes}
        for _ in range(repeats):
            for mode in self.modes:
                t0 = time.perf_counter()
                self.step(mode)
                times[mode].append(time.perf_counter() - t0)
        return {m: statistics.median(v) for m, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench = TrainStepBench(args.budget)
    med = bench.time_steps(args.repeats)
    mem, E = bench.memory, bench.mm.num_experts
    print(f"{bench.description}; batch 16 x 128 tokens; torch threads {args.threads}; "
          f"{args.repeats} alternating repeats")
    print(f"median step time: full {med['full']:.3f} s, {args.budget}/{E} trainable {med['budget']:.3f} s, "
          f"ratio {med['budget'] / med['full']:.3f}")
    for key in ("saved_activations", "gradients", "optimizer_state"):
        a, b = mem["full"][key], mem["budget"][key]
        print(f"{key:>18}: full {a / 2**20:8.2f} MiB, budget {b / 2**20:8.2f} MiB, ratio {b / max(a, 1):.3f}")
    ta, tb = sum(mem["full"].values()), sum(mem["budget"].values())
    print(f"{'trainable state':>18}: full {ta / 2**20:8.2f} MiB, budget {tb / 2**20:8.2f} MiB, ratio {tb / ta:.3f}")


if __name__ == "__main__":
    main()
