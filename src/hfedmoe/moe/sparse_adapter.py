"""Sparse MoE adapters on a frozen dense model (FFT-MoE, Hu et al., arXiv 2508.18663).

Every feed-forward network (FFN) of a dense model gets a parallel, trainable MoE adapter::

    y = FFN(x) + sum_{e in topk(x)} g_e(x) * E_e(x),    E_e(x) = down_e(act(up_e x))

with ``M`` experts ``E_e: d -> r -> d`` (no biases), a linear router ``W_R (M, d)``, softmax,
top-k and renormalised top-k weights ``g`` (:func:`hfedmoe.moe.layouts.route_adapter`). The
output projections ``down_e`` start at zero, so at initialisation the adapted model computes
exactly what the dense model computes (adding a zero tensor is exact in floating point).

The adapter block is "just another expert layout": :class:`MoEAdapterBlock` is the family
``moe_adapter`` of :mod:`hfedmoe.moe.layouts` (fused experts ``up_proj (M, r, d)``,
``down_proj (M, d, r)`` and a router ``gate.weight (M, d)``), so :func:`hfedmoe.moe.wrap` addresses
adapter experts like any MoE model's experts (capture, restrict, train_only, read/write per
expert) and every method runs on them unchanged.

The dense FFN sits inside the block as ``frozen_ffn`` (also in layers without an adapter, wrapped
by :class:`FrozenFFN`): :func:`hfedmoe.client.parts.part_of` puts every parameter under a
``frozen_ffn`` module into the part ``"frozen"``, which no ``train.trainable`` list can name, so
the base FFN is never trained, uploaded or aggregated.

Where the FFN is found
----------------------
* BERT-style encoder layers (``layer.intermediate`` + ``layer.output.dense``): the FFN is
  ``output.dense(intermediate(x))``; the block replaces ``intermediate`` and ``output.dense``
  becomes ``Identity`` (``BertOutput`` keeps dropout and ``LayerNorm(. + residual)``).
* Decoder layers with an ``mlp`` module (Llama, Qwen2, Mistral, SmolLM2, GPT-2, ...): the block
  replaces ``mlp``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers.activations import ACT2FN

from hfedmoe.errors import UnsupportedModelError
from hfedmoe.moe import layouts
from hfedmoe.moe.minilm import MoEFiedExperts, TopKRouter

ROUTER_INIT_STD = 0.02  # router weights ~ N(0, 0.02^2): near-uniform probabilities at init


class AdapterRouter(TopKRouter):
    """Linear router ``d -> M`` (no bias), softmax, top-k, renormalised top-k weights
    (:func:`hfedmoe.moe.layouts.route_adapter`).

    ``forward(hidden_states (..., d)) -> (router_logits (T, M), top_k_weights (T, k), top_k_index (T, k))``
    """

    def forward(self, hidden_states: torch.Tensor):
        return layouts.route_adapter(self, hidden_states, None).router_output


class AdapterExperts(MoEFiedExperts):
    """Fused non-gated experts without biases: ``down_e(act(up_e x))``, ``up_proj (M, r, d)``,
    ``down_proj (M, d, r)``."""

    def __init__(self, num_experts: int, hidden_size: int, rank: int, hidden_act: str):
        super().__init__(num_experts, hidden_size, rank, hidden_act, bias=False)


class BertFFN(nn.Module):
    """A BERT layer's FFN without its residual LayerNorm: ``dense_out(intermediate(x))`` ``(.., d)``."""

    def __init__(self, intermediate: nn.Module, dense_out: nn.Module):
        super().__init__()
        self.intermediate = intermediate
        self.dense_out = dense_out

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_out(self.intermediate(hidden_states))


class FrozenFFN(nn.Module):
    """A layer's FFN left without adapter (``model.adapter_layers``): frozen like the others."""

    def __init__(self, ffn: nn.Module):
        super().__init__()
        self.frozen_ffn = ffn

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.frozen_ffn(hidden_states, *args, **kwargs)


class MoEAdapterBlock(nn.Module):
    """``frozen_ffn(x) + adapter(x)``: ``(B, S, d) -> (B, S, d)``."""

    def __init__(self, ffn: nn.Module, hidden_size: int, num_experts: int, top_k: int, rank: int,
                 hidden_act: str):
        super().__init__()
        self.frozen_ffn = ffn
        self.gate = AdapterRouter(hidden_size, num_experts, top_k)
        self.experts = AdapterExperts(num_experts, hidden_size, rank, hidden_act)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = self.frozen_ffn(hidden_states, *args, **kwargs)  # (B, S, d)
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])  # (T, d)
        _, top_k_weights, top_k_index = self.gate(flat)
        delta = self.experts(flat, top_k_index, top_k_weights)  # (T, d)
        return base + delta.reshape(shape).to(base.dtype)


