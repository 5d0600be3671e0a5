"""Helpers the baselines share: per-layer budgets, seeded generators, expert bytes, FedAvg steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from hfedmoe.client import ClientUpdate, TrainPlan
from hfedmoe.core.selection import selection_mask
from hfedmoe.methods.aggregation import DenseByData, Part, RoutersByData, SparseExperts
from hfedmoe.methods.base import routed_mask, run_parts
from hfedmoe.moe import MoEModel


def per_layer_budget(budget: int, budget_scope: str, num_layers: int) -> int:
    """Trainable experts per layer: the budget itself ("layer") or an even share of it ("model").

    The even share is for the static sub-MoE baselines (FedMoE, FLEX-MoE), whose papers count
    experts per layer; per-batch selectors choose across layers (:func:`per_batch_plan`)."""
    return budget if budget_scope == "layer" else max(1, budget // num_layers)


def select_in_model(scores: torch.Tensor, routed: torch.Tensor, budget: int) -> list[list[int]]:
    """Eq. 15 with one count over the whole model (``budget_scope = "model"``): the ``budget``
    best (layer, expert) pairs among the routed ones, returned per layer.

    scores (L, E) float, routed (L, E) bool; equal scores go to the lower (layer, expert)."""
    chosen = selection_mask(scores.reshape(-1).float(), routed.reshape(-1), budget)  # (L*E,) on the device
    return mask_to_subsets(chosen.reshape(scores.shape))


def mask_to_subsets(chosen: torch.Tensor) -> list[list[int]]:
    """(L, E) bool -> per layer the chosen expert indices (one device->host read)."""
    return [[e for e, c in enumerate(row) if c] for row in chosen.tolist()]


def per_batch_plan(mm: MoEModel, budget: int, budget_scope: str, scores_of: Callable[[Any], torch.Tensor],
                   on_batch: Callable[[dict], None] | None = None) -> TrainPlan:
    """Eq. 15 per batch for any score: the ``budget`` routed experts with the best
    ``scores_of(routing)`` (E,), per layer inside the forward (``budget_scope = "layer"``), or the
    best (layer, expert) pairs over the model from a no-grad pre-pass (``"model"``)."""
    E = mm.num_experts
    if budget_scope == "layer":
        def selector(layer: int, routing) -> torch.Tensor:  # (E,) bool on the device: train_only reads
            return selection_mask(scores_of(routing), routed_mask(routing, E), budget)  # it with its dispatch

        return TrainPlan(selector=selector, budget=budget, on_batch=on_batch)

    def batch_subsets(capture) -> list[Sequence[int]]:
        layers = [capture.layer(layer) for layer in range(mm.num_layers)]
        scores = torch.stack([scores_of(r) for r in layers])  # (L, E)
        routed = torch.stack([routed_mask(r, E) for r in layers])  # (L, E)
        return select_in_model(scores, routed, budget)

    return TrainPlan(batch_subsets=batch_subsets, on_batch=on_batch)


def seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, round, client, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def expert_bytes(mm: MoEModel) -> int:
    """Bytes of one expert's tensors (all experts have the same shapes)."""
    return int(sum(t.numel() * t.element_size() for t in mm.get_expert(0, 0).values()))


def fedavg_trained_parts(mm: MoEModel, *, routers: bool = True) -> list[Part]:
    """Streaming parts of :func:`fedavg_trained`."""
    parts: list[Part] = [SparseExperts(mm, tau=0.0, usage_gate=False)]
    if routers:
        parts.append(RoutersByData(mm))
    parts.append(DenseByData(mm))
    return parts


def fedavg_trained(mm: MoEModel, updates: Sequence[ClientUpdate], *, routers: bool = True) -> None:
    """FedAvg of each expert over the clients that trained it (experts nobody trained keep their
    value), of the routers over the senders (unless ``routers`` is False) and of the dense part."""
    run_parts(mm, updates, fedavg_trained_parts(mm, routers=routers))


def scores_to_state(scores: dict[int, torch.Tensor]) -> dict[str, list]:
    return {str(cid): s.tolist() for cid, s in sorted(scores.items())}


def scores_from_state(state: dict[str, list]) -> dict[int, torch.Tensor]:
    return {int(cid): torch.tensor(s, dtype=torch.float32) for cid, s in state.items()}
