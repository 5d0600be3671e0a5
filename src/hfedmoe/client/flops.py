"""The model's :class:`~hfedmoe.core.flops.FlopModel`: matmul parameter counts read through the
MoE adapter, trainable flags from the client's trainable parts."""

from __future__ import annotations

from collections.abc import Sequence

from hfedmoe.client.parts import part_of
from hfedmoe.core.flops import FlopModel
from hfedmoe.moe import MoEModel


def flop_model(mm: MoEModel, parts: Sequence[str], *, train_routers: bool | None = None) -> FlopModel:
    """Parameter counts of ``mm`` by role; ``parts`` as in ``train.trainable``.

    Matmul parameters are the tensors with two or more dimensions outside the embeddings; the
    dense ones are split by :func:`~hfedmoe.client.parts.part_of` (attention, head, the rest per
    layer) and divided evenly over the MoE layers.
    """
    L = mm.num_layers
    by_part: dict[str, int] = {}
    for name, p in mm.dense_named_parameters().items():
        part = part_of(name)
        if p.dim() >= 2 and part != "embeddings":
            by_part[part] = by_part.get(part, 0) + p.numel()
    router = sum(p.numel() for p in mm.router_parameters() if p.dim() >= 2) // L
    expert = sum(t.numel() for t in mm.base_expert(0, 0).values() if t.dim() >= 2)  # LoRA: the frozen base
    parts = set(parts)
    return FlopModel(
        num_layers=L,
        attention_width=mm.hidden_size,
        expert_params=expert,
        attention_params=by_part.get("attention", 0) // L,
        router_params=router,
        other_layer_params=by_part.get("experts", 0) // L,
        head_params=by_part.get("head", 0),
        frozen_layer_params=by_part.get("frozen", 0) // L,
        attention_trainable="attention" in parts,
        router_trainable=("routers" in parts) if train_routers is None else train_routers,
        other_trainable="experts" in parts,
        head_trainable="head" in parts,
        embeddings_trainable="embeddings" in parts,
    )
