"""Aggregation of LoRA experts: the per-expert weighted mean of the *products* ``B_e A_e``,
re-factorised at rank r (:class:`hfedmoe.moe.lora.ProductMean`), with the same per-expert client
weights as full expert fine-tuning.

:class:`~hfedmoe.methods.aggregation.SparseExperts` (Eq. 17: expert e averaged by ``|D_c|`` over
the clients that trained it, with usage >= tau where the method gates on usage) and
:class:`~hfedmoe.methods.aggregation.UniformExperts` (the "avg" ablation: every client counts, an
untrained expert with its global value) hand their updates here when the model carries LoRA
experts (:class:`hfedmoe.moe.lora_model.LoraMoEModel`), so every method and both engines go
through the same code. Averaging ``A`` and ``B`` separately would not average the updates.
"""

from __future__ import annotations

import torch

from hfedmoe.moe import MoEModel
from hfedmoe.moe.lora import ProductMean


def _pairs(names) -> list[str]:
    """``["gate_up_proj", ...]`` from slice names ``"gate_up_proj.lora_A"``, ``".lora_B"``, ..."""
    return sorted({n.rsplit(".", 1)[0] for n in names})


class LoraExpertMeans:
    """Running product means of every ``(layer, expert, tensor)`` some client contributed to."""

    def __init__(self, mm: MoEModel, *, uniform: bool = False) -> None:
        self.rank = int(mm.lora_r)
        self.uniform = uniform
        self.sums: dict[tuple[int, int], dict[str, ProductMean]] = {}
        self.mass: dict[tuple[int, int], float] = {}
        self.total = 0.0  # uniform: every client's weight

    def add(self, update, qualifies: list[list[bool]] | None) -> None:
        """Fold one update in; ``qualifies[l][e]`` (None: every sent expert) with weight ``|D_c|``."""
        n = float(update.num_examples)
        if n <= 0:
            return
        self.total += n
        for (layer, e), tensors in update.experts.items():
            if qualifies is not None and not qualifies[layer][e]:
                continue
            means = self.sums.setdefault((layer, e), {})
            for pair in _pairs(tensors):
                means.setdefault(pair, ProductMean()).add(tensors[f"{pair}.lora_A"], tensors[f"{pair}.lora_B"], n)
            self.mass[(layer, e)] = self.mass.get((layer, e), 0.0) + n

    def finish(self, mm: MoEModel) -> dict[str, float]:
        """Write the aggregated slices into ``mm`` (which holds the global adapter)."""
        for (layer, e), means in sorted(self.sums.items()):
            rest_w = self.total - self.mass[(layer, e)] if self.uniform else 0.0
            glob = mm.get_expert(layer, e) if rest_w > 0 else {}
            new: dict[str, torch.Tensor] = {}
            for pair, acc in means.items():
                rest = (glob[f"{pair}.lora_A"], glob[f"{pair}.lora_B"], rest_w) if rest_w > 0 else None
                new[f"{pair}.lora_A"], new[f"{pair}.lora_B"] = acc.result(self.rank, rest)
            mm.set_expert(layer, e, new)
        return {"lora_experts_aggregated": float(len(self.sums))}
