"""Micro-benchmark of the pure core: per-step selection cost and per-round aggregation cost.

    python benchmarks/bench_core.py

Shapes follow the default model (MiniLM-MoE: 6 MoE layers, E = 8, H = 384, expert intermediate
size 192, top-2) and a batch of 16 x 128 tokens. The functions are importable so that other
benchmarks can relate these medians to the training step and round times measured in the same run.
"""

from __future__ import annotations

import statistics
import time

import torch

from hfedmoe.core import aggregate_experts, aggregate_routers, ib_scores, routed_experts, select_experts


def _median_seconds(fn, repeats: int, num_threads: int | None, warmup: int = 2) -> float:
    """Median wall seconds of ``fn()``; ``num_threads`` set for the measurement and restored after.

    On a small shared machine intra-op threads wait on each other (a 2-thread elementwise op on a
    busy 2-core box took ~10 ms instead of ~0.01 ms), so the default is 1 thread.
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


def time_selection(
    num_tokens: int = 16 * 128,
    num_experts: int = 8,
    num_layers: int = 6,
    top_k: int = 2,
    budget: int = 3,
    lam: float = 0.5,
    beta: float = 0.1,
    repeats: int = 50,
    seed: int = 0,
    num_threads: int | None = 1,
) -> float:
    """Median seconds of ``ib_scores`` + ``select_experts`` over all layers of one batch.

    The routed masks (E_union) are computed once outside the timed region; ~10% of tokens are padding.
    """
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(num_layers):
        gate_probs = torch.softmax(torch.randn(num_tokens, num_experts, generator=gen), dim=1)  # (T, E)
        token_mask = torch.rand(num_tokens, generator=gen) > 0.1  # (T,)
        topk_idx = gate_probs.topk(top_k, dim=1).indices  # (T, k)
        layers.append((gate_probs, token_mask, routed_experts(topk_idx, token_mask, num_experts)))

    def step() -> None:
        for gate_probs, token_mask, routed_mask in layers:
            select_experts(ib_scores(gate_probs, token_mask, lam, beta), routed_mask, budget)

    return _median_seconds(step, repeats, num_threads)


def time_aggregation(
    num_clients: int = 10,
    num_layers: int = 6,
    num_experts: int = 8,
    hidden_size: int = 384,
    intermediate_size: int = 192,
    tau: float = 0.05,
    repeats: int = 20,
    seed: int = 0,
    num_threads: int | None = 1,
) -> float:
    """Median seconds of ``aggregate_experts`` (4 expert tensors) + ``aggregate_routers`` over all layers.

    Each expert holds an up projection (I, H) with bias (I,) and a down projection (H, I) with bias (H,).
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = [(intermediate_size, hidden_size), (intermediate_size,), (hidden_size, intermediate_size), (hidden_size,)]
    layers = []
    for _ in range(num_layers):
        experts = [
            (torch.randn(num_experts, *s, generator=gen), torch.randn(num_clients, num_experts, *s, generator=gen))
            for s in shapes
        ]
        router = torch.randn(num_experts, hidden_size, generator=gen)  # (E, H)
        client_routers = torch.randn(num_clients, num_experts, hidden_size, generator=gen)  # (C, E, H)
        usage = torch.softmax(torch.randn(num_clients, num_experts, generator=gen), dim=1)  # (C, E)
        importance = torch.rand(num_clients, num_experts, generator=gen)  # (C, E)
        trained = torch.rand(num_clients, num_experts, generator=gen) > 0.5  # (C, E)
        layers.append((experts, router, client_routers, usage, importance, trained))
    num_examples = torch.randint(50, 500, (num_clients,), generator=gen)  # (C,)

    def round_() -> None:
        for experts, router, client_routers, usage, importance, trained in layers:
            for global_t, client_t in experts:
                aggregate_experts(global_t, client_t, usage, trained, num_examples, tau)
            aggregate_routers(router, client_routers, usage, importance, tau)

    return _median_seconds(round_, repeats, num_threads, warmup=1)


def main() -> None:
    print(f"torch {torch.__version__}, CPU; default intra-op threads: {torch.get_num_threads()}")
    for threads in (1, None):
        label = "1 thread" if threads == 1 else f"{torch.get_num_threads()} threads"
        selection = time_selection(num_threads=threads)
        aggregation = time_aggregation(num_threads=threads)
        print(f"[{label}] ib_scores + select_experts, 6 layers x T=2048 x E=8 (median of 50): "
              f"{selection * 1e3:.3f} ms per batch")
        print(f"[{label}] aggregate_experts + aggregate_routers, 10 clients x 6 layers (median of 20): "
              f"{aggregation * 1e3:.3f} ms per round")


if __name__ == "__main__":
    main()
