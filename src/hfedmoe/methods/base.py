"""The method interface: what a client trains (a plan) and how the server aggregates.

A method is a small class over the shared core functions. The engine calls, per round:
``plan(...)`` for each sampled client, ``start_aggregation(...)`` once, ``add(update)`` on the
returned :class:`~hfedmoe.methods.aggregation.Aggregation` as each client's update arrives (the
update can be dropped right after: the server holds O(1) updates), ``finish()`` once the model
holds the global weights again (the method writes the new ones into it), and ``state_dict()``
when it checkpoints. ``aggregate(mm, updates, r)`` is the same in one call (start, add each,
finish), for callers that already hold every update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hfedmoe.client import ClientUpdate, TrainPlan
from hfedmoe.core.selection import routed_pair_counts
from hfedmoe.methods.aggregation import (
    Aggregation,
    BufferedAggregation,
    Part,
    Parts,
)
from hfedmoe.moe import MoEModel


@dataclass
class ClientInfo:
    """What the server knows about a client when it plans its round."""

    client_id: int
    budget: int  # trainable experts per layer (budget_scope="layer") or in the whole model
    num_examples: int
    profile: str


class Method:
    """Base class. Subclasses set ``name`` and override ``plan`` and ``start_aggregation`` (streaming)
    or, for a method not converted yet, ``aggregate`` (then the updates are buffered)."""

    name = "base"
    #: False for methods that train the whole model whatever the device (FedAvg): a client whose
    #: training state does not fit its memory then fails the round.
    respects_budget = True
    #: True for a reference that trains every expert whatever the device (fedavg-full): no client
    #: fails for memory and the update checks bound no expert selections by the budget.
    ignores_budget = False
    #: With ``respects_budget = False``: skip (not fail) the clients that do not fit (FedAvg-drop).
    drops_unfit = False
    #: Train one client on the pooled data of all clients (the centralised upper bound).
    pools_data = False
    #: The run seed, set by the engine, for methods that draw random choices.
    seed = 0

    def __init__(self, **options: Any) -> None:
        self.options = options

    def download_bytes(self, mm: MoEModel, client: ClientInfo, full_bytes: int) -> int:
        """Bytes ``client`` downloads this round (default: the whole global model)."""
        del mm, client
        return full_bytes

    def begin_round(self, mm: MoEModel, clients: Sequence[ClientInfo], round_idx: int) -> None:
        """Called once per round, before any ``plan``, with the clients that will train (server-side
        joint decisions such as FLEX-MoE's assignment). Default: nothing."""
        del mm, clients, round_idx

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        raise NotImplementedError

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        """A fresh streaming aggregation for round ``round_idx`` (see the module docstring)."""
        if type(self).aggregate is not Method.aggregate:  # a stacked-only method: buffer its updates
            return BufferedAggregation(lambda updates: self.aggregate(mm, updates, round_idx))
        raise NotImplementedError(f"{type(self).__name__}: implement start_aggregation or aggregate")

    def aggregate(self, mm: MoEModel, updates: Sequence[ClientUpdate], round_idx: int) -> dict[str, float]:
        """Aggregate a list of updates in one call: ``start_aggregation``, ``add`` each, ``finish``."""
        agg = self.start_aggregation(mm, round_idx)
        for u in updates:
            agg.add(u)
        return agg.finish()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able method state for checkpoints (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def open_aggregation(method: Method, mm: MoEModel, round_idx: int) -> Aggregation:
    """What an engine calls to aggregate a round: ``method.start_aggregation``, unless the method's
    class overrides the stacked ``aggregate`` below the class that gives its ``start_aggregation``
    (e.g. a subclass of FedAvg with its own ``aggregate``): then that ``aggregate`` is honoured
    and the updates are buffered for it."""
    mro = type(method).__mro__

    def owner(attr: str) -> int:
        return next(i for i, cls in enumerate(mro) if attr in cls.__dict__)

    if owner("aggregate") < owner("start_aggregation"):
        return BufferedAggregation(lambda updates: method.aggregate(mm, updates, round_idx))
    return method.start_aggregation(mm, round_idx)


# --- shared aggregation steps -------------------------------------------------------------


def run_parts(mm: MoEModel, updates: Sequence[ClientUpdate], parts: Sequence[Part]) -> dict[str, float]:
    """Aggregate ``updates`` through streaming ``parts`` in one call (the model holds the global weights)."""
    agg = Parts(mm, parts)
    for u in updates:
        agg.add(u)
    return agg.finish()


def routed_mask(routing: Any, num_experts: int) -> torch.Tensor:
    """(E,) bool: experts at least one real token of the batch was routed to (E_union)."""
    return routed_pair_counts(routing.topk_idx, routing.token_mask, num_experts) > 0  # no host read


def all_experts(mm: MoEModel) -> list[Sequence[int] | None]:
    return [None] * mm.num_layers
