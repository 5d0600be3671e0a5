"""Streaming aggregation: the server folds each client's update into running sums as it arrives.

A method's :meth:`~hfedmoe.methods.base.Method.start_aggregation` returns an
:class:`Aggregation`; the engine calls ``add(update)`` once per client (and may drop the update
right after) and ``finish()`` once, when the model holds the round's global weights again.
``finish`` writes the new global weights into the model and returns round metrics.

The parts below are the model-aware side of :mod:`hfedmoe.core.streaming` (which holds the pure
tensor accumulators): each keeps running sums for one piece of the model. ``add`` never reads the
model's weights (during a round the model holds some client's weights), only its shape facts;
``finish`` reads the global weights it keeps where nobody contributed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hfedmoe.client import ClientUpdate
from hfedmoe.core.streaming import PerExpertMean, RouterMean, WeightedMean, fold_all
from hfedmoe.methods.lora_parts import LoraExpertMeans
from hfedmoe.moe.lora_model import is_lora
from hfedmoe.moe import MoEModel


class Aggregation:
    """One round's aggregation, fed one update at a time."""

    def add(self, update: ClientUpdate) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, float]:
        raise NotImplementedError


class Part:
    """One piece of the model aggregated in one pass (experts, routers, dense part)."""

    def add(self, update: ClientUpdate) -> None:
        raise NotImplementedError

    def finish(self, mm: MoEModel) -> dict[str, float]:
        raise NotImplementedError


class Parts(Aggregation):
    """An :class:`Aggregation` made of parts, plus callbacks run at ``finish`` (method state
    updates such as "remember this client's usage": applied once the round is aggregated)."""

    def __init__(self, mm: MoEModel, parts: Sequence[Part],
                 on_add: Callable[[ClientUpdate], None] | None = None,
                 on_finish: Callable[[], None] | None = None) -> None:
        self.mm = mm
        self.parts = list(parts)
        self.on_add = on_add
        self.on_finish = on_finish
        self.num_updates = 0
        self._finished = False

    def add(self, update: ClientUpdate) -> None:
        if self._finished:
            raise RuntimeError("aggregation: add() after finish()")
        for part in self.parts:
            part.add(update)
        if self.on_add is not None:
            self.on_add(update)
        self.num_updates += 1

    def finish(self) -> dict[str, float]:
        if self._finished:
            raise RuntimeError("aggregation: finish() called twice")
        self._finished = True
        metrics: dict[str, float] = {}
        if self.num_updates:
            for part in self.parts:
                metrics.update(part.finish(self.mm))
        if self.on_finish is not None:
            self.on_finish()
        return metrics


class BufferedAggregation(Aggregation):
    """Fallback for a method that only implements the stacked ``aggregate(mm, updates, r)``: holds
    every update until ``finish`` (memory grows with the clients; convert the method to parts)."""

    def __init__(self, fn: Callable[[Sequence[ClientUpdate]], dict[str, float]]) -> None:
        self.fn = fn
        self.updates: list[ClientUpdate] = []

    def add(self, update: ClientUpdate) -> None:
        self.updates.append(update)

    def finish(self) -> dict[str, float]:
        return self.fn(self.updates) if self.updates else {}


# --- experts -------------------------------------------------------------------------------


