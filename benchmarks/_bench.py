"""Helpers shared by the benchmark scripts: one torch thread, alternating A/B medians, the
machine's measured matmul rate, real dynamic-padded batches of the default preset."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def one_thread() -> None:
    """Benchmarks default to one intra-op thread (shared cores: more threads wait on each other)."""
    torch.set_num_threads(1)


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run A, B, A, B, ... in one process (load drifts hit all alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_rate(m: int = 1024, k: int = 384, n: int = 768, repeats: int = 20) -> float:
    """Measured FLOP/s of one (m, k) x (k, n) fp32 matmul at the current thread count."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    sec = alternate({"mm": lambda: a @ b}, repeats, warmup=3)["mm"]
    return 2.0 * m * k * n / sec


def shape_matched_rate(tokens: int, hidden: int, expert_tokens: int, expert_width: int, num_experts: int,
                       repeats: int = 20) -> float:
    """FLOP/s of the matmuls one layer of a step runs, at their own (small) shapes: four
    ``(tokens, hidden) x (hidden, hidden)`` projections and, per expert, ``(expert_tokens, hidden) x
    (hidden, width)`` and back. Short dynamic-padded batches make these far smaller than the large
    GEMM of :func:`matmul_rate`; this is the ceiling a step can reach at its shapes."""
    x, w = torch.randn(tokens, hidden), torch.randn(hidden, hidden)
    xe = [torch.randn(expert_tokens, hidden) for _ in range(num_experts)]
    w1 = [torch.randn(hidden, expert_width) for _ in range(num_experts)]
    w2 = [torch.randn(expert_width, hidden) for _ in range(num_experts)]

    def layer():
        for _ in range(4):
            x @ w
        for a, b, c in zip(xe, w1, w2):
            (a @ b) @ c

    sec = alternate({"layer": layer}, repeats, warmup=3)["layer"]
    flops = 4 * 2.0 * tokens * hidden * hidden + num_experts * 2 * 2.0 * expert_tokens * hidden * expert_width
    return flops / sec


def default_batches(num_batches: int, batch_size: int = 16, seed: int = 0):
    """Real dynamic-padded training batches of the default preset (VADER, max_length 48), drawn
    the way a client draws them (shuffled; each batch padded to its longest example)."""
    from hfedmoe.assets.datasets import load_vader
    from hfedmoe.assets.models import load_minilm_tokenizer
    from hfedmoe.config import load_config
    from hfedmoe.data.batches import collate, tokenize

    cfg = load_config("configs/default.toml")
    ds = load_vader()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds.texts), size=num_batches * batch_size, replace=False)
    tok = tokenize(load_minilm_tokenizer(), [ds.texts[i] for i in idx], np.asarray(ds.labels)[idx],
                   cfg.data.max_length)
    return [collate(tok, range(s, s + batch_size)) for s in range(0, num_batches * batch_size, batch_size)]