# --------------------------------------------------------------------------------------------
# insertion
# --------------------------------------------------------------------------------------------
def _ffn_sites(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(parent, kind)`` of every FFN in forward order; kind ``"bert"`` or ``"mlp"``."""
    sites: list[tuple[nn.Module, str]] = []
    for _, module in model.named_modules():
        out = getattr(module, "output", None)
        if (isinstance(getattr(module, "intermediate", None), nn.Module) and isinstance(out, nn.Module)
                and isinstance(getattr(out, "dense", None), nn.Linear) and hasattr(out, "LayerNorm")):
            sites.append((module, "bert"))
        elif isinstance(getattr(module, "mlp", None), nn.Module) and not isinstance(module.mlp, (MoEAdapterBlock,
                                                                                                  FrozenFFN)):
            sites.append((module, "mlp"))
    return sites


def _hidden_act(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    act = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None) or "gelu"
    if not isinstance(act, str) or act not in ACT2FN:
        return "gelu"
    return act


def add_moe_adapters(
    model: nn.Module,
    num_experts: int,
    top_k: int,
    rank: int,
    *,
    layers: Sequence[int] = (),
    seed: int = 0,
) -> int:
    """Insert a :class:`MoEAdapterBlock` around the FFN of every layer of ``model`` (of the
    layers in ``layers`` when given; the other FFNs are wrapped as :class:`FrozenFFN`), in place.

    Initialisation (seeded by ``seed``): ``up_proj ~ U(-1/sqrt(d), 1/sqrt(d))`` (``nn.Linear``'s
    default scale), ``down_proj = 0``, router ``~ N(0, 0.02^2)``. Returns the number of adapters.

    Raises
    ------
    UnsupportedModelError
        If the model already has MoE layers, or no FFN this function knows (BERT-style
        ``intermediate``/``output.dense`` or a decoder layer's ``mlp``).
    ValueError
        Bad sizes (``rank < 1``, ``top_k`` outside ``[1, num_experts]``, a layer index out of range).
    """
    classes = layouts.block_classes()
    moe = sorted({spec.name for m in model.modules() if (spec := layouts.family_of_block(m, classes))})
    if moe:
        raise UnsupportedModelError(
            f"model.adapter: 'moe' needs a dense model; {type(model).__name__} already has MoE layers ({', '.join(moe)})"
        )
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
    sites = _ffn_sites(model)
    if not sites:
        raise UnsupportedModelError(
            f"model.adapter: no FFN found in {type(model).__name__} (expected BERT-style intermediate/output.dense "
            "or decoder layers with an 'mlp' module)"
        )
    chosen = set(range(len(sites))) if not layers else {int(i) for i in layers}
    bad = sorted(i for i in chosen if not 0 <= i < len(sites))
    if bad:
        raise ValueError(f"adapter layers {bad} out of range: the model has {len(sites)} FFN layers")
    hidden_act = _hidden_act(model)
    gen = torch.Generator().manual_seed(int(seed))
    count = 0
    for idx, (parent, kind) in enumerate(sites):
        if kind == "bert":
            ffn = BertFFN(parent.intermediate, parent.output.dense)
        else:
            ffn = parent.mlp
        ref = next(p for p in ffn.parameters() if p.is_floating_point())
        hidden = ffn.dense_out.out_features if kind == "bert" else int(model.config.hidden_size)
        if idx in chosen:
            block = MoEAdapterBlock(ffn, hidden, num_experts, top_k, rank, hidden_act)
            with torch.no_grad():
                bound = 1.0 / hidden**0.5
                block.experts.up_proj.copy_(torch.rand(block.experts.up_proj.shape, generator=gen) * 2 * bound - bound)
                block.gate.weight.copy_(torch.randn(block.gate.weight.shape, generator=gen) * ROUTER_INIT_STD)
            block.gate.to(device=ref.device, dtype=ref.dtype)
            block.experts.to(device=ref.device, dtype=ref.dtype)
            count += 1
        else:
            block = FrozenFFN(ffn)
        if kind == "bert":
            parent.intermediate = block
            parent.output.dense = nn.Identity()
        else:
            parent.mlp = block
    for module in model.modules():
        if isinstance(module, (MoEAdapterBlock, FrozenFFN)):
            for p in module.frozen_ffn.parameters():
                p.requires_grad_(False)
    object.__setattr__(model, "_hfedmoe_moe_adapters", {
        "num_experts": num_experts, "top_k": top_k, "rank": rank, "layers": sorted(chosen),
        "num_ffn_layers": len(sites), "hidden_act": hidden_act, "seed": int(seed)})
    return count


def adapter_settings(model: nn.Module) -> dict | None:
    """What :func:`add_moe_adapters` inserted into ``model`` (None: no adapters)."""
    return getattr(model, "_hfedmoe_moe_adapters", None)


def has_moe_adapters(model: nn.Module) -> bool:
    return adapter_settings(model) is not None


__all__ = ["AdapterExperts", "AdapterRouter", "FrozenFFN", "MoEAdapterBlock", "add_moe_adapters",
           "adapter_settings", "has_moe_adapters"]