class SparseExperts(Part):
    """Eq. 17 per layer: expert e averaged by data size over the clients that trained it with
    ``usage >= tau`` (``usage_gate=False``: trained is enough); nobody qualifies: unchanged."""

    def __init__(self, mm: MoEModel, *, tau: float, usage_gate: bool = True) -> None:
        self.tau, self.usage_gate = tau, usage_gate
        self.sums = [PerExpertMean(mm.num_experts) for _ in range(mm.num_layers)]
        # LoRA experts: the same client weights, on the products B_e A_e (methods/lora_parts.py)
        self.lora = LoraExpertMeans(mm) if is_lora(mm) else None

    def add(self, update: ClientUpdate) -> None:
        n = float(update.num_examples)
        if n <= 0:
            return
        qualifies = update.trained.bool().cpu()  # (L, E)
        if self.usage_gate:
            qualifies = qualifies & (update.usage.cpu() >= self.tau)
        q = qualifies.tolist()
        if self.lora is not None:
            self.lora.add(update, q)
            return
        by_layer: dict[int, list] = {}
        for (layer, e), tensors in update.experts.items():
            if q[layer][e]:
                by_layer.setdefault(layer, []).append((e, tensors))
        targets: list[torch.Tensor] = []
        sources: list[torch.Tensor] = []
        shares: list[float] = []
        for layer, items in by_layer.items():
            self.sums[layer].plan_experts(items, n, targets, sources, shares)
        fold_all(targets, sources, shares)  # the whole update in one fused pass

    def finish(self, mm: MoEModel) -> dict[str, float]:
        if self.lora is not None:
            return self.lora.finish(mm)
        for layer, acc in enumerate(self.sums):
            if acc.qualified_all():  # no global value needed: skip reading it
                mm.set_experts(layer, acc.mean({k: v for k, v in acc.shapes().items()}))
            elif bool((acc.mass > 0).any()):
                mm.set_experts(layer, acc.mean(mm.get_experts(layer)))
        return {}


class UniformExperts(Part):
    """Plain FedAvg of whole expert tensors over every client ("avg" ablation): a client's
    untrained experts count with their global value."""

    def __init__(self, mm: MoEModel) -> None:
        self.sums = [PerExpertMean(mm.num_experts) for _ in range(mm.num_layers)]
        self.total = 0.0
        self.lora = LoraExpertMeans(mm, uniform=True) if is_lora(mm) else None

    def add(self, update: ClientUpdate) -> None:
        if self.lora is not None:
            self.lora.add(update, None)
            return
        n = float(update.num_examples)
        self.total += n
        for (layer, e), tensors in update.experts.items():
            self.sums[layer].add_expert(e, tensors, n)

    def finish(self, mm: MoEModel) -> dict[str, float]:
        if self.lora is not None:
            return self.lora.finish(mm)
        for layer, acc in enumerate(self.sums):
            mm.set_experts(layer, acc.mean_with_rest(mm.get_experts(layer), self.total))
        return {}


# --- routers -------------------------------------------------------------------------------


class RoutersByData(Part):
    """Routers averaged by data size over the clients that sent one (a tensor some sender lacks
    keeps its global value)."""

    def __init__(self, mm: MoEModel) -> None:
        self.sums = [WeightedMean() for _ in range(mm.num_layers)]
        self.num_senders = 0

    def add(self, update: ClientUpdate) -> None:
        if not update.routers:
            return
        self.num_senders += 1
        for layer, acc in enumerate(self.sums):
            acc.add(update.routers[layer], float(update.num_examples))

    def finish(self, mm: MoEModel) -> dict[str, float]:
        if not self.num_senders:
            return {}
        for layer, acc in enumerate(self.sums):
            state = mm.router_state(layer)
            new = {name: acc.mean(name, g.dtype).to(g.device) if acc.count(name) == self.num_senders else g
                   for name, g in state.items()}
            mm.set_router_state(layer, new)
        return {}


