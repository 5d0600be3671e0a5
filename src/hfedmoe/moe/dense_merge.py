"""A MoEfied BERT merged back into a dense ``BertFor*`` (the inverse of :func:`moefy_bert`).

Expert e owns ``I/E`` neurons: rows of ``W1``/``b1`` (``up_proj[e]``, ``up_proj_bias[e]``) and the
matching columns of ``W2`` (``down_proj[e]``); ``b2`` is the shared ``output_bias``. Stacking the
experts gives a dense FFN with the neurons in expert order::

    W1 = cat_e up_proj[e]        (I, H)      b1 = cat_e up_proj_bias[e]   (I,)
    W2 = cat_e down_proj[e]      (H, I)      b2 = output_bias             (H,)

With straight-through combination (every selected expert weighted exactly 1) and ``top_k == E``
the MoE block computes ``sum_e down_e act(up_e x + b_e) + b2 = W2 act(W1 x + b1) + b2``: the
merge is exact up to float summation order. With ``top_k < E`` a token uses only its top-k
experts, a routed function no dense BERT has: merging then activates every expert (a different
model) and callers must say so.
"""

from __future__ import annotations

import torch
from torch import nn


def merge_moefied_bert(model: nn.Module) -> nn.Module:
    """Replace every :class:`~hfedmoe.moe.minilm.MoEFeedForward` of ``model`` (in place) by dense
    ``BertIntermediate.dense`` / ``BertOutput.dense`` linears holding the stacked experts; the
    config loses its ``moe_*`` fields. Returns ``model`` (a plain transformers BERT)."""
    from transformers.models.bert.modeling_bert import BertIntermediate, BertLayer

    from hfedmoe.moe.minilm import MoEFeedForward

    config = model.config
    for layer in (m for m in model.modules() if isinstance(m, BertLayer)):
        ffn = layer.intermediate
        if not isinstance(ffn, MoEFeedForward):
            continue
        ex = ffn.experts
        w1 = ex.up_proj.detach().reshape(-1, ex.hidden_dim)  # (E * I/E, H) = (I, H)
        b1 = ex.up_proj_bias.detach().reshape(-1)  # (I,)
        w2 = ex.down_proj.detach().permute(1, 0, 2).reshape(ex.hidden_dim, -1)  # (H, E, I/E) -> (H, I)
        dense_in = BertIntermediate(config).to(device=w1.device, dtype=w1.dtype)
        dense_out = nn.Linear(w2.shape[1], ex.hidden_dim).to(device=w1.device, dtype=w1.dtype)
        with torch.no_grad():
            dense_in.dense.weight.copy_(w1)
            dense_in.dense.bias.copy_(b1)
            dense_out.weight.copy_(w2)
            dense_out.bias.copy_(ffn.output_bias.detach())
        layer.intermediate = dense_in
        layer.output.dense = dense_out
    for key in ("moe_num_experts", "moe_top_k", "moe_scheme"):
        if hasattr(config, key):
            delattr(config, key)
    return model
