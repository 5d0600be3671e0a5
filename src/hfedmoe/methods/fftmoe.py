"""FFT-MoE (Hu et al., arXiv 2508.18663), the peer built for sparse MoE adapters on a frozen
dense model (``model.adapter = "moe"``); it runs on native MoE models as well.

What this project implements (docs/fft-moe.md says which parts the paper leaves unpublished):

* **Personalised activation within the budget.** Each round the client profiles its data with the
  current global router (a no-grad pass, as FedMoE) and activates, per layer, its
  ``max(budget, top_k)`` most used experts (usage, Eq. 16 of HFedMoE; ties to the lower index; no
  random exploration): routing is restricted to them and it trains the ``budget`` most used of them
  together with its router. This is :class:`~hfedmoe.methods.fedmoe.FedMoE`'s plan with
  ``explore = 0``.
* **Auxiliary loss.** ``method.aux_weight x mean over layers of`` :func:`~hfedmoe.core.balance.balance_loss`
  over the client's active experts, added to the task loss of every local step.
* **Aggregation by data size**, as the paper writes it: ``W^g = sum_n |D_n|/|D| W^n`` over every
  client of the round, for every adapter expert (a client that did not train an expert
  contributes the global value it received), for the routers (over the clients that sent one)
  and for the trained dense part (head).
"""

from __future__ import annotations

import torch

from hfedmoe.client import TrainPlan
from hfedmoe.core.balance import balance_loss
from hfedmoe.methods.aggregation import Aggregation, DenseByData, Parts, RoutersByData, UniformExperts
from hfedmoe.methods.base import ClientInfo
from hfedmoe.methods.fedmoe import FedMoE
from hfedmoe.moe import MoEModel


def aux_loss_fn(held: list, num_experts: int, weight: float):
    """``capture -> weight x mean_l balance_loss(live probs of layer l, over held[l])``."""
    masks = []
    for subset in held:
        mask = torch.zeros(num_experts, dtype=torch.bool)
        mask[list(subset) if subset is not None else slice(None)] = True
        masks.append(mask)

    def aux(capture) -> torch.Tensor:
        terms = [balance_loss(capture.live_probs[l], capture.topk_idx[l], capture.token_mask[l], masks[l])
                 for l in range(len(masks))]
        return weight * torch.stack(terms).mean()

    return aux


class FFTMoE(FedMoE):
    name = "fft-moe"
    explore = 0.0

    def __init__(self, *, budget_scope: str = "layer", aux_weight: float = 0.01) -> None:
        super().__init__(budget_scope=budget_scope)
        self.options["aux_weight"] = aux_weight
        self.aux_weight = float(aux_weight)

    def plan(self, mm: MoEModel, client: ClientInfo, round_idx: int) -> TrainPlan:
        plan = super().plan(mm, client, round_idx)
        choose = plan.profile

        def after_profile(usage: torch.Tensor, importance: torch.Tensor) -> TrainPlan:
            chosen = choose(usage, importance)
            if self.aux_weight > 0:
                chosen.aux_loss = aux_loss_fn(chosen.restrict, mm.num_experts, self.aux_weight)
            return chosen

        plan.profile = after_profile
        return plan

    def start_aggregation(self, mm: MoEModel, round_idx: int) -> Aggregation:
        return Parts(mm, [UniformExperts(mm), RoutersByData(mm), DenseByData(mm)])