class RoutersByImportance(Part):
    """Eqs. 18-21 per layer (``normalize`` False: paper-literal); every router tensor follows the
    same client weights. Reports ``routing_consistency`` (Eq. 19, mean over clients and layers)."""

    def __init__(self, mm: MoEModel, *, tau: float, normalize: bool) -> None:
        self.normalize = normalize
        self.sums = [RouterMean(mm.num_experts, tau) for _ in range(mm.num_layers)]
        self.num_senders = 0
        # per sender: (client id, |D_c|, [a_c per layer]): O(C * L) scalars for the alpha diagnostics
        self.senders: list[tuple[int, int, list[float]]] = []

    def add(self, update: ClientUpdate) -> None:
        if not update.routers:
            return
        self.num_senders += 1
        a = [acc.add(update.usage[layer], update.importance[layer], update.routers[layer])
             for layer, acc in enumerate(self.sums)]
        self.senders.append((update.client_id, update.num_examples, a))

    def finish(self, mm: MoEModel) -> dict[str, float]:
        if not self.num_senders:
            return {}
        for layer, acc in enumerate(self.sums):
            mm.set_router_state(layer, acc.result(mm.router_state(layer), normalize=self.normalize))
        metrics: dict = {"routing_consistency": float(sum(acc.consistency() for acc in self.sums) / len(self.sums))}
        metrics.update(self.alpha_metrics())
        return metrics

    def alpha_metrics(self) -> dict:
        """alpha(c) of Eq. 21 per layer (normalised over clients, or divided by |S_global| in the
        paper-literal form), averaged over layers, against the clients' data shares."""
        from hfedmoe.methods.diagnostics import alpha_vs_shares

        a = torch.tensor([s[2] for s in self.senders], dtype=torch.float64)  # (C, L)
        if self.normalize:
            div = a.sum(0).clamp_min(1e-300)  # (L,)
        else:
            div = torch.tensor([max(acc.num_global, 1) for acc in self.sums], dtype=torch.float64)
        alpha = (a / div).mean(1)  # (C,)
        n = torch.tensor([s[1] for s in self.senders], dtype=torch.float64)
        return alpha_vs_shares(alpha, n, [s[0] for s in self.senders])


class RouterRowsByHolders(Part):
    """FedMoE: router row (entry) e averaged by data size over the clients that held expert e;
    rows nobody held keep their value; router tensors not indexed by expert are FedAvg'd."""

    def __init__(self, mm: MoEModel, held: dict[int, list[list[int]]] | None) -> None:
        self.E = mm.num_experts
        self.held = held  # cid -> held experts per layer; None: from each update's usage > 0
        self.rows = [PerExpertMean(self.E) for _ in range(mm.num_layers)]
        self.whole = [WeightedMean() for _ in range(mm.num_layers)]
        self.num_senders = 0

    def add(self, update: ClientUpdate) -> None:
        if not update.routers:
            return
        self.num_senders += 1
        n = float(update.num_examples)
        for layer in range(len(self.rows)):
            by_row = {k: t for k, t in update.routers[layer].items() if t.dim() >= 1 and t.shape[0] == self.E}
            other = {k: t for k, t in update.routers[layer].items() if k not in by_row}
            if by_row:
                masses = torch.zeros(self.E, dtype=torch.float64)  # (E,)
                if n > 0:
                    masses[self._held(update, layer)] = n
                self.rows[layer].add_rows(by_row, masses)
            if other:
                self.whole[layer].add(other, n)

    def _held(self, update: ClientUpdate, layer: int) -> list[int]:
        """The experts ``update``'s client held in ``layer``: under a routing restriction the
        others have router probability exactly 0, so usage > 0 (Eq. 16) marks the held ones."""
        if self.held is not None:
            return list(self.held[update.client_id][layer])
        return torch.nonzero(update.usage[layer] > 0).flatten().tolist()

    def finish(self, mm: MoEModel) -> dict[str, float]:
        if not self.num_senders:
            return {}
        for layer in range(len(self.rows)):
            state = mm.router_state(layer)
            by_row = {k: g for k, g in state.items() if g.dim() >= 1 and g.shape[0] == self.E}
            new = self.rows[layer].mean(by_row)
            for name, g in state.items():
                if name not in new:
                    new[name] = self.whole[layer].mean(name, g.dtype).to(g.device)
            mm.set_router_state(layer, new)
        return {}


# --- dense part ------------------------------------------------------------------------------


class DenseByData(Part):
    """Every dense tensor averaged by data size over the clients that trained it."""

    def __init__(self, mm: MoEModel) -> None:
        del mm
        self.sums = WeightedMean()

    def add(self, update: ClientUpdate) -> None:
        if update.dense:
            self.sums.add(update.dense, float(update.num_examples))

    def finish(self, mm: MoEModel) -> dict[str, float]:
        params = mm.dense_named_parameters()
        with torch.no_grad():
            for name in self.sums.names():
                p = params[name]
                p.copy_(self.sums.mean(name, p.dtype).to(p.device))
        return {}
