"""Predicted peak memory of a run, from the cost model, next to this machine's memory.

Per client, the cost model (:meth:`hfedmoe.core.budgets.CostModel.training_bytes`) gives the
peak of one training step: every weight, gradients and optimizer state of what the client trains
(its expert budget, or every expert for the full-model methods), and the activations kept for
backward. The client code adds three copies of each trained expert's size that the cost model (a
property of the method, not of this code) leaves out: one transient, the stand-in stack of the
selected experts kept for backward (``moe/hooks.py``) or, at the optimizer step, AdamW's foreach
temporary (never both at once); the expert's value before its first step (to tell which experts
really changed); and the allocator's retained heap. The stack's gradient is no further copy: the
experts' ``.grad`` are views of it. Measured on the LLM preset with every expert trained (one
round, 4 clients): 5 copies of 1.18 GB live at a step, and 1.2-2 GB of freed memory the allocator
keeps once the first client's state and the aggregation sums have come and gone (RSS 10.6 GB at the
first client's peak, 12.5-12.7 GB at the later clients'); the third copy stands for that retention.
The in-process engine trains its clients one after another on one shared model, and
also holds the global weights (a float32 copy loaded into the model before each client) and the
aggregation's running sums (at most one float32 copy of the weights); the process's own runtime
(Python, torch, transformers, data) comes on top: the process's resident memory once the model is
built, less the weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing this module stays light: the CLI reads current_rss() before torch
    from hfedmoe.config import RunConfig
    from hfedmoe.federation.budgeting import ClientBudget
    from hfedmoe.moe import MoEModel

GIB = 1024**3

# methods whose clients hold the state of every expert (or its gradient: the oracle)
FULL_STATE_METHODS = ("fedavg", "fedavg-drop", "fedavg-full", "fedavg-fit", "centralized", "oracle")


@dataclass
class MemoryPlan:
    client_bytes: list[int]  # predicted training-step peak per client (cost model + expert copies)
    weights_bytes: int  # the model's weights (float32 master weights)
    engine_bytes: int  # in-process engine: global copy + aggregation sums
    runtime_bytes: int  # this process before the model (Python, torch, data)
    machine_total: int  # bytes of RAM (or GPU memory on CUDA)
    machine_available: int

    @property
    def process_peak(self) -> int:
        """Predicted peak of the in-process run: the largest client's step + engine + runtime."""
        return max(self.client_bytes, default=0) + self.engine_bytes + self.runtime_bytes

    def header(self) -> str:
        """One line for the run header."""
        return (f"memory: predicted peak {self.process_peak / GIB:.2f} GB (largest client step "
                f"{max(self.client_bytes, default=0) / GIB:.2f} GB) of {self.machine_total / GIB:.1f} GB "
                f"({self.machine_available / GIB:.1f} GB available)")


def machine_memory(device_type: str = "cpu") -> tuple[int, int]:
    """(total, available) bytes of the memory a run's tensors live in: RAM (``/proc/meminfo``),
    or the current CUDA device's memory."""
    if device_type == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info()
        return int(total), int(free)
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
    except OSError:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * size, pages * size
    return info["MemTotal"], info.get("MemAvailable", info["MemTotal"])


def current_rss() -> int:
    """Resident bytes of this process now (``/proc/self/statm``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def plan_memory(cfg: RunConfig, mm: MoEModel, budgets: list[ClientBudget], device_type: str = "cpu") -> MemoryPlan:
    """The :class:`MemoryPlan` of ``cfg`` with the built model ``mm`` and the clients' budgets,
    called in the process that built them: its resident memory now, less the weights, is the
    runtime share (Python, torch, transformers, the tokenised data)."""
    from hfedmoe.federation.budgeting import cost_model

    cost = cost_model(mm, cfg)
    full = cfg.method.name in FULL_STATE_METHODS
    per_model = cfg.method.budget_scope == "model"
    clients = []
    for b in budgets:
        experts = cost.num_layers * cost.num_experts if full else b.budget * (1 if per_model else cost.num_layers)
        copies = 3 * experts * cost.trainable_expert_params * cost.bytes_per_param  # stack/foreach temp, first value, heap
        clients.append((b.full_bytes if full else b.budget_bytes) + copies)
    weights = cost.total_params * cost.bytes_per_param
    total, available = machine_memory(device_type)
    return MemoryPlan(client_bytes=clients, weights_bytes=weights, engine_bytes=2 * weights,
                      runtime_bytes=max(current_rss() - weights, 0) if device_type == "cpu" else 0, machine_total=total,
                      machine_available=available)
